"""Image metrics, exactly as DESIGN §4 defines them.

- **PSNR** over RGB on the [0,255] scale: ``10·log10(255² / MSE)``; identical frames give ``inf``.
- **SSIM** on grayscale (BT.601 luma of the [0,255] RGB), 11×11 Gaussian window with σ = 1.5,
  constants K1 = 0.01, K2 = 0.03, L = 255, statistics over the window positions that lie fully
  inside the image ("valid", as in Wang et al.'s reference code), averaged over the map.

Frames may be uint8 ``[H,W,3]`` RGB arrays (values 0..255) or float ``[3,H,W]`` tensors/arrays in
[0,1] (renders); both are brought to float64 [H,W,3] on the 0..255 scale.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def to_rgb255(frame: Any) -> np.ndarray:
    """float64 [H,W,3] on the 0..255 scale from uint8 [H,W,3] or float [3,H,W]/[H,W,3] in [0,1]."""
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(frame)
    if arr.ndim != 3:
        raise ValueError(f"expected an image [H,W,3] or [3,H,W], got shape {arr.shape}")
    if arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64)
    return np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0


def mse(pred: Any, gt: Any) -> float:
    """Mean squared error over all RGB values on the 0..255 scale."""
    a, b = to_rgb255(pred), to_rgb255(gt)
    if a.shape != b.shape:
        raise ValueError(f"image sizes differ: {a.shape} vs {b.shape}")
    return float(np.mean((a - b) ** 2))


def psnr_from_mse(value: float) -> float:
    return math.inf if value <= 0.0 else 10.0 * math.log10(255.0**2 / value)


def psnr(pred: Any, gt: Any) -> float:
    """PSNR in dB over RGB [0,255]; ``inf`` for identical frames."""
    return psnr_from_mse(mse(pred, gt))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian weights [size] (float64)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def to_gray255(frame: Any) -> np.ndarray:
    """float64 [H,W] luma on the 0..255 scale (BT.601 weights)."""
    rgb = to_rgb255(frame)
    return rgb @ np.asarray(LUMA_WEIGHTS, dtype=np.float64)


@functools.lru_cache(maxsize=8)
def _window(device: str, dtype: torch.dtype) -> torch.Tensor:
    return gaussian_window().to(device=device, dtype=dtype)


def ssim_images_map(a: torch.Tensor, b: torch.Tensor, data_range: float, pad: bool) -> torch.Tensor:
    """Per-channel SSIM map of ``[B,C,H,W]`` images (11×11 Gaussian window, σ 1.5, separable).

    ``pad=True`` keeps ``[H,W]`` with zero padding (the training loss); ``pad=False`` keeps only the
    window positions fully inside the image, ``[H-10,W-10]`` (the metric). The one SSIM of the project.
    """
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    g = _window(str(a.device), a.dtype)
    channels, p = a.shape[1], (SSIM_WINDOW // 2 if pad else 0)
    kx = g.view(1, 1, 1, -1).expand(channels, 1, 1, SSIM_WINDOW)
    ky = g.view(1, 1, -1, 1).expand(channels, 1, SSIM_WINDOW, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, kx, padding=(0, p), groups=channels), ky, padding=(p, 0), groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return num / den


def ssim_map(gray_a: torch.Tensor, gray_b: torch.Tensor) -> torch.Tensor:
    """SSIM map of two grayscale images [H,W] (0..255) -> [H-10, W-10] (valid window positions)."""
    a = gray_a.to(torch.float64)[None, None]
    b = gray_b.to(torch.float64)[None, None]
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {tuple(a.shape[-2:])}")
    return ssim_images_map(a, b, 255.0, pad=False)[0, 0]


def ssim(pred: Any, gt: Any) -> float:
    """Grayscale SSIM (11×11 Gaussian window, σ 1.5); 1.0 for identical frames."""
    a, b = to_gray255(pred), to_gray255(gt)
    if a.shape != b.shape:
        raise ValueError(f"image sizes differ: {a.shape} vs {b.shape}")
    return float(ssim_map(torch.from_numpy(a), torch.from_numpy(b)).mean())


def crop_box(frame: Any, box: tuple[int, int, int, int]) -> np.ndarray:
    """The region ``box`` = (x0, y0, x1, y1) (pixels, end-exclusive) of a frame, as float64 [h,w,3] 0..255."""
    rgb = to_rgb255(frame)
    x0, y0, x1, y1 = box
    return rgb[y0:y1, x0:x1] / 255.0


def face_box(landmarks: np.ndarray, width: int, height: int, margin: float = 0.1) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of face landmarks [K,≥2] (pixels), grown by ``margin`` of its size
    on every side and clipped to the frame; at least 11 px per side so SSIM is defined."""
    pts = np.asarray(landmarks, dtype=np.float64)[:, :2]
    lo, hi = pts.min(0), pts.max(0)
    pad = (hi - lo) * margin
    x0, y0 = np.floor(lo - pad).astype(int)
    x1, y1 = np.ceil(hi + pad).astype(int)
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(width, max(x1, x0 + SSIM_WINDOW)), min(height, max(y1, y0 + SSIM_WINDOW))
    x0, y0 = max(0, min(x0, x1 - SSIM_WINDOW)), max(0, min(y0, y1 - SSIM_WINDOW))
    return int(x0), int(y0), int(x1), int(y1)
