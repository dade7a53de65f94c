"""Action-unit error (AUE) between two videos, upstream's ``auerror.py`` definition.

AUE = Σ over the AU intensity columns of the mean over frames of (AU_pred − AU_gt)², with the
lower-face (AU10, 12, 14, 15, 17, 20, 23, 25, 26) and upper-face (AU01, 02, 04, 05, 06, 07, 09,
45) parts reported too. Intensities come from OpenFace FeatureExtraction csvs when given, else
from our landmark AU estimator (:func:`instag.preprocess.au.estimate`), which measures each AU
against the clip's own neutral (median) face: comparable between our runs, not with OpenFace's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

AU_COLUMNS = ("AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14", "AU15", "AU17",
              "AU20", "AU23", "AU25", "AU26", "AU45")
LOWER = ("AU10", "AU12", "AU14", "AU15", "AU17", "AU20", "AU23", "AU25", "AU26")
UPPER = ("AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU45")


def au_error(pred: dict[str, np.ndarray], gt: dict[str, np.ndarray]) -> dict:
    """AUE over the columns both tables hold (``"AU01_r"`` or ``"AU01"`` keys, [T] each), over the
    common length; ``{"aue", "aue_lower", "aue_upper", "au_columns"}``."""
    def norm(table: dict) -> dict[str, np.ndarray]:
        return {k.strip().removesuffix("_r"): np.asarray(v, np.float64) for k, v in table.items()
                if k.strip().removesuffix("_r") in AU_COLUMNS and not k.strip().endswith("_c")}

    a, b = norm(pred), norm(gt)
    cols = [c for c in AU_COLUMNS if c in a and c in b]
    if not cols:
        return {"aue": None, "aue_lower": None, "aue_upper": None, "au_columns": []}
    n = min(min(len(a[c]) for c in cols), min(len(b[c]) for c in cols))
    per = {c: float(np.mean((a[c][:n] - b[c][:n]) ** 2)) if n else 0.0 for c in cols}
    return {
        "aue": sum(per.values()),
        "aue_lower": sum(v for c, v in per.items() if c in LOWER),
        "aue_upper": sum(v for c, v in per.items() if c in UPPER),
        "au_columns": cols,
    }


def au_from_landmarks(landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """AU intensities from landmarks [T,478,3] (frames without a face, NaN, are filled from the nearest)."""
    from instag.preprocess.au import estimate

    lm = np.asarray(landmarks, np.float64)
    ok = np.isfinite(lm).all(axis=(1, 2))
    if not ok.any():
        return {}
    idx = np.arange(len(lm))
    nearest = np.searchsorted(idx[ok], idx).clip(0, ok.sum() - 1)
    filled = np.where(ok[:, None, None], lm, lm[ok][nearest])
    return estimate(filled.astype(np.float32))


def au_error_from_csvs(pred_csv: str | Path, gt_csv: str | Path) -> dict:
    from instag.preprocess.au import read_au_csv

    return au_error(read_au_csv(pred_csv), read_au_csv(gt_csv))
