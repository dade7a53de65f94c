"""Training targets ``gt_imgs/<i>.jpg`` and torso layers ``torso_imgs/<i>.png`` (RGBA).

gt = the frame with background pixels replaced by the plate. The torso layer keeps neck and
torso; behind the jaw, each column's top neck colour is carried upward (slightly darkened
per pixel, then blurred) so that a moving head never uncovers a hole. Alpha is 255 on
neck, torso and that in-painted strip, 0 elsewhere (colour zeroed there).
"""

from __future__ import annotations

import cv2
import numpy as np

from instag.data.format import DatasetLayout
from instag.errors import InstagError
from instag.io.atomic import write_image
from instag.preprocess.parsing import BACKGROUND, HAIR, HEAD, MOUTH, NECK, TORSO, labels_from_parsing
from instag.preprocess.workers import for_each_frame

NECK_EXTENSION = 53 / 512  # fraction of the frame height the neck colour is carried up
DARKEN = 0.98


def torso_layer(gt: np.ndarray, labels: np.ndarray, plate: np.ndarray) -> np.ndarray:
    """BGRA uint8 [H,W,4] torso layer from gt BGR [H,W,3], labels [H,W] and plate [H,W,3]."""
    h, w = labels.shape
    body = (labels == NECK) | (labels == TORSO)
    head = (labels == HEAD) | (labels == MOUTH) | (labels == HAIR)
    color = gt.astype(np.float32)
    alpha = body.copy()
    neck = labels == NECK
    has_neck = neck.any(0)
    top = np.where(has_neck, neck.argmax(0), 0)
    cols = np.flatnonzero(has_neck & (top > 0))
    painted = np.zeros((h, w), dtype=bool)
    if cols.size:
        base = color[top[cols], cols]
        length = int(round(NECK_EXTENSION * h))
        open_cols = np.ones(cols.size, dtype=bool)
        for k in range(1, length + 1):
            rows = top[cols] - k
            open_cols &= rows >= 0
            rows_c = np.clip(rows, 0, h - 1)
            open_cols &= head[rows_c, cols] | painted[rows_c, cols]
            if not open_cols.any():
                break
            r, c = rows_c[open_cols], cols[open_cols]
            color[r, c] = base[open_cols] * (DARKEN ** k)
            painted[r, c] = True
        if painted.any():
            blurred = cv2.GaussianBlur(color, (5, 5), 0)
            color[painted] = blurred[painted]
    alpha |= painted
    out = np.zeros((h, w, 4), dtype=np.uint8)
    out[..., :3] = np.where(alpha[..., None], np.clip(color, 0, 255), 0).astype(np.uint8)
    out[..., 3] = alpha.astype(np.uint8) * 255
    return out


def run(layout: DatasetLayout, num_frames: int) -> None:
    plate = cv2.imread(str(layout.background))
    if plate is None:
        raise InstagError(f"{layout.background}: missing; run the background step (--task 5)")
    layout.gt_dir.mkdir(parents=True, exist_ok=True)
    layout.torso_dir.mkdir(parents=True, exist_ok=True)

    def work(i: int, _state) -> None:
        img = cv2.imread(str(layout.ori_image(i)))
        par = cv2.imread(str(layout.parsing(i)))
        if img is None or par is None:
            raise InstagError(f"frame {i} of {layout.root}: ori_imgs or parsing image missing; rerun the earlier steps with --force")
        labels = labels_from_parsing(par)
        gt = np.where((labels == BACKGROUND)[..., None], plate, img)
        write_image(layout.gt_image(i), gt, [cv2.IMWRITE_JPEG_QUALITY, 95])
        write_image(layout.torso_image(i), torso_layer(gt, labels, plate), [cv2.IMWRITE_PNG_COMPRESSION, 6])

    for_each_frame(num_frames, work, "gt/torso")
