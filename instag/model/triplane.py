"""Tri-plane multi-resolution grid encoder (METHOD 2.3), dense and in plain PyTorch.

A point ``(x, y, z)`` in ``[-bound, bound]^3`` is projected onto the xy, yz and xz planes; each plane
has ``L`` levels of dense 2-D grids with bilinear interpolation. Level ``l`` has
``ceil(base * s^l)`` vertices per side with ``s = (finest / base)^(1 / (L-1))`` (``s < 1`` is allowed:
the universal mouth field shrinks from 64 to 58). The largest level is 64^2, so no hashing is needed.
A plane whose 2-D coordinate leaves ``[-bound, bound]^2`` contributes zeros.

All planes and levels live in one parameter ``[3 * L, C, R, R]`` (R = the largest level; a smaller
level uses the top-left ``r x r`` corner and never reads the rest), so a forward is a single
``grid_sample`` over ``3 * L`` grids with ``align_corners=True``; autograd gives gradients to the
embeddings and to the input positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PLANES = ((0, 1), (1, 2), (0, 2))  # xy, yz, xz


def level_resolutions(num_levels: int, base_resolution: float, finest_resolution: float) -> list[int]:
    """Vertices per side of each level: ``ceil(base * s^l)``."""
    if num_levels == 1:
        return [math.ceil(base_resolution)]
    scale = (finest_resolution / base_resolution) ** (1.0 / (num_levels - 1))
    # the small epsilon keeps exact products such as 16 * 1.0 from rounding up through float error
    return [math.ceil(base_resolution * scale**level - 1e-9) for level in range(num_levels)]


class TriPlaneEncoder(nn.Module):
    """``forward(x [N,3]) -> [N, 3 * num_levels * features_per_level]`` (planes xy, yz, xz; levels fine last)."""

    def __init__(
        self,
        bound: float = 0.15,
        num_levels: int = 12,
        base_resolution: float = 16,
        finest_resolution: float = 38.4,
        features_per_level: int = 1,
    ):
        super().__init__()
        self.bound = bound
        self.num_levels = num_levels
        self.features_per_level = features_per_level
        self.resolutions = level_resolutions(num_levels, base_resolution, finest_resolution)
        if min(self.resolutions) < 2:
            raise ValueError(f"every level needs at least 2 vertices per side, got {self.resolutions}")
        top = max(self.resolutions)
        # a level with r vertices spans grid_sample coordinates [-1, 2 (r-1)/(top-1) - 1]
        span = torch.tensor([(r - 1) / (top - 1) for r in self.resolutions], dtype=torch.float64)
        self.register_buffer("level_span", span, persistent=False)  # [L], kept in float64 for exact float64 use
        planes = len(PLANES) * num_levels
        self.embeddings = nn.Parameter(torch.empty(planes, features_per_level, top, top).uniform_(-1e-4, 1e-4))

    @property
    def output_dim(self) -> int:
        return len(PLANES) * self.num_levels * self.features_per_level

    def forward(self, x: Tensor) -> Tensor:
        """x ``[..., 3]`` in world units -> features ``[..., output_dim]``."""
        lead = x.shape[:-1]
        x = x.reshape(-1, 3)
        num, levels = x.shape[0], self.num_levels
        u = (x + self.bound) / (2 * self.bound)  # [N,3] in [0,1] inside the box
        uv = torch.stack([u[:, list(p)] for p in PLANES], 0)  # [3,N,2]
        inside = ((uv >= 0) & (uv <= 1)).all(-1)  # [3,N]
        span = self.level_span.to(x.dtype)
        grid = uv[:, None] * (2 * span)[None, :, None, None] - 1  # [3,L,N,2]
        grid = grid.reshape(len(PLANES) * levels, num, 1, 2).to(self.embeddings.dtype)
        out = F.grid_sample(self.embeddings, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out = out.reshape(len(PLANES), levels, self.features_per_level, num) * inside[:, None, None, :]
        return out.permute(3, 0, 1, 2).reshape(*lead, self.output_dim)
