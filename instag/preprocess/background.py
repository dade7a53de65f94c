"""Static background plate ``bc.jpg`` from the frames and their parsing.

Each pixel takes its colour from the sampled frame where it lies deepest inside the
background (farthest from the person); pixels never clearly background in any frame
(distance <= ``MARGIN`` px everywhere) copy the nearest confidently known pixel.
"""

from __future__ import annotations

import cv2
import numpy as np

from instag.data.format import DatasetLayout
from instag.errors import InstagError
from instag.io.atomic import write_image
from instag.preprocess.parsing import BACKGROUND, labels_from_parsing

MARGIN = 5.0  # px: background pixels closer than this to the person are not trusted
MAX_SAMPLES = 40


def plate(frames: list[np.ndarray], background_masks: list[np.ndarray]) -> np.ndarray:
    """Background plate BGR uint8 [H,W,3] from frames [H,W,3] and background masks bool [H,W]."""
    best_dist = None
    plate_img = np.zeros_like(frames[0])
    for frame, bg in zip(frames, background_masks):
        dist = cv2.distanceTransform(bg.astype(np.uint8), cv2.DIST_L2, 5)
        if best_dist is None:
            best_dist = dist
            plate_img[:] = frame
            continue
        better = dist > best_dist
        best_dist = np.where(better, dist, best_dist)
        plate_img[better] = frame[better]
    confident = best_dist > MARGIN
    if not confident.any():
        return plate_img
    if not confident.all():
        _, labels = cv2.distanceTransformWithLabels((~confident).astype(np.uint8), cv2.DIST_L2, 5,
                                                    labelType=cv2.DIST_LABEL_PIXEL)
        flat = plate_img.reshape(-1, 3)
        sources = np.flatnonzero(confident.ravel())  # raster order = label order
        plate_img = flat[sources[labels.ravel() - 1]].reshape(plate_img.shape)
    return plate_img


def run(layout: DatasetLayout, num_frames: int) -> None:
    step = max(1, num_frames // MAX_SAMPLES)
    frames, masks = [], []
    for i in range(0, num_frames, step):
        img = cv2.imread(str(layout.ori_image(i)))
        par = cv2.imread(str(layout.parsing(i)))
        if img is None or par is None:
            raise InstagError(f"frame {i} of {layout.root}: ori_imgs or parsing image missing; rerun the earlier steps with --force")
        frames.append(img)
        masks.append(labels_from_parsing(par) == BACKGROUND)
    write_image(layout.background, plate(frames, masks), [cv2.IMWRITE_JPEG_QUALITY, 95])
