"""Nearest-neighbour distances in plain PyTorch (replaces simple-knn's ``distCUDA2``)."""

from __future__ import annotations

import torch
from torch import Tensor


def knn_mean_sq_dist(points: Tensor, k: int = 3, chunk_elements: int = 1 << 24) -> Tensor:
    """Mean squared distance from each point ``[N,3]`` to its ``k`` nearest other points -> ``[N]``.

    Exact, computed in row chunks of at most ``chunk_elements`` pairwise distances; clamped at 1e-7
    like the CUDA original (duplicates would otherwise give zero-sized Gaussians).
    """
    num = points.shape[0]
    if num < 2:
        return torch.full((num,), 1e-7, dtype=points.dtype, device=points.device)
    k = min(k, num - 1)
    rows = max(1, chunk_elements // num)
    pts = points.detach()
    out = []
    for start in range(0, num, rows):
        block = pts[start : start + rows]
        d2 = torch.cdist(block, pts).square()
        idx = torch.arange(start, start + block.shape[0], device=pts.device)
        d2[torch.arange(block.shape[0], device=pts.device), idx] = float("inf")  # exclude the point itself
        out.append(d2.topk(k, dim=1, largest=False).values.mean(1))
    return torch.cat(out).clamp_min(1e-7)
