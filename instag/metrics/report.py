"""Evaluation report: side-by-side video (ground truth | ours | static), a mouth-opening plot
over time (drawn with OpenCV), and the metrics JSON."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from instag.io.atomic import atomic_path, write_json

# BGR colours of the plotted series, in order
SERIES_COLOURS = ((40, 40, 40), (30, 90, 230), (200, 140, 40), (60, 170, 60))


def label(frame_rgb: np.ndarray, text: str) -> np.ndarray:
    """A copy of ``frame_rgb`` with ``text`` in a dark band along its top."""
    out = frame_rgb.copy()
    h, w = out.shape[:2]
    scale = max(0.4, w / 900)
    band = int(28 * scale) + 6
    out[:band] = (out[:band].astype(np.float32) * 0.35).astype(np.uint8)
    cv2.putText(out, text, (8, band - 8), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), max(1, int(2 * scale)), cv2.LINE_AA)
    return out


def side_by_side(frames: list[np.ndarray], names: list[str]) -> np.ndarray:
    """Labelled frames [H,W,3] placed left to right (resized to the first one's height)."""
    h = frames[0].shape[0]
    tiles = []
    for f, name in zip(frames, names):
        if f.shape[0] != h:
            f = cv2.resize(f, (int(round(f.shape[1] * h / f.shape[0])), h), interpolation=cv2.INTER_AREA)
        tiles.append(label(f, name))
    return np.concatenate(tiles, axis=1)


def plot_series(path: str | Path, series: dict[str, np.ndarray], fps: float = 25.0, title: str = "mouth opening",
                y_label: str = "inner-lip gap / eye-corner distance", size: tuple[int, int] = (1200, 420)) -> Path:
    """Line plot of named series [T] over time (s) as a PNG; NaN values leave gaps."""
    width, height = size
    left, right, top, bottom = 80, 20, 40, 50
    img = np.full((height, width, 3), 255, np.uint8)
    values = np.concatenate([np.asarray(v, np.float64) for v in series.values()]) if series else np.zeros(1)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    lo = min(lo, 0.0)
    if hi - lo < 1e-9:
        hi = lo + 1.0
    n = max((len(v) for v in series.values()), default=1)
    duration = max(n - 1, 1) / fps
    pw, ph = width - left - right, height - top - bottom

    def xy(t: float, v: float) -> tuple[int, int]:
        return int(round(left + pw * t / duration)), int(round(top + ph * (1 - (v - lo) / (hi - lo))))

    font = cv2.FONT_HERSHEY_SIMPLEX
    for k in range(6):  # horizontal grid and y ticks
        v = lo + (hi - lo) * k / 5
        _, y = xy(0, v)
        cv2.line(img, (left, y), (width - right, y), (225, 225, 225), 1)
        cv2.putText(img, f"{v:.2f}", (8, y + 4), font, 0.4, (80, 80, 80), 1, cv2.LINE_AA)
    step = next((s for s in (0.5, 1, 2, 5, 10, 20, 30, 60, 120) if duration / s <= 12), 300)
    t = 0.0
    while t <= duration + 1e-9:  # vertical grid and time ticks
        x, _ = xy(t, lo)
        cv2.line(img, (x, top), (x, height - bottom), (235, 235, 235), 1)
        cv2.putText(img, f"{t:g}", (x - 8, height - bottom + 18), font, 0.4, (80, 80, 80), 1, cv2.LINE_AA)
        t += step
    cv2.rectangle(img, (left, top), (width - right, height - bottom), (120, 120, 120), 1)
    cv2.putText(img, "time (s)", (left + pw // 2 - 30, height - 10), font, 0.45, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.putText(img, f"{title}: {y_label}", (left, 24), font, 0.5, (30, 30, 30), 1, cv2.LINE_AA)
    for k, (name, v) in enumerate(series.items()):
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        v = np.asarray(v, np.float64)
        pts = [xy(i / fps, float(val)) if np.isfinite(val) else None for i, val in enumerate(v)]
        for a, b in zip(pts[:-1], pts[1:]):
            if a is not None and b is not None:
                cv2.line(img, a, b, colour, 2 if k == 0 else 1, cv2.LINE_AA)
        lx = width - right - 200
        ly = top + 18 + 18 * k
        cv2.line(img, (lx, ly - 4), (lx + 24, ly - 4), colour, 2, cv2.LINE_AA)
        cv2.putText(img, name, (lx + 30, ly), font, 0.45, (30, 30, 30), 1, cv2.LINE_AA)
    path = Path(path)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), img):
            raise OSError(f"cannot encode {path}")
    return path


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else None)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_metrics(path: str | Path, metrics: dict) -> Path:
    """Metrics as strict JSON (infinite PSNR written as the string ``"inf"``)."""
    write_json(path, _jsonable(metrics))
    return Path(path)


def format_table(rows: dict[str, dict], keys: tuple[str, ...] = ("psnr", "ssim", "face_psnr", "face_ssim", "lmd",
                                                                 "mouth_corr", "mouth_amp", "closed_in_silence", "lpips", "sync_c", "sync_e",
                                                                 "aue", "aue_lower", "aue_upper")) -> str:
    """A plain-text table: one row per run (``ours``, ``static``), one column per metric present; each column at
    least two characters wider than its name, so that neighbouring names never run together."""
    cols = [k for k in keys if any(r.get(k) is not None for r in rows.values())]
    widths = [max(11, len(k) + 2) for k in cols]
    name_width = max([8, *(len(n) + 1 for n in rows)])
    lines = [f"{'':<{name_width}}" + "".join(f"{k:>{w}}" for k, w in zip(cols, widths))]
    for name, r in rows.items():
        cells = []
        for k, w in zip(cols, widths):
            v = r.get(k)
            cells.append(f"{'-':>{w}}" if v is None else f"{v:>{w}.4f}" if isinstance(v, float) and math.isfinite(v)
                         else f"{str(v):>{w}}")
        lines.append(f"{name:<{name_width}}" + "".join(cells))
    return "\n".join(lines)
