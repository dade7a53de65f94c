"""Facial Action Unit intensities in OpenFace's ``au.csv`` format, estimated from landmarks.

OpenFace writes one row per frame with columns ``frame, face_id, timestamp, confidence,
success, AU01_r, ... AU45_r, AU01_c, ...``: the names after the first carry a leading space
(``" AU45_r"``), which upstream's loader expects. We write the same format. Intensities
(``_r``, 0-5) come from pose-normalised landmark geometry: every frame's 3-D landmarks are
aligned (rotation, translation, scale) to the clip's mean shape, distances are measured in
inter-ocular units, and each AU is the change of one geometric cue from the clip's neutral
value, divided by a fixed per-AU scale. A user's own OpenFace csv is read as is.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from instag.data.format import FPS
from instag.errors import InstagError
from instag.io.atomic import write_text
from instag.io.checks import check_values
from instag.preprocess.mesh import STABLE_POINTS

AU_NAMES = ("AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14", "AU15", "AU17",
            "AU20", "AU23", "AU25", "AU26", "AU45")
AU_LIMIT = 100.0  # OpenFace intensities are 0-5: anything beyond this is a damaged file
REQUIRED = ("AU01_r", "AU04_r", "AU05_r", "AU06_r", "AU07_r", "AU25_r", "AU45_r")  # what training reads


def align_to_mean(landmarks: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Similarity-align every frame's landmarks [N,478,3] to the clip's mean shape.

    Returns float64 [N,478,3] in inter-ocular units (outer eye corners 1 apart), x right,
    y down, z away from the camera, centred on the stable points.
    """
    pts = landmarks.astype(np.float64)
    stable = STABLE_POINTS
    centred = pts - pts[:, stable].mean(1, keepdims=True)
    iod = np.linalg.norm(centred[:, 33] - centred[:, 263], axis=-1)
    centred /= np.maximum(iod, 1e-6)[:, None, None]
    ref = centred[0, stable]
    aligned = centred
    for _ in range(iterations):
        h = np.einsum("nki,kj->nij", centred[:, stable], ref)  # [N,3,3]
        u, _, vt = np.linalg.svd(h)
        d = np.sign(np.linalg.det(u @ vt))
        fix = np.tile(np.eye(3), (len(pts), 1, 1))
        fix[:, 2, 2] = d
        rot = u @ fix @ vt  # maps frame points onto ref: x @ rot
        aligned = centred @ rot
        ref = aligned[:, stable].mean(0)
    return aligned


def _dist(a: np.ndarray, i: int, j: int) -> np.ndarray:
    return np.linalg.norm(a[:, i] - a[:, j], axis=-1)


