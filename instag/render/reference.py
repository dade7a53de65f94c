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

Tiles of 16x16 pixels are composited all together, like gsplat's blocks: each visible Gaussian is listed
for the tiles where its alpha reaches 1/255 (its ellipse meets the tile's pixel centres), each tile's list
front to back; then every tile takes the next ``CHUNK`` Gaussians of its list at once (vectorised over tiles,
in groups that stay in cache), and leaves when its list is used up or all its pixels have stopped. Alpha is
the sum of the weights (``1 - T``). With gradients a chunk goes through differentiable ops; without, it is
composited in place in reused buffers (the inference path).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
TRANSMITTANCE_MIN = 1e-4
EPS2D = 0.3
TILE = 16
CHUNK = 32  # Gaussians per tile and step
GROUP_ELEMENTS = 1 << 18  # Gaussian-pixel values composited per call: 1 MiB of float32, cache-sized
SIGMA_MAX = 60.0  # alpha below exp(-60) is far below 1/255: capping keeps exp clear of slow subnormal results
LOG_ALPHA_MAX = math.log(ALPHA_MAX)


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


def _tile_pairs(
    gaussians: Tensor,  # [M, 6] visible Gaussians front to back: mean x, y, conic a, b, c, ln opacity
    frame: Tensor,  # [M] long
    width: int,
    height: int,
) -> tuple[Tensor, Tensor]:
    """Every (tile, Gaussian) pair where the Gaussian reaches ``alpha >= 1/255`` at some pixel centre of the
    tile -> tile ids ``[P]`` (``frame * tiles + row * tiles_x + col``) and positions in ``gaussians`` ``[P]``,
    sorted by tile and, within a tile, front to back.

    Alpha reaches 1/255 inside the ellipse ``q(u, v) = (a u^2 + c v^2) / 2 + b u v <= ln(255 o)`` (u, v: pixel
    minus mean). The tile rows are those whose pixel-centre rows meet the ellipse's height; in each row, the
    columns are those that meet the ellipse's width within the row's band, from the extremes of
    ``u(v) = (-b v +- sqrt(2 a level - det v^2)) / a`` over the band."""
    tiles_x, tiles_y = math.ceil(width / TILE), math.ceil(height / TILE)
    mx, my, a, b, c, log_opacity = gaussians.unbind(-1)
    level = log_opacity - math.log(ALPHA_MIN) + 1e-3  # slack: a pair too many costs time, one too few pixels
    det = (a * c - b * b).clamp_min(1e-30)
    half_w, half_h = torch.sqrt(2 * level * c / det), torch.sqrt(2 * level * a / det)
    # tile rows whose pixel centres (T i + 0.5 ... T i + T - 0.5) meet [my - half_h, my + half_h]
    row_lo = torch.ceil((my - half_h + 0.5) / TILE - 1).clamp_min(0).long()
    row_hi = torch.floor((my + half_h - 0.5) / TILE).clamp(max=tiles_y - 1).long()
    gauss, row = _spread(row_lo, row_hi)
    mx, my, a, b, c, det, level, half_w, half_h = (
        t.index_select(0, gauss) for t in (mx, my, a, b, c, det, level, half_w, half_h)
    )
    v0 = torch.maximum((row * TILE).to(my.dtype) + 0.5 - my, -half_h)
    v1 = torch.minimum(torch.clamp((row + 1) * TILE, max=height).to(my.dtype) - 0.5 - my, half_h)

    def u(v: Tensor, sign: float) -> Tensor:
        return (-b * v + sign * torch.sqrt((2 * a * level - det * v * v).clamp_min(0))) / a

    # u(v) is concave (+) / convex (-); its extreme over the ellipse is at v = -+ b half_w / c: clamp to the band
    v_right = -b * half_w / c
    right = mx + u(torch.minimum(torch.maximum(v_right, v0), v1), 1.0)
    left = mx + u(torch.minimum(torch.maximum(-v_right, v0), v1), -1.0)
    col_lo = torch.ceil((left + 0.5) / TILE - 1).clamp_min(0).long()
    col_hi = torch.where(v0 <= v1, torch.floor((right - 0.5) / TILE).clamp(max=tiles_x - 1), -1.0).long()
    band, col = _spread(col_lo, col_hi)
    gauss = gauss.index_select(0, band)
    tile = frame.index_select(0, gauss) * (tiles_x * tiles_y) + row.index_select(0, band) * tiles_x + col
    small = len(frame) == 0 or (int(frame.max()) + 1) * tiles_x * tiles_y < 2**31  # int32 sorts faster
    order = torch.sort(tile.int() if small else tile, stable=True).indices
    return tile.index_select(0, order), gauss.index_select(0, order)


def _spread(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Integer ranges ``lo[i] .. hi[i]`` (inclusive, empty when ``hi < lo``) -> owner ``i`` and value of each
    member, in order."""
    count = (hi - lo + 1).clamp_min(0)
    owner = torch.repeat_interleave(count)
    start = (torch.cumsum(count, 0) - count - lo).index_select(0, owner)
    return owner, torch.arange(len(owner), device=lo.device) - start


def _log_alpha(
    px: Tensor,  # [T, 1, TILE] pixel-centre x of each tile's columns
    py: Tensor,  # [T, 1, TILE] pixel-centre y of each tile's rows
    gaussians: Tensor,  # [T, C, 6+] mean x, y, conic a, b, c, log opacity, ...
    out: Tensor | None = None,  # [T, C, TILE, TILE]
) -> Tensor:
    """``ln o - sigma``, sigma = (a dx^2 + c dy^2) / 2 + b dx dy, of ``C`` Gaussians at each tile's pixels ->
    ``[T, C, TILE*TILE]`` (row-major in the tile), from its separable parts and the cross term."""
    dx = gaussians[..., 0:1] - px  # [T,C,TILE]
    dy = gaussians[..., 1:2] - py
    a, b, c, log_opacity = gaussians[..., 2:3], gaussians[..., 3:4], gaussians[..., 4:5], gaussians[..., 5:6]
    row = log_opacity - 0.5 * c * dy * dy
    col = -0.5 * a * dx * dx
    if out is None:
        power = torch.addcmul(row[..., :, None] + col[..., None, :], (-b * dy)[..., :, None], dx[..., None, :])
    else:
        power = torch.add(row[..., :, None], col[..., None, :], out=out)
        power.addcmul_((-b * dy)[..., :, None], dx[..., None, :])
    return power.flatten(-2)


def _composite_chunk(
    power: Tensor,  # [T, C, P] ln o - sigma of each tile's next C Gaussians (front to back) at its P pixels
    log_opacities: Tensor | None,  # [T, C] (-inf pads a tile with fewer than C left); None: sigma >= 0 for sure
    values: Tensor,  # [T, C, K] per-Gaussian values, the last one 1 (it composites to alpha)
    probe: Tensor,  # [T, P] transmittance in front of the chunk, not stopping at the cutoff
) -> tuple[Tensor, Tensor]:
    """Composite one chunk onto ``T`` tiles -> weighted values ``[T, K, P]`` and the probe behind it ``[T, P]``.

    The probe equals the transmittance while a pixel is live; a pixel is stopped, for good, by the first
    Gaussian that takes the probe to 1e-4 or less. The weight ``alpha T_front`` is computed as
    ``alpha / (1 - alpha) T_behind`` so that stopping is one threshold of ``T_behind``. ``threshold(x, t, v)``
    keeps ``x > t`` and puts ``v`` elsewhere (fast on the CPU, unlike boolean masks); the alpha threshold is
    the largest number below 1/255, so it keeps exactly what ``alpha >= 1/255`` keeps."""
    if log_opacities is not None:
        power = torch.where(power > log_opacities[..., None], -math.inf, power)  # sigma < 0: skipped
    alpha = F.threshold(torch.exp(power.clamp(-SIGMA_MAX, LOG_ALPHA_MAX)), _below(ALPHA_MIN, power.dtype), 0.0)
    opaque = 1 - alpha
    trans = torch.cumprod(torch.cat([probe[:, None], opaque], 1), 1)  # [T, C+1, P]
    weights = alpha / opaque * F.threshold(trans[:, 1:], TRANSMITTANCE_MIN, 0.0)
    return values.transpose(1, 2) @ weights, trans[:, -1]


@torch.no_grad()
def _composite_chunk_inplace(
    power: Tensor,  # [T, C, P], overwritten
    log_opacities: Tensor | None,  # [T, C]
    values: Tensor,  # [T, C, K]
    probe: Tensor,  # [T, P]
    trans: Tensor,  # [T, C+1, P] workspace
) -> tuple[Tensor, Tensor]:
    """:func:`_composite_chunk` for inference, in place."""
    if log_opacities is not None:
        power.masked_fill_(power > log_opacities[..., None], -math.inf)
    alpha = F.threshold_(power.clamp_(-SIGMA_MAX, LOG_ALPHA_MAX).exp_(), _below(ALPHA_MIN, power.dtype), 0.0)
    opaque = torch.sub(1, alpha, out=trans[:, 1:])
    odds = alpha.div_(opaque)
    trans[:, 0] = probe
    steps = trans.unbind(1)
    for front, behind in zip(steps[:-1], steps[1:]):
        behind.mul_(front)
    weights = odds.mul_(F.threshold_(trans[:, 1:], TRANSMITTANCE_MIN, 0.0))
    return values.transpose(1, 2) @ weights, trans[:, -1]


@functools.cache
def _below(x: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` number below ``x``."""
    return torch.nextafter(torch.tensor(x, dtype=dtype), torch.tensor(-math.inf, dtype=dtype)).item()


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
    """Rasterize per-Gaussian features ``[B,N,D]`` (composited over black) with the reference maths.

    All tiles are composited together, ``CHUNK`` Gaussians of each at a time; a tile leaves once its Gaussians
    are used up or all its pixels have stopped. Without gradients the chunks are composited in place."""
    bsz, num, dim = features.shape
    means2d, conics, depths, radii = project(means, quats, scales, opacities, viewmats, Ks, width, height, near, far)
    exposed, means2d = expose_means2d(means2d, batched)
    tiles_x, tiles_y = math.ceil(width / TILE), math.ceil(height / TILE)
    num_tiles = bsz * tiles_x * tiles_y
    dtype, device = features.dtype, features.device
    pixels = TILE * TILE

    # per Gaussian: mean x, y, conic a, b, c, ln opacity, then the composited values (features, depth, 1 for alpha)
    ones = torch.ones(bsz, num, 1, dtype=dtype, device=device)
    log_opacities = torch.log(opacities.clamp_min(ALPHA_MIN))[..., None]  # culled below ALPHA_MIN
    gaussians = torch.cat([means2d, conics, log_opacities, features, depths[..., None].to(dtype), ones], -1)
    gaussians = gaussians.reshape(bsz * num, -1)
    differentiable = torch.is_grad_enabled() and gaussians.requires_grad
    with torch.no_grad():
        # visible Gaussians of each frame front to back (a stable sort: ties keep index order)
        visible_mask = (radii > 0).any(-1)
        order = torch.sort(torch.where(visible_mask, depths, math.inf), dim=1, stable=True).indices
        order = (order + torch.arange(bsz, device=device)[:, None] * num).reshape(-1)
        visible = order[visible_mask.reshape(-1).index_select(0, order)]
        shapes = gaussians[:, :6].index_select(0, visible)
        tile, position = _tile_pairs(shapes, visible // num, width, height)
        # sigma can come out negative only by rounding, and only for a conic far from round
        a, b, c = shapes[:, 2], shapes[:, 3], shapes[:, 4]
        sign_check = bool(((a + c) ** 2 > 1e5 * (a * c - b * b)).any())
        # each tile's pairs in blocks of CHUNK (the last one padded: ln o = -inf draws nothing)
        bounds = torch.searchsorted(tile, torch.arange(num_tiles + 1, device=device))
        counts = bounds[1:] - bounds[:-1]
        blocks = (counts + CHUNK - 1) // CHUNK
        first_block = torch.cumsum(blocks, 0) - blocks
        place = torch.arange(len(tile), device=device) - bounds[:-1].index_select(0, tile)
        block, slot = first_block.index_select(0, tile) + place // CHUNK, place % CHUNK
        table = torch.zeros(int(blocks.sum()), CHUNK, gaussians.shape[1], dtype=dtype, device=device)
        table[..., 5] = -math.inf
        local = torch.arange(TILE, dtype=dtype, device=device) + 0.5
    table = table.index_put((block, slot), gaussians.index_select(0, visible.index_select(0, position)))

    out = torch.zeros(num_tiles, dim + 2, pixels, dtype=dtype, device=device)
    active = torch.nonzero(counts > 0).squeeze(1)
    probe = torch.ones(len(active), pixels, dtype=dtype, device=device)
    group = max(1, GROUP_ELEMENTS // (CHUNK * pixels))
    if not differentiable:
        power_buffer = torch.empty(group, CHUNK, TILE, TILE, dtype=dtype, device=device)
        trans_buffer = torch.empty(group, CHUNK + 1, pixels, dtype=dtype, device=device)
    done = 0
    while len(active) > 0:
        with torch.no_grad():
            in_frame = active % (tiles_x * tiles_y)
            px = ((in_frame % tiles_x) * TILE).to(dtype)[:, None, None] + local
            py = ((in_frame // tiles_x) * TILE).to(dtype)[:, None, None] + local
        chunk = table.index_select(0, first_block.index_select(0, active) + done // CHUNK)  # [T,C,6+K]
        behind = []
        for lo in range(0, len(active), group):
            part = slice(lo, lo + group)
            tiles, gs = active[part], chunk[part]
            check = gs[..., 5] if sign_check else None
            if differentiable:
                power = _log_alpha(px[part], py[part], gs)
                weighted, probe_part = _composite_chunk(power, check, gs[..., 6:], probe[part])
                out = out.index_add(0, tiles, weighted)
            else:
                power = _log_alpha(px[part], py[part], gs, out=power_buffer[: len(tiles)])
                weighted, probe_part = _composite_chunk_inplace(
                    power, check, gs[..., 6:], probe[part], trans_buffer[: len(tiles)]
                )
                out.index_add_(0, tiles, weighted)
                probe_part = probe_part.clone()  # the buffers serve the next group
            behind.append(probe_part)
        probe = torch.cat(behind)
        done += CHUNK
        with torch.no_grad():
            keep = torch.nonzero((counts.index_select(0, active) > done) & (probe > TRANSMITTANCE_MIN).any(1))
        active, probe = active.index_select(0, keep.squeeze(1)), probe.index_select(0, keep.squeeze(1))

    image = out.reshape(bsz, tiles_y, tiles_x, dim + 2, TILE, TILE).permute(0, 3, 1, 4, 2, 5)
    image = image.reshape(bsz, dim + 2, tiles_y * TILE, tiles_x * TILE)[..., :height, :width]
    alpha = image[:, dim + 1 :]
    depth = image[:, dim : dim + 1] / alpha.clamp_min(1e-10)
    return RasterResult(image[:, :dim], alpha, depth, exposed, radii)
