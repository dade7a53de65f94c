"""Teeth masks ``teeth_mask/<i>.png`` (bool [H,W], see :mod:`instag.data.maps`): bright, low-saturation pixels inside the inner lips.

Brightness is judged against the frame's own face skin so that dim or bright footage works
alike; lips (saturated) and the mouth cavity (dark) fall out.
"""

from __future__ import annotations

import cv2
import numpy as np

from instag.data.format import DatasetLayout
from instag.data.maps import write_mask
from instag.errors import InstagError
from instag.preprocess.mesh import INNER_LIPS
from instag.preprocess.workers import for_each_frame

MAX_SATURATION = 0.42  # absolute cap on HSV saturation, as a fraction of 255
MIN_BRIGHTNESS_OF_SKIN = 0.72  # teeth are at least this bright relative to the cheek median


def teeth_mask(bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """bool [H,W] teeth mask for one frame from BGR uint8 [H,W,3] and landmarks [478,3]."""
    h, w = bgr.shape[:2]
    inner = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(inner, [np.round(landmarks[INNER_LIPS, :2]).astype(np.int32)], 1)
    if inner.sum() < 4:
        return np.zeros((h, w), dtype=bool)
    x0, y0 = np.floor(landmarks[INNER_LIPS, :2].min(0)).astype(int) - 2
    x1, y1 = np.ceil(landmarks[INNER_LIPS, :2].max(0)).astype(int) + 3
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    hsv = cv2.cvtColor(bgr[y0:y1, x0:x1], cv2.COLOR_BGR2HSV).astype(np.float32)
    sat, val = hsv[..., 1], hsv[..., 2]
    # cheek skin reference: around landmarks 205 / 425 (mid-cheeks)
    ref_vals = []
    for idx in (205, 425, 4):
        cx, cy = np.round(landmarks[idx, :2]).astype(int)
        patch = bgr[max(cy - 4, 0):cy + 5, max(cx - 4, 0):cx + 5]
        if patch.size:
            ref_vals.append(cv2.cvtColor(patch, cv2.COLOR_BGR2HSV)[..., 1:].reshape(-1, 2))
    ref = np.concatenate(ref_vals).astype(np.float32) if ref_vals else np.array([[80.0, 160.0]])
    skin_sat, skin_val = np.median(ref[:, 0]), np.median(ref[:, 1])
    bright = val >= MIN_BRIGHTNESS_OF_SKIN * skin_val
    pale = sat <= min(0.8 * skin_sat + 10, 255 * MAX_SATURATION)
    local = bright & pale & inner[y0:y1, x0:x1].astype(bool)
    local = cv2.morphologyEx(local.astype(np.uint8), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8)).astype(bool)
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = local
    return mask


def run(layout: DatasetLayout, landmarks: np.ndarray) -> None:
    layout.teeth_dir.mkdir(parents=True, exist_ok=True)

    def work(i: int, _state) -> None:
        img = cv2.imread(str(layout.ori_image(i)))
        if img is None:
            raise InstagError(f"{layout.ori_image(i)}: missing or unreadable; rerun with --task 3 --force")
        write_mask(layout.teeth_mask(i), teeth_mask(img, landmarks[i]))

    for_each_frame(len(landmarks), work, "teeth")
