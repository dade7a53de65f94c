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
from instag.render import Camera

OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


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
    height, width = image_size(layout, int(frames[0]["img_id"]))
    focal = float(data["focal_len"])
    cx = float(data.get("cx", width / 2.0))
    cy = float(data.get("cy", height / 2.0))
    sy, sx = 1.0, 1.0
    if size is not None:
        sy, sx = size[0] / height, size[1] / width
        height, width = size
    out = []
    for f in frames:
        try:
            w2c = world_to_camera(np.asarray(f["transform_matrix"], dtype=np.float64))
            index = int(f["img_id"])
            aud = int(f.get("aud_id", index))
        except (KeyError, ValueError, TypeError) as err:
            raise InstagError(f"{path}: malformed frame entry {f!r:.80}; re-run preprocessing") from err
        cam = Camera(world_to_camera=w2c, fx=focal * sx, fy=focal * sy, cx=cx * sx, cy=cy * sy, width=width, height=height)
        out.append(FrameCamera(index, cam, aud))
    return out


def scene_extent(cameras: list[FrameCamera]) -> float:
    """1.1 × the largest distance of a camera centre from the mean centre (floored for static cameras)."""
    centres = []
    for fc in cameras:
        w2c = fc.camera.world_to_camera.double()
        centres.append(-(w2c[:3, :3].T @ w2c[:3, 3]))
    c = torch.stack(centres)
    radius = (c - c.mean(0)).norm(dim=-1).max().item()
    return max(1.1 * radius, 0.05)