def estimate(landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """AU intensities ``{"AU01_r": float32 [N], ...}`` (0-5) from landmarks [N,478,3]."""
    a = align_to_mean(landmarks)
    y = a[..., 1]

    def up(top: int, bottom: int) -> np.ndarray:  # how far ``top`` is above ``bottom`` (y grows down)
        return y[:, bottom] - y[:, top]

    eye_open = 0.5 * (_dist(a, 159, 145) + _dist(a, 386, 374))
    cues = {
        "AU01": (0.5 * (up(107, 159) + up(336, 386)), 0.025),  # inner brow raise
        "AU02": (0.5 * (up(70, 33) + up(300, 263)), 0.025),  # outer brow raise
        "AU04": (-(0.5 * (up(107, 159) + up(336, 386)) + 0.5 * _dist(a, 107, 336)), 0.02),  # brows down and together
        "AU05": (eye_open, 0.015),  # upper lid raise
        "AU06": (-0.5 * (up(145, 205) + up(374, 425)), 0.02),  # cheeks up toward the lower lids
        "AU07": (-(eye_open + 0.5 * (up(145, 205) + up(374, 425)) * 0.3), 0.015),  # lids tightened
        "AU09": (-0.5 * (_dist(a, 98, 133) + _dist(a, 327, 362)), 0.015),  # nose wings up
        "AU10": (-_dist(a, 2, 0), 0.015),  # upper lip up toward the nose
        "AU12": (_dist(a, 61, 291) + 0.5 * (up(61, 17) + up(291, 17)), 0.04),  # corners out and up
        "AU14": (_dist(a, 61, 291), 0.05),  # corners pulled back (widening)
        "AU15": (-0.5 * (up(61, 0) + up(291, 0)), 0.02),  # corners down
        "AU17": (-_dist(a, 17, 152), 0.02),  # chin up toward the lower lip
        "AU20": (_dist(a, 61, 291) - 0.5 * (up(61, 17) + up(291, 17)), 0.05),  # lips stretched sideways
        "AU23": (-(_dist(a, 0, 13) + _dist(a, 14, 17)), 0.015),  # lips thinned
        "AU26": (_dist(a, 2, 152), 0.05),  # jaw drop
    }
    out: dict[str, np.ndarray] = {}
    for name, (value, scale) in cues.items():
        neutral = np.median(value)
        out[f"{name}_r"] = np.clip((value - neutral) / scale, 0, 5).astype(np.float32)
    gap = _dist(a, 13, 14)
    out["AU25_r"] = np.clip((gap - 0.02) / 0.06, 0, 5).astype(np.float32)  # lips part (absolute gap)
    open_ref = np.percentile(eye_open, 90)
    out["AU45_r"] = np.clip(4.0 * (1.0 - eye_open / max(open_ref, 1e-6)) - 0.4, 0, 5).astype(np.float32)  # blink
    return {f"{n}_r": out[f"{n}_r"] for n in AU_NAMES}


def write_au_csv(path: str | Path, intensities: dict[str, np.ndarray], confidence: np.ndarray | None = None,
                 fps: float = FPS) -> None:
    """Write OpenFace-style ``au.csv``; ``intensities`` maps ``"AU01_r"`` etc. to [N] arrays."""
    n = len(next(iter(intensities.values())))
    conf = np.full(n, 0.98) if confidence is None else np.asarray(confidence, dtype=np.float64)
    names = [f"{a}_r" for a in AU_NAMES if f"{a}_r" in intensities]
    header = ["frame", "face_id", "timestamp", "confidence", "success"] + names + [n_.replace("_r", "_c") for n_ in names]
    lines = [", ".join(header)]
    for i in range(n):
        values = [str(i + 1), "0", f"{i / fps:.3f}", f"{conf[i]:.2f}", "1" if conf[i] > 0.5 else "0"]
        values += [f"{float(intensities[k][i]):.2f}" for k in names]
        values += ["1" if float(intensities[k][i]) >= 1.0 else "0" for k in names]
        lines.append(", ".join(values))
    write_text(path, "\n".join(lines) + "\n")


def read_au_csv(path: str | Path, required: tuple[str, ...] = REQUIRED) -> dict[str, np.ndarray]:
    """Read an OpenFace (or our) ``au.csv``: ``{column name without the leading space: float64 [N]}``,
    refusing one that lacks a ``required`` column."""
    path = Path(path)
    if not path.exists():
        raise InstagError(f"{path} does not exist; give an OpenFace FeatureExtraction csv (or one instag process wrote)")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as err:
        raise InstagError(f"{path}: cannot read it as a csv ({err}); give OpenFace FeatureExtraction's csv") from err
    if len(rows) < 2:
        raise InstagError(f"{path}: has no data rows; give OpenFace FeatureExtraction's csv with one row per frame")
    header = [h.strip() for h in rows[0]]
    body = [r for r in rows[1:] if r]
    columns: dict[str, np.ndarray] = {}
    for k, name in enumerate(header):
        try:
            columns[name] = np.array([float(r[k]) for r in body], dtype=np.float64)
        except (ValueError, IndexError) as err:
            raise InstagError(f"{path}: column {name!r} has a malformed row ({err}); re-export the csv") from err
    missing = [c for c in required if c not in columns]
    if missing:
        raise InstagError(f"{path}: lacks the columns {', '.join(missing)}; give OpenFace's csv with AU intensities "
                          "(FeatureExtraction -aus) or delete it to estimate AUs from landmarks")
    for name in (c for c in columns if c.startswith("AU")):  # intensities 0-5, presence 0/1
        check_values(path, columns[name], f"column {name}", "fix or re-export the csv, or delete it to estimate AUs "
                     "from landmarks", limit=AU_LIMIT, where=lambda i: f"in data row {i[0] + 1}")
    return columns
