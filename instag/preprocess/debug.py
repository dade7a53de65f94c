"""Overlay images for a few frames, so a person can see at a glance that preprocessing worked.

``debug/frame_<i>.jpg`` (JPEG: a fifth of a PNG's size, and only for the eye) is a 2x2 panel:
landmarks (478 mesh points, the 68 ``.lms`` points in red), parsing colours blended over the frame,
the teeth mask (magenta) with the inner-lip ring, and the tracked mesh (tessellation projected with
the fitted pose and focal) in green.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from instag.data.format import DatasetLayout
from instag.data.maps import find, read_mask
from instag.io.atomic import write_image
from instag.preprocess import tracking
from instag.preprocess.mesh import INNER_LIPS, MESH_TO_68, tessellation_edges


def _label(img: np.ndarray, text: str) -> np.ndarray:
    """White ``text`` at the top left with a dark outline. The outline is the same 1-px text shifted by one pixel
    each way: a thicker stroke advances further per letter and drifts right of the text ("landmarkss")."""
    for dx, dy in ((-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)):
        cv2.putText(img, text, (8 + dx, 22 + dy), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, text, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def projected_mesh(params: dict[str, torch.Tensor], index: int) -> np.ndarray | None:
    """Pixel positions [478,2] of the tracked shape in frame ``index``, or None without a shape."""
    if "shape" not in params:
        return None
    r_cv, t_cv = tracking.head_to_camera_cv(params)
    width, height = (int(v) for v in params["image_size"])
    cam = params["shape"].double().numpy() @ r_cv[index].T + t_cv[index]
    f = float(params["focal"].reshape(-1)[0])
    return f * cam[:, :2] / cam[:, 2:3] + np.array([width / 2, height / 2])


def panel(layout: DatasetLayout, index: int, landmarks: np.ndarray, params: dict[str, torch.Tensor] | None) -> np.ndarray:
    img = cv2.imread(str(layout.ori_image(index)))
    h, w = img.shape[:2]
    lms = img.copy()
    for x, y in landmarks[index, :, :2]:
        cv2.circle(lms, (int(round(x)), int(round(y))), 1, (255, 255, 0), -1)
    for x, y in landmarks[index, MESH_TO_68, :2]:
        cv2.circle(lms, (int(round(x)), int(round(y))), 2, (0, 0, 255), -1)
    par = cv2.imread(str(layout.parsing(index)))
    parsing = cv2.addWeighted(img, 0.45, par, 0.55, 0) if par is not None else img.copy()
    teeth = img.copy()
    if find(layout.teeth_mask(index)) is not None:
        mask = read_mask(layout.teeth_mask(index), "rerun the teeth step (--task 10)")
        teeth[mask] = (0.4 * teeth[mask] + 0.6 * np.array([255, 0, 255])).astype(np.uint8)
    cv2.polylines(teeth, [np.round(landmarks[index, INNER_LIPS, :2]).astype(np.int32)], True, (0, 255, 255), 1)
    mesh = img.copy()
    pts = projected_mesh(params, index) if params is not None else None
    if pts is not None:
        for a, b in tessellation_edges():
            cv2.line(mesh, tuple(np.round(pts[a]).astype(int)), tuple(np.round(pts[b]).astype(int)), (0, 255, 0), 1,
                     cv2.LINE_AA)
    top = np.concatenate([_label(lms, f"frame {index}: landmarks"), _label(parsing, "parsing")], 1)
    bottom = np.concatenate([_label(teeth, "teeth"), _label(mesh, "tracked mesh")], 1)
    grid = np.concatenate([top, bottom], 0)
    if max(grid.shape[:2]) > 1024:
        scale = 1024 / max(grid.shape[:2])
        grid = cv2.resize(grid, (int(w * 2 * scale), int(h * 2 * scale)), interpolation=cv2.INTER_AREA)
    return grid


def run(layout: DatasetLayout, landmarks: np.ndarray, count: int = 4) -> list[int]:
    """Write ``debug/frame_<i>.jpg`` for ``count`` evenly spaced frames (and drop older overlays); return their indices."""
    n = len(landmarks)
    indices = sorted({int(round(k)) for k in np.linspace(0, n - 1, max(1, min(count, n)))})
    params = tracking.load(layout) if layout.track_params.exists() else None
    layout.debug_dir.mkdir(parents=True, exist_ok=True)
    for old in layout.debug_dir.glob("frame_*.*"):
        old.unlink()
    for i in indices:
        write_image(layout.debug_dir / f"frame_{i}.jpg", panel(layout, i, landmarks, params), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return indices
