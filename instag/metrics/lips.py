"""Lip metrics on MediaPipe face-mesh landmarks, exactly as DESIGN §4 defines them.

- **LMD**: the 40 lip landmarks (the points of MediaPipe's ``FACEMESH_LIPS`` connections), each
  frame's set mean-centred, mean L2 distance between predicted and ground-truth points in pixels,
  scaled to a 512-pixel frame width; averaged over points and frames.
- **Mouth opening**: ``|p13 - p14| / |p33 - p263|`` (inner-lip gap over the outer-eye-corner distance).
- **Mouth-opening correlation**: Pearson correlation of two opening series; 0 when either has no
  variance.
- **mouth_amp**: standard deviation of the predicted opening over that of the ground truth on the same
  frames (a muted mouth scores low even when its timing is right).
- **opening–loudness correlation**: :func:`lagged_correlation` of an opening series with
  :func:`speech_energy`, the best lag within ±5 frames (for speech with no ground truth; information only).
- **closed_in_silence**: the share of the driving audio's silent frames (:mod:`instag.audio.activity`:
  200 ms all 30 dB below the clip's loud speech) whose opening is below the clip's closed-mouth level;
  that level is :func:`closed_level` of the person's own (ground-truth) openings: a quarter of the way
  from their 5th to their 95th percentile.

Landmarks are arrays [478, ≥2] (x = column, y = row, pixels) per frame, or [T, 478, ≥2].
"""

from __future__ import annotations

import math

import numpy as np

# The 40 distinct points of mediapipe.python.solutions.face_mesh_connections.FACEMESH_LIPS
# (checked against mediapipe 0.10.21 in tests/test_metrics.py).
LIP_INDICES = (
    0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181,
    185, 191, 267, 269, 270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409, 415,
)
UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14
EYE_OUTER_RIGHT, EYE_OUTER_LEFT = 33, 263
LMD_REFERENCE_WIDTH = 512


def lip_points(landmarks: np.ndarray) -> np.ndarray:
    """The 40 lip landmarks, x and y only: [..., 40, 2]."""
    return np.asarray(landmarks, dtype=np.float64)[..., LIP_INDICES, :2]


def lmd(pred_landmarks: np.ndarray, gt_landmarks: np.ndarray, width: int) -> float:
    """Lip landmark distance in px at a 512-px frame width.

    ``pred_landmarks``, ``gt_landmarks``: [T,478,≥2] (or [478,≥2]) in pixels of frames ``width`` wide.
    Frames where either set holds NaN (no face found) are skipped; NaN when none is left.
    """
    a, b = lip_points(pred_landmarks), lip_points(gt_landmarks)
    if a.ndim == 2:
        a, b = a[None], b[None]
    ok = np.isfinite(a).all(axis=(1, 2)) & np.isfinite(b).all(axis=(1, 2))
    if not ok.any():
        return math.nan
    a, b = a[ok], b[ok]
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    dist = np.linalg.norm(a - b, axis=-1)  # [T,40]
    return float(dist.mean() * LMD_REFERENCE_WIDTH / float(width))


def mouth_opening(landmarks: np.ndarray) -> np.ndarray | float:
    """Inner-lip gap (13–14) over the outer-eye-corner distance (33–263); per frame for [T,478,≥2]."""
    lm = np.asarray(landmarks, dtype=np.float64)[..., :2]
    gap = np.linalg.norm(lm[..., UPPER_INNER_LIP, :] - lm[..., LOWER_INNER_LIP, :], axis=-1)
    eyes = np.linalg.norm(lm[..., EYE_OUTER_RIGHT, :] - lm[..., EYE_OUTER_LEFT, :], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(eyes > 0, gap / np.where(eyes > 0, eyes, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation over the positions where both series are finite; 0 when either series
    (there) has no variance or fewer than 2 values remain."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"series lengths differ: {x.shape[0]} vs {y.shape[0]}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 2:
        return 0.0
    dx, dy = x - x.mean(), y - y.mean()
    sx, sy = math.sqrt(float(dx @ dx)), math.sqrt(float(dy @ dy))
    # relative tolerance: a constant series can leave rounding noise after mean subtraction
    if sx <= 1e-12 * max(1.0, float(np.abs(x).max())) * math.sqrt(x.size) or sy <= 1e-12 * max(
        1.0, float(np.abs(y).max())
    ) * math.sqrt(y.size):
        return 0.0
    return float(np.clip((dx @ dy) / (sx * sy), -1.0, 1.0))


def mouth_opening_correlation(pred_landmarks: np.ndarray, gt_landmarks: np.ndarray) -> float:
    """Pearson correlation of the mouth-opening series of two landmark sequences [T,478,≥2]."""
    return pearson(mouth_opening(pred_landmarks), mouth_opening(gt_landmarks))


def mouth_amp(pred_opening: np.ndarray, gt_opening: np.ndarray) -> float:
    """Std of the predicted opening over std of the ground truth, on the frames where both are finite (0 when
    the ground truth does not move)."""
    a, b = np.asarray(pred_opening, np.float64).ravel(), np.asarray(gt_opening, np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2:
        return 0.0
    sd = float(np.std(b[ok]))
    return float(np.std(a[ok])) / sd if sd > 0 else 0.0


def closed_level(openings: np.ndarray) -> float:
    """The person's closed-mouth level from their own openings: 5th percentile + (95th - 5th) / 4; NaN if none."""
    v = np.asarray(openings, np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan
    lo, hi = np.percentile(v, [5, 95])
    return float(lo + 0.25 * (hi - lo))


def closed_in_silence(opening: np.ndarray, silent: np.ndarray, level: float) -> float:
    """Share of the silent frames (``silent`` [T] bool) whose ``opening`` [T] is below ``level``; NaN when the audio
    has no silent frame with a face."""
    v = np.asarray(opening, np.float64).ravel()
    s = np.asarray(silent, bool).ravel()[: v.size]
    v = v[: s.size][s]
    v = v[np.isfinite(v)]
    if v.size == 0 or not math.isfinite(level):
        return math.nan
    return float((v < level).mean())


def speech_energy(samples: np.ndarray, num_frames: int) -> np.ndarray:
    """Per-frame speech loudness [T]: RMS of 16 kHz samples in a 40-ms window centred on each frame (silence past
    the end of the audio)."""
    from instag.audio.activity import centred_windows
    from instag.data.format import AUDIO_SAMPLE_RATE, FPS

    windows = centred_windows(samples, num_frames, AUDIO_SAMPLE_RATE // FPS)
    return np.sqrt((windows**2).mean(axis=1))


def lagged_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 5) -> tuple[float, int]:
    """Largest Pearson correlation of ``a[t]`` with ``b[t - lag]`` over |lag| <= max_lag, and that lag."""
    best, best_lag = -2.0, 0
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[lag:], b[: len(b) - lag]) if lag >= 0 else (a[:lag], b[-lag:])
        r = pearson(x, y) if len(x) > 2 else 0.0
        if r > best:
            best, best_lag = r, lag
    return best, best_lag
