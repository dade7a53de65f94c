"""Cameras of a processed clip, read from ``transforms_<split>.json``.

The file stores camera-to-world matrices in OpenGL axes (x right, y up, z backward) in the
canonical head frame. We convert to OpenCV axes (negate the camera's y and z columns) and
invert to world-to-camera, which is what :class:`instag.render.Camera` takes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from instag.data.format import DatasetLayout
from instag.errors import InstagError
from instag.io.checks import check_number, check_type, check_values
from instag.render import Camera

OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])
TRANSFORMS_HINT = "re-run preprocessing (instag process --task transforms) to rewrite it"
PIXEL_LIMIT = 1e6  # focal length and principal point in pixels
POSE_LIMIT = 1e4  # camera-to-world entries (rotation and translation in head units)


@dataclass
class FrameCamera:
    """One frame of a split: ``index`` keys every per-frame file, ``aud_id`` the audio window."""

    index: int
    camera: Camera
    aud_id: int


def read_transforms(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError as err:
        raise InstagError(f"{path} is missing; run `instag process` (or data_utils/split.py) on the clip first") from err
    except (OSError, ValueError) as err:
        raise InstagError(f"{path} is not readable JSON ({err}); re-run preprocessing to rewrite it") from err
    if not isinstance(data, dict) or "frames" not in data or "focal_len" not in data:
        raise InstagError(f"{path} lacks 'frames' or 'focal_len'; re-run preprocessing to rewrite it")
    check_number(path, data["focal_len"], "focal_len", TRANSFORMS_HINT, low=0, high=PIXEL_LIMIT, low_open=True)
    for key in ("cx", "cy"):
        if key in data:
            check_number(path, data[key], key, TRANSFORMS_HINT, low=-PIXEL_LIMIT, high=PIXEL_LIMIT)
    check_type(path, data["frames"], "'frames'", list, TRANSFORMS_HINT)
    return data


def image_size(layout: DatasetLayout, index: int) -> tuple[int, int]:
    """(height, width) of the clip's frames, read from a ground-truth (or original) image."""
    for path in (layout.gt_image(index), layout.ori_image(index)):
        if path.exists():
            img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if img is not None:
                return int(img.shape[0]), int(img.shape[1])
    raise InstagError(f"cannot read frame {index} of {layout.root} ({layout.gt_image(index)}); re-run preprocessing")


def world_to_camera(c2w_opengl: np.ndarray) -> torch.Tensor:
    """transform_matrix (camera-to-world, OpenGL axes) ``[4,4]`` -> world-to-camera (OpenCV axes) ``[4,4]``."""
    c2w = np.asarray(c2w_opengl, dtype=np.float64).reshape(4, 4) @ OPENGL_TO_OPENCV
    return torch.from_numpy(np.linalg.inv(c2w)).float()


def load_cameras(
    layout: DatasetLayout, split: str, size: tuple[int, int] | None = None, n_views: int = -1
) -> list[FrameCamera]:
    """Cameras of ``split`` ("train" | "val"). ``size`` (height, width) rescales the intrinsics
    for images resized to that size; ``n_views`` > 0 keeps the first n frames."""
    path = layout.transforms(split)
    data = read_transforms(path)
    frames = data["frames"]
    if not frames:
        raise InstagError(f"{path} lists no frames; re-run the split with a longer clip")
    if n_views > 0:
        frames = frames[:n_views]
    entries = [_frame_entry(path, k, f, _frame_count(layout)) for k, f in enumerate(frames)]
    height, width = image_size(layout, entries[0][0])
    focal = float(data["focal_len"])
    cx = float(data.get("cx", width / 2.0))
    cy = float(data.get("cy", height / 2.0))
    sy, sx = 1.0, 1.0
    if size is not None:
        sy, sx = size[0] / height, size[1] / width
        height, width = size
    out = []
    for index, aud, c2w in entries:
        cam = Camera(world_to_camera=world_to_camera(c2w), fx=focal * sx, fy=focal * sy, cx=cx * sx, cy=cy * sy,
                     width=width, height=height)
        out.append(FrameCamera(index, cam, aud))
    return out


def _frame_count(layout: DatasetLayout) -> int:
    """Decoded frames of the clip (``ori_imgs``, else ``gt_imgs``); 0 when neither folder holds any."""
    return layout.num_frames() or (sum(1 for _ in layout.gt_dir.glob("*.jpg")) if layout.gt_dir.is_dir() else 0)


def _frame_entry(path: Path, k: int, entry, num_frames: int) -> tuple[int, int, np.ndarray]:
    """``(img_id, aud_id, camera-to-world [4,4])`` of the ``k``-th entry of ``path``'s frames, checked."""
    name = f"frames[{k}]"
    check_type(path, entry, name, dict, TRANSFORMS_HINT)
    for key in ("img_id", "transform_matrix"):
        if key not in entry:
            raise InstagError(f"{path}: {name} has no {key!r}; {TRANSFORMS_HINT}")
    index = check_number(path, entry["img_id"], f"{name}.img_id", TRANSFORMS_HINT, low=0, integer=True)
    if num_frames and index >= num_frames:
        raise InstagError(f"{path}: {name}.img_id is {index} but the clip has {num_frames} frames (0-{num_frames - 1}); "
                          f"{TRANSFORMS_HINT}")
    aud = check_number(path, entry.get("aud_id", index), f"{name}.aud_id", TRANSFORMS_HINT, low=0, integer=True)
    try:
        c2w = np.asarray(entry["transform_matrix"], dtype=np.float64)
    except (ValueError, TypeError):
        c2w = None
    if c2w is None or c2w.shape != (4, 4):
        raise InstagError(f"{path}: {name}.transform_matrix is not a 4x4 matrix of numbers; {TRANSFORMS_HINT}")
    check_values(path, c2w, f"{name}.transform_matrix", TRANSFORMS_HINT, limit=POSE_LIMIT,
                 where=lambda i: f"[{i[0]}][{i[1]}]")
    if abs(np.linalg.det(c2w[:3, :3])) < 1e-6:
        raise InstagError(f"{path}: {name}.transform_matrix has no valid rotation (its 3x3 part is singular); "
                          f"{TRANSFORMS_HINT}")
    return int(index), int(aud), c2w


def scene_extent(cameras: list[FrameCamera]) -> float:
    """1.1 × the largest distance of a camera centre from the mean centre (floored for static cameras)."""
    centres = []
    for fc in cameras:
        w2c = fc.camera.world_to_camera.double()
        centres.append(-(w2c[:3, :3].T @ w2c[:3, 3]))
    c = torch.stack(centres)
    radius = (c - c.mean(0)).norm(dim=-1).max().item()
    return max(1.1 * radius, 0.05)
