"""Teeth masks ``teeth_mask/<i>.png`` (bool [H,W], see :mod:`instag.data.maps`): light, near-neutral pixels
inside the inner lips that are not lip-coloured.

Lightness and redness are judged against the frame's own cheek skin and lips, so that dim or bright footage and
pale or dark lips work alike; lips (red) and the mouth cavity (dark) fall out.
"""

from __future__ import annotations

import cv2
import numpy as np

from instag.data.format import DatasetLayout
from instag.data.maps import write_mask
from instag.errors import InstagError
from instag.preprocess.mesh import INNER_LIPS, OUTER_LIPS
from instag.preprocess.workers import for_each_frame

# Teeth in CIE Lab (OpenCV's 8-bit scaling), against the frame's own cheek skin and lips:
MIN_LIGHTNESS_OF_SKIN = 0.6  # lighter than this fraction of the skin (the mouth cavity is darker)
REDNESS_PER_LIGHTNESS = 0.25  # a* above the skin's allowed per unit of lightness above that floor (lit teeth look warm)
REDNESS_MARGIN = 4.0
LIP_SEPARATION = 0.5  # and either less red than halfway from the lips' a* to the skin's, or lighter than halfway to the skin


CHEEKS = np.array([205, 425, 4])  # mid-cheeks and the nose tip: the frame's own skin


def _median_lab(lab: np.ndarray, points: np.ndarray, radius: int = 4) -> np.ndarray:
    """Median Lab of the patches around ``points`` [K,2] (x, y)."""
    h, w = lab.shape[:2]
    patches = []
    for cx, cy in np.round(points).astype(int):
        patch = lab[max(cy - radius, 0) : min(cy + radius + 1, h), max(cx - radius, 0) : min(cx + radius + 1, w)]
        if patch.size:
            patches.append(patch.reshape(-1, 3))
    return np.median(np.concatenate(patches), axis=0) if patches else np.array([180.0, 140.0, 150.0])


def teeth_mask(bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """bool [H,W] teeth mask for one frame from BGR uint8 [H,W,3] and landmarks [478,3].

    Inside the inner-lip polygon, teeth are the pixels that are light (against the cheek skin) and about as
    neutral as the skin, allowing lit teeth a little warmth, and that differ from the person's lips (sampled on
    the lip ring between the outer and inner lip lines) by being less red or clearly lighter. The earlier rule,
    saturation against the skin in HSV, missed most of warm-lit teeth (it marked a quarter of May's).
    """
    h, w = bgr.shape[:2]
    inner = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(inner, [np.round(landmarks[INNER_LIPS, :2]).astype(np.int32)], 1)
    if inner.sum() < 4:
        return np.zeros((h, w), dtype=bool)
    lips = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(lips, [np.round(landmarks[OUTER_LIPS, :2]).astype(np.int32)], 1)
    kernel = np.ones((3, 3), np.uint8)
    ring = cv2.erode(lips, kernel).astype(bool) & ~cv2.dilate(inner, kernel).astype(bool)
    box = np.concatenate([landmarks[OUTER_LIPS, :2], landmarks[CHEEKS, :2]])
    x0, y0 = np.maximum(np.floor(box.min(0)).astype(int) - 6, 0)
    x1, y1 = np.ceil(box.max(0)).astype(int) + 7
    lab = cv2.cvtColor(bgr[y0:y1, x0:x1], cv2.COLOR_BGR2LAB).astype(np.float32)
    skin_l, skin_a, _ = _median_lab(lab, landmarks[CHEEKS, :2] - [x0, y0])
    light, red = lab[..., 0], lab[..., 1]
    ring_local = ring[y0:y1, x0:x1]
    if ring_local.any():
        lip_l, lip_a = float(np.median(light[ring_local])), float(np.median(red[ring_local]))
    else:
        lip_l, lip_a = 0.8 * skin_l, skin_a + 12.0
    floor = MIN_LIGHTNESS_OF_SKIN * skin_l
    pale = (light > floor) & (red - skin_a < REDNESS_PER_LIGHTNESS * (light - floor) + REDNESS_MARGIN)
    not_lip = (red < lip_a - LIP_SEPARATION * (lip_a - skin_a)) | (light > lip_l + LIP_SEPARATION * (skin_l - lip_l) + 8.0)
    local = pale & not_lip & inner[y0:y1, x0:x1].astype(bool)
    local = cv2.morphologyEx(local.astype(np.uint8), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8)).astype(bool)
    mask = np.zeros((h, w), dtype=bool)
    mask[y0 : y0 + local.shape[0], x0 : x0 + local.shape[1]] = local
    return mask


def run(layout: DatasetLayout, landmarks: np.ndarray) -> None:
    layout.teeth_dir.mkdir(parents=True, exist_ok=True)

    def work(i: int, _state) -> None:
        img = cv2.imread(str(layout.ori_image(i)))
        if img is None:
            raise InstagError(f"{layout.ori_image(i)}: missing or unreadable; rerun with --task 3 --force")
        write_mask(layout.teeth_mask(i), teeth_mask(img, landmarks[i]))

    for_each_frame(len(landmarks), work, "teeth")
