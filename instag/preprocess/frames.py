"""Decode the video once at 25 FPS into ``ori_imgs/<i>.jpg``, cropped around the face when needed.

A frame near 512 pixels with a face that fills a fair part of it is kept as is. Otherwise
(a wide shot, a tiny or huge frame) one fixed square around the face over the whole clip is
cut out and resized to 512x512. The crop is recorded in ``crop.json``::

    {"applied": bool, "box": [x, y, w, h],        # source pixels (x, y = top-left corner)
     "source_size": [W, H], "output_size": [w_out, h_out], "scale": w_out / w,
     "source": "path/of/the/video"}

so synthesis can paste a rendered frame back: resize it to (w, h), put it at (x, y) in a
frame of ``source_size``.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from tqdm import tqdm

from instag.data.format import DatasetLayout
from instag.errors import InstagError
from instag.io.atomic import write_image, write_json
from instag.io.video import VideoInfo, iter_frames, sample_frames

OUTPUT_SIDE = 512
JPEG_QUALITY = 95
KEEP_SIDE_RANGE = (400, 720)  # frames whose sides fall in this range are kept when the face is big enough
MIN_FACE_FRACTION = 0.2  # face height over frame height below which the frame is cropped
CROP_FACE_RATIO = 2.6  # crop side over face height
SAMPLES_PER_SECOND = 2.0  # frames sampled to locate the face


def locate_face(frames: list[np.ndarray], log=None, per_second: float = 2.0) -> tuple[np.ndarray, float] | None:
    """Median face box centre (x, y) and size (px) over sampled frames, or None if no face.

    With several faces in view, one person is followed: the largest, most central face of the
    frame where it is most prominent, then in every frame the face nearest to it (a per-frame
    "largest" could alternate between two similar faces and put the median between them).
    ``log`` is told which sampled frames show several faces.
    """
    from instag.preprocess.landmarks import _quiet_mediapipe

    _quiet_mediapipe()
    from mediapipe.python.solutions import face_detection

    per_frame: list[np.ndarray] = []  # [K,4] boxes (x, y, w, h) per sampled frame
    with face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as detector:
        for frame in frames:
            h, w = frame.shape[:2]
            result = detector.process(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            boxes = [(d.location_data.relative_bounding_box.xmin * w, d.location_data.relative_bounding_box.ymin * h,
                      d.location_data.relative_bounding_box.width * w, d.location_data.relative_bounding_box.height * h)
                     for d in result.detections or []]
            per_frame.append(np.asarray(boxes, np.float64).reshape(-1, 4))
    found = [b for b in per_frame if len(b)]
    if not found:
        return None
    h, w = frames[0].shape[:2]

    def score(b: np.ndarray) -> np.ndarray:
        off = np.linalg.norm(b[:, :2] + b[:, 2:] / 2 - np.array([w / 2, h / 2]), axis=1) / max(w, h)
        return b[:, 2] * b[:, 3] * (1.0 - 0.5 * off)

    ref_boxes = max(found, key=lambda b: score(b).max())
    ref = ref_boxes[int(np.argmax(score(ref_boxes)))]
    ref_centre = ref[:2] + ref[2:] / 2
    chosen = np.stack([b[int(np.argmin(np.linalg.norm(b[:, :2] + b[:, 2:] / 2 - ref_centre, axis=1)))] for b in found])
    several = [k for k, b in enumerate(per_frame) if len(b) > 1]
    centre = np.median(chosen[:, :2] + chosen[:, 2:] / 2, axis=0)
    size = float(np.median(np.maximum(chosen[:, 2], chosen[:, 3])))
    if several and log is not None:
        times = ", ".join(f"{k / per_second:.1f}" for k in several[:6]) + (" ..." if len(several) > 6 else "")
        log(f"several faces in the frames at {times} s: following the largest, most central one "
            f"(around x={centre[0]:.0f}, y={centre[1]:.0f} in the sampled frames)")
    return centre, size


def choose_crop(info: VideoInfo, face: tuple[np.ndarray, float] | None, scale: float) -> dict:
    """The crop record for a video whose face (in frames scaled by ``scale``) is ``face``."""
    w, h = info.width, info.height
    keep = {"applied": False, "box": [0, 0, w, h], "source_size": [w, h], "output_size": [w, h], "scale": 1.0,
            "source": os.path.abspath(info.path)}
    if face is None:
        raise InstagError(f"{info.path}: no face found in the sampled frames; give a video of one talking person "
                          "facing the camera")
    centre = face[0] / scale
    size = face[1] / scale
    lo, hi = KEEP_SIDE_RANGE
    square_enough = max(w, h) <= 1.34 * min(w, h)
    if lo <= min(w, h) and max(w, h) <= hi and square_enough and size >= MIN_FACE_FRACTION * h:
        return keep
    side = int(min(min(w, h), max(size * CROP_FACE_RATIO, 64)))
    side -= side % 2
    cx = centre[0]
    cy = centre[1] + 0.2 * size  # a little below the face centre: keep neck and shoulders
    x = int(np.clip(round(cx - side / 2), 0, w - side))
    y = int(np.clip(round(cy - side / 2), 0, h - side))
    return {"applied": True, "box": [x, y, side, side], "source_size": [w, h],
            "output_size": [OUTPUT_SIDE, OUTPUT_SIDE], "scale": OUTPUT_SIDE / side,
            "source": os.path.abspath(info.path)}


def run(layout: DatasetLayout, info: VideoInfo, log=print) -> int:
    """Write ``ori_imgs/<i>.jpg`` and ``crop.json``; return the number of frames."""
    samples = sample_frames(info, per_second=SAMPLES_PER_SECOND)
    scale = samples[0].shape[1] / info.width if samples else 1.0
    crop = choose_crop(info, locate_face(samples, log, SAMPLES_PER_SECOND), scale)
    if crop["applied"]:
        x, y, s, _ = crop["box"]
        log(f"{info.width}x{info.height} frames: cropping {s}x{s} at ({x},{y}) around the face and resizing to "
            f"{OUTPUT_SIDE}x{OUTPUT_SIDE} (recorded in crop.json)")
    box = tuple(crop["box"]) if crop["applied"] else None
    size = tuple(crop["output_size"]) if crop["applied"] else None
    layout.ori_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    bar = tqdm(total=info.num_frames_25, desc="frames", unit="frame", leave=False)
    for frame in iter_frames(info, crop=box, size=size):
        write_image(layout.ori_image(count), frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        count += 1
        bar.update(1)
    bar.close()
    expected = info.num_frames_25
    if count < max(1, expected - max(2, int(0.02 * expected))):
        raise InstagError(f"{info.path}: only {count} of about {expected} frames could be decoded; the file is "
                          "truncated or corrupt; copy or re-encode it and run again")
    for stale in layout.ori_dir.glob("*.jpg"):
        if stale.stem.isdigit() and int(stale.stem) >= count:
            stale.unlink()
    write_json(layout.crop, crop)
    return count
