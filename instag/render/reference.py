"""Pure-PyTorch reference rasterizer for 3D Gaussians (runs on the CPU, differentiable).

The maths is gsplat's "classic" 3DGS path, so the two backends agree to float precision:

- covariance ``R S S^T R^T`` from the normalised quaternion and the scales, moved to camera space;
- EWA projection with the pinhole Jacobian (its ``x/z``, ``y/z`` clamped to 1.3x the field of view),
  plus a 0.3 px^2 low-pass dilation (``eps2d``), no compensation;
- culling: depth outside ``[near, far]``, opacity below 1/255, or an opacity-aware 2-D bounding box
  (``min(3.33, sqrt(2 ln(255 o)))`` sigmas) that misses the image;
- per pixel (centre at ``j+0.5, i+0.5``), Gaussians sorted by camera depth, front to back:
  ``alpha = min(0.999, o * exp(-d^T conic d / 2))``, skipped below 1/255, and a pixel stops (exclusive)
  once its transmittance would drop to 1e-4 or less.

Gaussians are only evaluated on the 16x16 tiles their bounding box touches, like gsplat; every pixel
of such a tile is evaluated densely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
TRANSMITTANCE_MIN = 1e-4
EPS2D = 0.3
TILE = 16


@dataclass
class RasterResult:
    """What a backend returns for ``B`` images of ``H x W`` with ``D`` feature channels."""

    features: Tensor  # [B, D, H, W]  sum_i w_i f_i (over black)
    alpha: Tensor  # [B, 1, H, W]  1 - final transmittance
    depth: Tensor  # [B, 1, H, W]  sum_i w_i z_i / alpha (0 where alpha is 0)
    means2d: Tensor  # [B, N, 2] or [N, 2] (see ``batched``); retains its grad when it has one
    radii: Tensor  # [B, N, 2] int32, 0 = culled


# Rotation matrix of a unit quaternion (w, x, y, z) = (q0..q3): entry (i, j) is sum(c * q_a * q_b)
# over its terms (c, a, b). Evaluated as one gather over the 16 products q_a q_b, a handful of kernels.
_ROTATION_TERMS = (
    ((1, 0, 0), (1, 1, 1), (-1, 2, 2), (-1, 3, 3)),  # ww + xx - yy - zz
    ((2, 1, 2), (-2, 0, 3)),  # 2(xy - wz)
    ((2, 1, 3), (2, 0, 2)),  # 2(xz + wy)
    ((2, 1, 2), (2, 0, 3)),  # 2(xy + wz)
    ((1, 0, 0), (-1, 1, 1), (1, 2, 2), (-1, 3, 3)),  # ww - xx + yy - zz
    ((2, 2, 3), (-2, 0, 1)),  # 2(yz - wx)
    ((2, 1, 3), (-2, 0, 2)),  # 2(xz - wy)
    ((2, 2, 3), (2, 0, 1)),  # 2(yz + wx)
    ((1, 0, 0), (-1, 1, 1), (-1, 2, 2), (1, 3, 3)),  # ww - xx - yy + zz
)
_ROTATION_TABLES: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}


def _rotation_tables(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    key = (device, dtype)
    if key not in _ROTATION_TABLES:
        index = torch.zeros(9, 4, dtype=torch.long)
        coef = torch.zeros(9, 4, dtype=dtype)
        for entry, terms in enumerate(_ROTATION_TERMS):
            for t, (c, a, b) in enumerate(terms):
                index[entry, t], coef[entry, t] = 4 * a + b, c
        _ROTATION_TABLES[key] = (index.to(device), coef.to(device))
    return _ROTATION_TABLES[key]


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Unit quaternions ``[..., 4]`` (w, x, y, z) -> rotation matrices ``[..., 3, 3]``."""
    index, coef = _rotation_tables(quats.device, quats.dtype)
    products = (quats[..., :, None] * quats[..., None, :]).flatten(-2)  # [..., 16]
    return (products[..., index] * coef).sum(-1).unflatten(-1, (3, 3))


