"""gsplat (CUDA) backend: the same contract as :func:`instag.render.reference.rasterize_features`.

gsplat is imported lazily, only when a CUDA tensor is rasterized; its kernels are JIT-built on
first use (about a minute). The pipeline is gsplat's ``rasterization(render_mode="RGB+ED",
packed=False)`` spelled out with its public building blocks, so that the projected means we hand
back for densification are the very tensor the rasterizer consumes (its ``.grad`` is then filled).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from instag.render.reference import EPS2D, TILE, RasterResult, expose_means2d


def spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """gsplat's fused SH kernel with the renderer's convention: ``[..., 3]`` RGB (+0.5, clamped at 0)."""
    from gsplat import spherical_harmonics as gs_sh

    return (gs_sh(degree, dirs, coeffs) + 0.5).clamp_min(0.0)


def rasterize_features(
    means: Tensor,  # [B, N, 3]
    quats: Tensor,  # [B, N, 4] normalised
    scales: Tensor,  # [B, N, 3]
    opacities: Tensor,  # [B, N]
    features: Tensor,  # [B, N, D]
    viewmats: Tensor,  # [B, 4, 4]
    Ks: Tensor,  # [B, 3, 3]
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 100.0,
    batched: bool = True,
) -> RasterResult:
    """Rasterize per-Gaussian features ``[B,N,D]`` with gsplat (one projection, one sort, one raster pass)."""
    from gsplat import fully_fused_projection, isect_offset_encode, isect_tiles, rasterize_to_pixels

    bsz, num, dim = features.shape
    radii, means2d, depths, conics, _ = fully_fused_projection(
        means,
        None,
        quats,
        scales,
        viewmats[:, None],
        Ks[:, None],
        width,
        height,
        eps2d=EPS2D,
        near_plane=near,
        far_plane=far,
        packed=False,
        opacities=opacities,
    )  # radii [B,1,N,2], means2d [B,1,N,2], depths [B,1,N], conics [B,1,N,3]
    exposed, means2d = expose_means2d(means2d.reshape(bsz, num, 2), batched)
    means2d = means2d[:, None]
    tiles_x, tiles_y = math.ceil(width / TILE), math.ceil(height / TILE)
    _, isect_ids, flatten_ids = isect_tiles(means2d, radii, depths, TILE, tiles_x, tiles_y, packed=False)
    offsets = isect_offset_encode(isect_ids, bsz, tiles_x, tiles_y).reshape(bsz, 1, tiles_y, tiles_x)
    colors = torch.cat([features[:, None].to(depths.dtype), depths[..., None]], -1)  # [B,1,N,D+1]
    image, alpha = rasterize_to_pixels(
        means2d,
        conics,
        colors,
        opacities[:, None].contiguous(),
        width,
        height,
        TILE,
        offsets,
        flatten_ids,
        packed=False,
    )  # [B,1,H,W,D+1], [B,1,H,W,1]
    image = image[:, 0].permute(0, 3, 1, 2)
    alpha = alpha[:, 0].permute(0, 3, 1, 2)
    depth = image[:, dim:] / alpha.clamp_min(1e-10)
    return RasterResult(image[:, :dim], alpha, depth, exposed, radii[:, 0])
