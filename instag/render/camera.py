"""Pinhole camera in OpenCV axes (x right, y down, z forward)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass
class Camera:
    """A pinhole camera.

    ``world_to_camera`` ``[4,4]`` maps world (head-frame) points to camera space with OpenCV
    axes; ``fx, fy, cx, cy`` are in pixels (pixel ``(i, j)`` has its centre at ``(j+0.5, i+0.5)``).
    """

    world_to_camera: Tensor
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    near: float = 0.01
    far: float = 100.0

    def K(self) -> Tensor:
        """Intrinsics ``[3,3]`` on the device and dtype of ``world_to_camera``."""
        w2c = self.world_to_camera
        return torch.tensor(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=w2c.dtype, device=w2c.device
        )

    @property
    def center(self) -> Tensor:
        """Camera centre in world coordinates ``[3]``."""
        rot, t = self.world_to_camera[:3, :3], self.world_to_camera[:3, 3]
        return -(rot.transpose(0, 1) @ t)

    @classmethod
    def from_fov(
        cls,
        world_to_camera: Tensor,
        fov_x_degrees: float,
        width: int,
        height: int,
        near: float = 0.01,
        far: float = 100.0,
    ) -> Camera:
        """Square-pixel camera with the principal point at the image centre."""
        focal = 0.5 * width / math.tan(math.radians(fov_x_degrees) / 2)
        return cls(world_to_camera, focal, focal, width / 2, height / 2, width, height, near, far)

    @classmethod
    def look_at(
        cls,
        eye,
        target,
        focal: float,
        width: int,
        height: int,
        up=(0.0, 1.0, 0.0),
        near: float = 0.01,
        far: float = 100.0,
    ) -> Camera:
        """Camera at ``eye`` looking at ``target`` with world ``up`` pointing up in the image (y down)."""
        eye_t, target_t, up_t = (torch.as_tensor(v, dtype=torch.float32) for v in (eye, target, up))
        forward = torch.nn.functional.normalize(target_t - eye_t, dim=0)
        right = torch.nn.functional.normalize(torch.linalg.cross(forward, up_t), dim=0)
        down = torch.linalg.cross(forward, right)
        w2c = torch.eye(4)
        w2c[:3, :3] = torch.stack([right, down, forward])
        w2c[:3, 3] = -(w2c[:3, :3] @ eye_t)
        return cls(w2c, focal, focal, width / 2, height / 2, width, height, near, far)

    def project(self, points: Tensor) -> Tensor:
        """Pixel coordinates ``[N,2]`` (x = column, y = row) of world points ``[N,3]``; differentiable."""
        w2c = self.world_to_camera.to(points.device, points.dtype)
        pc = points @ w2c[:3, :3].T + w2c[:3, 3]
        f = pc.new_tensor([self.fx, self.fy])
        c = pc.new_tensor([self.cx, self.cy])
        return pc[:, :2] / pc[:, 2:3].clamp_min(1e-6) * f + c

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Camera:
        """Copy with ``world_to_camera`` moved to ``device`` / cast to ``dtype``."""
        return replace(self, world_to_camera=self.world_to_camera.to(device=device, dtype=dtype))

    def scaled(self, factor: float) -> Camera:
        """Same view at ``factor`` times the resolution."""
        return replace(
            self,
            fx=self.fx * factor,
            fy=self.fy * factor,
            cx=self.cx * factor,
            cy=self.cy * factor,
            width=round(self.width * factor),
            height=round(self.height * factor),
        )


def stack_cameras(cameras: list[Camera], device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """World-to-camera matrices ``[B,4,4]`` and intrinsics ``[B,3,3]`` of cameras sharing one image size."""
    if not cameras:
        raise ValueError("no cameras given")
    size = (cameras[0].width, cameras[0].height)
    if any((c.width, c.height) != size for c in cameras):
        raise ValueError("all cameras of a batch must share one image size")
    viewmats = torch.stack([c.world_to_camera.to(device=device, dtype=dtype) for c in cameras])
    Ks = torch.tensor([[[c.fx, 0.0, c.cx], [0.0, c.fy, c.cy], [0.0, 0.0, 1.0]] for c in cameras], dtype=dtype)
    # a non-blocking copy from a fresh host tensor is staged at once and does not wait for queued kernels
    return viewmats, Ks.to(device, non_blocking=True)