def expose_means2d(means2d: Tensor, batched: bool) -> tuple[Tensor, Tensor]:
    """Split the projected means into the tensor handed to the caller and the one rasterized.

    The caller's tensor ``[B,N,2]`` (or ``[N,2]`` when not ``batched``, B = 1) lies on the autograd
    path and retains its gradient, which is what densification reads after ``backward()``.
    """
    exposed = means2d if batched else means2d.reshape(means2d.shape[-2:])
    if exposed.requires_grad:
        exposed.retain_grad()
    return exposed, exposed.reshape(means2d.shape)


def project(
    means: Tensor,  # [B, N, 3]
    quats: Tensor,  # [B, N, 4] normalised
    scales: Tensor,  # [B, N, 3]
    opacities: Tensor,  # [B, N]
    viewmats: Tensor,  # [B, 4, 4]
    Ks: Tensor,  # [B, 3, 3]
    width: int,
    height: int,
    near: float,
    far: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EWA projection -> means2d ``[B,N,2]``, conics ``[B,N,3]`` (a, b, c of the inverse), depths ``[B,N]``,
    radii ``[B,N,2]`` int32 (0 = culled)."""
    rot_w2c, t_w2c = viewmats[:, None, :3, :3], viewmats[:, None, :3, 3]
    means_c = (rot_w2c @ means[..., None])[..., 0] + t_w2c  # [B,N,3]
    m = quat_to_rotmat(quats) * scales[..., None, :]
    cov_c = rot_w2c @ (m @ m.transpose(-1, -2)) @ rot_w2c.transpose(-1, -2)  # [B,N,3,3]

    fx, fy = Ks[:, None, 0, 0], Ks[:, None, 1, 1]
    cx, cy = Ks[:, None, 0, 2], Ks[:, None, 1, 2]
    x, y, z = means_c.unbind(-1)
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    tx = z * torch.minimum(torch.maximum(x / z, -lim_x_neg), lim_x_pos)
    ty = z * torch.minimum(torch.maximum(y / z, -lim_y_neg), lim_y_pos)
    zero = torch.zeros_like(z)
    jac = torch.stack([fx / z, zero, -fx * tx / (z * z), zero, fy / z, -fy * ty / (z * z)], -1)
    jac = jac.reshape(z.shape + (2, 3))
    cov2d = jac @ cov_c @ jac.transpose(-1, -2)
    a = cov2d[..., 0, 0] + EPS2D
    c = cov2d[..., 1, 1] + EPS2D
    b = 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0])
    det = a * c - b * b
    safe_det = det.clamp_min(1e-10)
    conics = torch.stack([c / safe_det, -b / safe_det, a / safe_det], -1)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], -1)

    with torch.no_grad():
        o = opacities.clamp_min(ALPHA_MIN)
        extend = torch.clamp(torch.sqrt(2.0 * torch.log(o / ALPHA_MIN)), max=3.33)
        rx = torch.ceil(extend * torch.sqrt(a.clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c.clamp_min(0)))
        mx, my = means2d[..., 0], means2d[..., 1]
        valid = (z >= near) & (z <= far) & (det > 0) & (opacities >= ALPHA_MIN) & ((rx > 0) | (ry > 0))
        valid &= (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        radii = torch.where(valid[..., None], torch.stack([rx, ry], -1), 0).to(torch.int32)
    return means2d, conics, z, radii


def _composite_tile(
    pix: Tensor,  # [P, 2] pixel centres
    means2d: Tensor,  # [n, 2] depth-sorted
    conics: Tensor,  # [n, 3]
    opacities: Tensor,  # [n]
    values: Tensor,  # [n, D+1] features and depth
) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing of ``n`` sorted Gaussians over ``P`` pixels -> ``[P, D+1]``, ``[P]``."""
    d = means2d[:, None, :] - pix[None]  # [n,P,2]
    dx, dy = d[..., 0], d[..., 1]
    sigma = 0.5 * (conics[:, None, 0] * dx * dx + conics[:, None, 2] * dy * dy) + conics[:, None, 1] * dx * dy
    alpha = torch.clamp(opacities[:, None] * torch.exp(-sigma), max=ALPHA_MAX)
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
    with torch.no_grad():
        # gsplat stops a pixel at the first Gaussian that would leave T <= 1e-4 and skips it and all after
        alive = torch.cumprod(1 - alpha, dim=0) > TRANSMITTANCE_MIN
    alpha = torch.where(alive, alpha, torch.zeros_like(alpha))
    trans = torch.cumprod(1 - alpha, dim=0)
    before = torch.cat([torch.ones_like(trans[:1]), trans[:-1]], dim=0)
    weights = alpha * before  # [n,P]
    return weights.transpose(0, 1) @ values, 1 - trans[-1]


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
    """Rasterize per-Gaussian features ``[B,N,D]`` (composited over black) with the reference maths."""
    bsz, _, dim = features.shape
    means2d, conics, depths, radii = project(means, quats, scales, opacities, viewmats, Ks, width, height, near, far)
    exposed, means2d = expose_means2d(means2d, batched)
    tiles_x, tiles_y = math.ceil(width / TILE), math.ceil(height / TILE)
    dtype, device = features.dtype, features.device
    local = torch.arange(TILE, dtype=dtype, device=device) + 0.5
    values = torch.cat([features, depths[..., None].to(dtype)], -1)  # [B,N,D+1]

    images, alphas = [], []
    for bi in range(bsz):
        with torch.no_grad():
            r = radii[bi].to(dtype)
            ids = torch.nonzero((r > 0).any(-1)).squeeze(1)
            ids = ids[torch.sort(depths[bi, ids], stable=True).indices]
            m2, rr = means2d[bi, ids].detach(), r[ids]
            lo = torch.floor((m2 - rr) / TILE).clamp_min(0)
            hi = torch.ceil((m2 + rr) / TILE)
        out = torch.zeros(tiles_y, tiles_x, TILE, TILE, dim + 1, dtype=dtype, device=device)
        acc = torch.zeros(tiles_y, tiles_x, TILE, TILE, dtype=dtype, device=device)
        tiles_out, tiles_acc, where = [], [], []
        for ty in range(tiles_y):
            rows = (lo[:, 1] <= ty) & (hi[:, 1] > ty)
            for tx in range(tiles_x):
                sel = ids[rows & (lo[:, 0] <= tx) & (hi[:, 0] > tx)]
                if sel.numel() == 0:
                    continue
                py, px = torch.meshgrid(ty * TILE + local, tx * TILE + local, indexing="ij")
                pix = torch.stack([px.reshape(-1), py.reshape(-1)], -1)
                val, a = _composite_tile(pix, means2d[bi, sel], conics[bi, sel], opacities[bi, sel], values[bi, sel])
                tiles_out.append(val.reshape(TILE, TILE, dim + 1))
                tiles_acc.append(a.reshape(TILE, TILE))
                where.append(ty * tiles_x + tx)
        if where:
            index = torch.tensor(where, device=device)
            out = out.reshape(-1, TILE, TILE, dim + 1).index_put((index,), torch.stack(tiles_out))
            acc = acc.reshape(-1, TILE, TILE).index_put((index,), torch.stack(tiles_acc))
        out = out.reshape(tiles_y, tiles_x, TILE, TILE, dim + 1).permute(4, 0, 2, 1, 3)
        out = out.reshape(dim + 1, tiles_y * TILE, tiles_x * TILE)[:, :height, :width]
        acc = acc.reshape(tiles_y, tiles_x, TILE, TILE).permute(0, 2, 1, 3)
        acc = acc.reshape(1, tiles_y * TILE, tiles_x * TILE)[:, :height, :width]
        images.append(out)
        alphas.append(acc)
    image, alpha = torch.stack(images), torch.stack(alphas)
    depth = image[:, dim:] / alpha.clamp_min(1e-10)
    return RasterResult(image[:, :dim], alpha, depth, exposed, radii)
