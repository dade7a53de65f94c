"""Metrics of rendered talking heads (DESIGN §4), in one place.

- :mod:`instag.metrics.image`: PSNR (RGB, 0..255) and grayscale SSIM (11×11 Gaussian, σ 1.5);
- :mod:`instag.metrics.lips`: LMD on the 40 MediaPipe lip landmarks, mouth opening, its Pearson
  correlation, mouth_amp and closed_in_silence;
- :mod:`instag.metrics.lpips`, :mod:`instag.metrics.syncnet`: LPIPS and Sync-C/Sync-E, only when
  their weights exist locally;
- :mod:`instag.metrics.au`: AU error (AUE) from OpenFace csvs or our landmark AU estimator;
- :mod:`instag.metrics.evaluate`: ``instag evaluate`` (a trained model's validation split, or two videos);
- :mod:`instag.metrics.report`: side-by-side video, mouth-opening plot, metrics JSON.

:class:`SequenceMetrics` accumulates per-frame values so a whole clip never sits in memory.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from instag.metrics.lips import lmd, mouth_amp, mouth_opening, mouth_opening_correlation, pearson

__all__ = [
    "SequenceMetrics",
    "face_box",
    "lmd",
    "mouth_amp",
    "mouth_opening",
    "mouth_opening_correlation",
    "pearson",
    "psnr",
    "ssim",
]


def __getattr__(name: str) -> Any:
    """The image metrics load torch: imported on first use, so that `instag evaluate --help` answers at once."""
    if name in ("face_box", "psnr", "ssim"):
        from instag.metrics import image

        return getattr(image, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


class SequenceMetrics:
    """Per-frame accumulation of PSNR, SSIM, face-region PSNR/SSIM, LMD inputs, mouth opening and
    (optionally) LPIPS for one predicted sequence against its ground truth.

    ``add(pred, gt, pred_landmarks, gt_landmarks)``: frames as uint8 [H,W,3] RGB or float [3,H,W]
    in [0,1]; landmarks [478,≥2] in pixels, or None where no face was found.
    """

    def __init__(self, lpips_model: Any = None, device: str = "cpu"):
        self.lpips_model = lpips_model
        self.device = device
        self.psnr: list[float] = []
        self.ssim: list[float] = []
        self.face_psnr: list[float] = []
        self.face_ssim: list[float] = []
        self.lpips: list[float] = []
        self.pred_landmarks: list[np.ndarray] = []
        self.gt_landmarks: list[np.ndarray] = []
        self.width: int | None = None
        self.height: int | None = None

    @staticmethod
    def _nan_landmarks() -> np.ndarray:
        return np.full((478, 2), np.nan)

    def add(self, pred: Any, gt: Any, pred_landmarks: np.ndarray | None, gt_landmarks: np.ndarray | None) -> dict:
        """Add one frame; returns its per-frame values."""
        from instag.metrics.image import face_box, psnr, ssim, to_rgb255

        a, b = to_rgb255(pred), to_rgb255(gt)
        if a.shape != b.shape:
            raise ValueError(f"frame sizes differ: {a.shape} vs {b.shape}")
        self.height, self.width = b.shape[:2]
        row = {"psnr": psnr(a / 255.0, b / 255.0), "ssim": ssim(a / 255.0, b / 255.0)}
        self.psnr.append(row["psnr"])
        self.ssim.append(row["ssim"])
        box_src = gt_landmarks if gt_landmarks is not None else pred_landmarks
        if box_src is not None:
            x0, y0, x1, y1 = face_box(box_src, self.width, self.height)
            fa, fb = a[y0:y1, x0:x1] / 255.0, b[y0:y1, x0:x1] / 255.0
            row["face_psnr"], row["face_ssim"] = psnr(fa, fb), ssim(fa, fb)
            self.face_psnr.append(row["face_psnr"])
            self.face_ssim.append(row["face_ssim"])
        if self.lpips_model is not None:
            import torch

            with torch.no_grad():
                ta = torch.from_numpy(a / 255.0).permute(2, 0, 1)[None].float().to(self.device)
                tb = torch.from_numpy(b / 255.0).permute(2, 0, 1)[None].float().to(self.device)
                row["lpips"] = float(self.lpips_model(ta, tb)[0])
            self.lpips.append(row["lpips"])
        pl = self._nan_landmarks() if pred_landmarks is None else np.asarray(pred_landmarks, np.float64)[:, :2]
        gl = self._nan_landmarks() if gt_landmarks is None else np.asarray(gt_landmarks, np.float64)[:, :2]
        self.pred_landmarks.append(pl)
        self.gt_landmarks.append(gl)
        row["mouth_opening"] = mouth_opening(pl)
        row["gt_mouth_opening"] = mouth_opening(gl)
        return row

    @property
    def num_frames(self) -> int:
        return len(self.psnr)

    def mouth_openings(self) -> tuple[np.ndarray, np.ndarray]:
        """(predicted, ground-truth) mouth-opening series [T] (NaN where no face was found)."""
        if not self.pred_landmarks:
            return np.zeros(0), np.zeros(0)
        return mouth_opening(np.stack(self.pred_landmarks)), mouth_opening(np.stack(self.gt_landmarks))

    def result(self) -> dict:
        """Means over frames; ``None`` for a metric with no valid frame."""
        out: dict[str, Any] = {"frames": self.num_frames}
        # mean of per-frame PSNR (upstream's metrics.py); one identical frame makes it inf
        out["psnr"] = _mean(self.psnr)
        out["ssim"] = _mean(self.ssim)
        out["face_psnr"] = _mean(self.face_psnr)
        out["face_ssim"] = _mean(self.face_ssim)
        if self.lpips_model is not None:
            out["lpips"] = _mean(self.lpips)
        if self.pred_landmarks:
            pred, gt = np.stack(self.pred_landmarks), np.stack(self.gt_landmarks)
            both = np.isfinite(pred).all(axis=(1, 2)) & np.isfinite(gt).all(axis=(1, 2))
            value = lmd(pred, gt, self.width)
            out["lmd"] = None if math.isnan(value) else value
            # no landmarks at all (no detector, no face) is no measurement, not a correlation of 0
            out["mouth_corr"] = mouth_opening_correlation(pred, gt) if both.sum() >= 2 else None
            out["mouth_amp"] = mouth_amp(mouth_opening(pred), mouth_opening(gt)) if both.sum() >= 2 else None
            out["frames_without_face"] = int((~both).sum())
        return out
