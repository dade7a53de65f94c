"""Losses of the training engine. Every masked mean divides by max(count, 1), so empty masks give 0, never NaN.

Images are ``[C,H,W]`` floats in [0,1]; masks ``[H,W]`` or ``[1,H,W]`` bool.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from instag.metrics.image import ssim_images_map

GREEN = (0.0, 1.0, 0.0)
LIP_HUBER_PX = 4.0  # lip motion loss: quadratic below 4 px (of a 512-wide frame), linear above (landmark outliers)


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Mean SSIM of two images ``[C,H,W]`` (or ``[B,C,H,W]``) in [0,1], 11×11 Gaussian window, σ 1.5, zero padding."""
    if a.dim() == 3:
        a, b = a[None], b[None]
    return ssim_images_map(a, b, 1.0, pad=True).mean()


def photometric(render: Tensor, target: Tensor, lambda_dssim: float = 0.2) -> Tensor:
    """L1 + λ·(1 − SSIM)."""
    return (render - target).abs().mean() + lambda_dssim * (1.0 - ssim(render, target))


def patch_lpips(model, render: Tensor, target: Tensor, patch: int) -> Tensor:
    """Mean LPIPS over the non-overlapping ``patch``-sized tiles of two images ``[3,H,W]`` in [0,1] ("patch
    LPIPS"; the images are cropped, centred, to whole tiles). ``model``: an :class:`instag.metrics.lpips.LPIPS`."""
    h, w = render.shape[1:]
    p = max(1, min(int(patch), h, w))
    nh, nw = h // p, w // p
    y0, x0 = (h - nh * p) // 2, (w - nw * p) // 2

    def tiles(img: Tensor) -> Tensor:
        t = img[:, y0 : y0 + nh * p, x0 : x0 + nw * p].reshape(3, nh, p, nw, p)
        return t.permute(1, 3, 0, 2, 4).reshape(nh * nw, 3, p, p)

    return model(tiles(render), tiles(target)).mean()


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over ``mask`` (broadcast); 0 for an empty mask."""
    m = mask.to(x.dtype).expand_as(x)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def green_like(image: Tensor) -> Tensor:
    return torch.tensor(GREEN, dtype=image.dtype, device=image.device).view(3, 1, 1).expand_as(image)


def key_out(image: Tensor, keep: Tensor) -> Tensor:
    """``image`` ``[3,H,W]`` where ``keep`` ``[H,W]`` is true, green elsewhere."""
    return torch.where(keep[None], image, green_like(image))


def alpha_loss(alpha: Tensor, inside: Tensor) -> Tensor:
    """Opaque inside ``inside`` ``[H,W]``, transparent outside: mean((1−α)·in) + mean(α·¬in) over all pixels."""
    a = alpha.reshape(inside.shape)
    m = inside.to(a.dtype)
    return ((1 - a) * m).mean() + (a * (1 - m)).mean()


def motion_l1(deltas: list[Tensor]) -> Tensor:
    """Σ mean|Δ| over the given offset tensors."""
    if not deltas:
        return torch.zeros(())
    return sum(d.abs().mean() for d in deltas)


def contrast_loss(own: Tensor, others: list[Tensor]) -> Tensor:
    """Negative contrast: Σ_k mean_i max(0, ⟨d_k(x_i), d_j(x_i)⟩); own ``[B,N,3]`` (with grad), others likewise (no grad)."""
    if not others:
        return own.new_zeros(())
    return sum(F.relu((o.detach() * own).sum(-1)).mean() for o in others)


def normal_prior_loss(render_normal: Tensor, prior_normal: Tensor, mask: Tensor) -> Tensor:
    """Mean of (1 − cos) between camera-space normals ``[3,H,W]`` over ``mask`` ∩ (prior present)."""
    valid = mask & (prior_normal.abs().sum(0) > 0.5)
    cos = (F.normalize(render_normal, dim=0) * F.normalize(prior_normal, dim=0)).sum(0)
    return masked_mean(1.0 - cos, valid)


def depth_prior_loss(render_depth: Tensor, prior_depth: Tensor, mask: Tensor, alpha: Tensor | None = None) -> Tensor:
    """|D − (s·P + t)| over ``mask`` ∩ (prior present) ∩ (rendered), with (s, t) fitted in closed form to
    the detached render (the prior is relative: only its shape is trusted). Depths ``[1,H,W]`` or ``[H,W]``.
    Written without boolean indexing so it does not synchronise with the GPU; 0 for fewer than 16 pixels."""
    d = render_depth.reshape(mask.shape)
    p = torch.nan_to_num(prior_depth.reshape(mask.shape).to(d.dtype))
    valid = mask & (p != 0)
    if alpha is not None:
        valid = valid & (alpha.reshape(mask.shape) > 0.5)
    w = valid.to(torch.float64)
    n = w.sum()
    with torch.no_grad():
        pv, dv = p.double(), d.detach().double()
        pm = (pv * w).sum() / n.clamp_min(1.0)
        dm = (dv * w).sum() / n.clamp_min(1.0)
        var = (((pv - pm) ** 2) * w).sum() / n.clamp_min(1.0)
        s = (((pv - pm) * (dv - dm)) * w).sum() / n.clamp_min(1.0) / var.clamp_min(1e-12)
        fitted = (s * pv + (dm - s * pm)).to(d.dtype)
    loss = masked_mean((d - fitted).abs(), valid)
    return torch.where(n >= 16, loss, torch.zeros_like(loss))


def erode(mask: Tensor, times: int = 2) -> Tensor:
    """Erode ``[H,W]`` bool by 3×3 min-pools."""
    x = mask.to(torch.float32)[None, None]
    for _ in range(times):
        x = -F.max_pool2d(-x, 3, stride=1, padding=1)
    return x[0, 0] > 0.5


def rect_mask(rect: Tensor, height: int, width: int, device) -> Tensor:
    """[row_min, row_max, col_min, col_max] -> bool ``[H,W]``."""
    m = torch.zeros(height, width, dtype=torch.bool, device=device)
    r0, r1, c0, c1 = (int(v) for v in rect.tolist())
    m[r0:r1, c0:c1] = True
    return m


def points_in_mask(means_px: Tensor, mask: Tensor) -> Tensor:
    """Which projected points ``[N,2]`` (x, y pixels) land on true pixels of ``mask`` ``[H,W]`` -> ``[N]`` bool."""
    h, w = mask.shape
    x = means_px[:, 0].floor().long()
    y = means_px[:, 1].floor().long()
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    hit = mask.reshape(-1)[(y.clamp(0, h - 1) * w + x.clamp(0, w - 1))]
    return inside & hit


def point_attention_loss(att: Tensor | None, selected: Tensor) -> Tensor:
    """Mean per-point attention norm ``att [N]`` over the selected points (0 when none)."""
    if att is None:
        return selected.new_zeros((), dtype=torch.float32)
    return masked_mean(att, selected)


def lip_motion_loss(canonical: Tensor, moved: Tensor, camera, anchor: Tensor, flow: Tensor, radius: float, k: int = 4) -> Tensor:
    """Landmark-guided lip motion: the on-screen motion of the Gaussians near the lips follows the lip landmarks.

    canonical / moved ``[N,3]``: a cloud's canonical and deformed means (gradients flow through
    ``moved``); anchor ``[L,3]``: the tracked lip landmarks (head frame); flow ``[L,2]``: this frame's
    non-rigid lip motion in pixels (observed landmarks minus the projected anchor, clip mean
    removed). Gaussians within ``radius`` of a landmark get the inverse-distance blend of their
    ``k`` nearest landmarks' flow as target for their projected displacement. Huber (``LIP_HUBER_PX``)
    in pixels of a 512-wide frame; 0 when no Gaussian is near the lips.
    """
    with torch.no_grad():
        dist = torch.cdist(canonical.detach(), anchor)
        near, idx = dist.topk(min(k, anchor.shape[0]), dim=1, largest=False)
        sel = near[:, 0] < radius
    if not bool(sel.any()):
        return moved.sum() * 0.0
    w = 1.0 / (near[sel] + 1e-3 * radius)
    w = w / w.sum(dim=1, keepdim=True)
    target = (flow[idx[sel]] * w[..., None]).sum(dim=1)
    disp = camera.project(moved[sel]) - camera.project(canonical[sel].detach())
    scale = 512.0 / float(camera.width)
    return F.huber_loss(disp * scale, target * scale, delta=LIP_HUBER_PX)
