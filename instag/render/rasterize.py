"""The one rasterization entry point, over two backends (gsplat on CUDA, pure PyTorch elsewhere).

Both backends composite the same per-Gaussian channels front to back: view-dependent RGB (SH
evaluated here), the camera-space shortest-axis normal, and any extra channels. Expected depth is
gsplat's "ED" (alpha-normalised depth of the Gaussian centres). Background colour, normal
normalisation and the per-Gaussian bookkeeping are shared, so the backends differ only in the kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from instag.render import reference
from instag.render.camera import Camera, stack_cameras
from instag.render.sh import eval_sh

BACKENDS = ("auto", "gsplat", "torch")


@dataclass
class RenderOutput:
    """Rasterizer outputs; images are ``[C,H,W]`` (``[B,C,H,W]`` from :func:`rasterize_batch`)."""

    color: Tensor  # [3,H,W] composited over the background
    alpha: Tensor  # [1,H,W]
    depth: Tensor  # [1,H,W] alpha-normalised expected camera z, 0 where alpha is 0
    normal: Tensor | None  # [3,H,W] camera-space unit normals (0 where alpha is 0); None when not computed
    extras: Tensor | None  # [E,H,W] composited extra channels
    means2d: Tensor  # [N,2] pixel-space projected means; ``.grad`` after backward is the densification signal
    radii: Tensor  # [N] int32 screen radius in pixels, 0 = culled
    visible: Tensor  # [N] bool
    gaussian_rgb: Tensor | None = None  # [N,3] per-Gaussian view-dependent colour used for this view


def composite(color: Tensor, alpha: Tensor, background: Tensor) -> Tensor:
    """Render-over-black ``color`` [3,H,W] with ``alpha`` [1,H,W] placed over ``background`` [3,H,W]."""
    return color + (1.0 - alpha) * background


def _backend_module(backend: str, device: torch.device, dtype: torch.dtype):
    if backend not in BACKENDS:
        raise ValueError(f"unknown rasterizer backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":  # gsplat's kernels are float32-only; float64 (gradient checks) uses the reference
        backend = "gsplat" if device.type == "cuda" and dtype == torch.float32 else "torch"
    if backend == "gsplat":
        if device.type != "cuda":
            raise ValueError("the gsplat backend needs CUDA tensors; use backend='torch' on the CPU")
        from instag.render import gsplat_backend

        return gsplat_backend
    return reference


def camera_space_normals(
    quats: Tensor,  # [B,N,4] normalised
    scales: Tensor,  # [B,N,3]
    means: Tensor,  # [B,N,3]
    viewmats: Tensor,  # [B,4,4]
) -> Tensor:
    """Shortest-axis normals rotated to camera space and flipped to face the camera -> ``[B,N,3]``.

    Products are written elementwise (no matmul) so that TF32 settings cannot blur them."""
    rot = reference.quat_to_rotmat(quats)  # columns are the local axes in world space
    axis = scales.argmin(-1)[..., None, None].expand(*rot.shape[:-2], 3, 1)
    normal_world = rot.gather(-1, axis)  # [B,N,3,1]
    rot_w2c = viewmats[:, None, :3, :3]
    normal = (rot_w2c * normal_world.transpose(-1, -2)).sum(-1)
    with torch.no_grad():
        centre = (rot_w2c * means[..., None, :]).sum(-1) + viewmats[:, None, :3, 3]
        away = (normal * centre).sum(-1, keepdim=True) > 0
    return torch.where(away, -normal, normal)


def _per_frame(x: Tensor | None, bsz: int, item_dims: int) -> Tensor | None:
    """Broadcast a per-Gaussian tensor shared by all frames (``item_dims`` dims) to ``[B, ...]``."""
    if x is None:
        return None
    if x.dim() == item_dims:
        return x.expand(bsz, *x.shape)
    if x.dim() != item_dims + 1 or x.shape[0] != bsz:
        raise ValueError(
            f"expected a tensor with {item_dims} dims, or {item_dims + 1} with a leading {bsz}; got {tuple(x.shape)}"
        )
    return x


def _render(
    means: Tensor,  # [B,N,3]
    quats: Tensor,  # [B,N,4]
    scales: Tensor,  # [B,N,3]
    opacities: Tensor,  # [B,N]
    colors: Tensor,  # [B,N,3] or [B,N,K,3]
    cameras: list[Camera],
    sh_degree: int | None,
    background: Tensor | None,  # [3] or [B,3]
    extras: Tensor | None,  # [B,N,E]
    backend: str,
    compute_normals: bool,
    batched: bool,
) -> RenderOutput:
    module = _backend_module(backend, means.device, means.dtype)
    viewmats, Ks = stack_cameras(cameras, means.device, means.dtype)
    quats = F.normalize(quats, dim=-1)
    if sh_degree is not None:
        campos = -(viewmats[:, :3, :3] * viewmats[:, :3, 3:]).sum(1)  # [B,3] = -R^T t
        dirs = means - campos[:, None]
        sh_fn = getattr(module, "spherical_harmonics", eval_sh)
        rgb = sh_fn(sh_degree, dirs, colors)
    else:
        rgb = colors
    channels = [rgb]
    if compute_normals:
        channels.append(camera_space_normals(quats, scales, means, viewmats))
    if extras is not None:
        channels.append(extras.to(rgb.dtype))
    feats = torch.cat(channels, -1) if len(channels) > 1 else rgb
    cam = cameras[0]
    res = module.rasterize_features(
        means, quats, scales, opacities, feats, viewmats, Ks, cam.width, cam.height, cam.near, cam.far, batched
    )
    color = res.features[:, :3]
    if background is not None:
        bg = background.to(color.dtype).reshape(-1, 3, 1, 1)
        color = color + (1.0 - res.alpha) * bg
    normal = None
    if compute_normals:
        normal = res.features[:, 3:6]
        normal = normal / normal.norm(dim=1, keepdim=True).clamp_min(1e-12)
    extra_img = res.features[:, 6 if compute_normals else 3 :] if extras is not None else None
    radii = res.radii.max(-1).values
    if not batched:
        return RenderOutput(
            color[0],
            res.alpha[0],
            res.depth[0],
            None if normal is None else normal[0],
            None if extra_img is None else extra_img[0],
            res.means2d,
            radii[0],
            radii[0] > 0,
            rgb[0],
        )
    return RenderOutput(color, res.alpha, res.depth, normal, extra_img, res.means2d, radii, radii > 0, rgb)


def rasterize(
    means: Tensor,  # [N,3]
    quats: Tensor,  # [N,4] (w,x,y,z), normalised here
    scales: Tensor,  # [N,3] activated
    opacities: Tensor,  # [N] activated
    colors: Tensor,  # [N,3] RGB or [N,K,3] SH coefficients
    camera: Camera,
    *,
    sh_degree: int | None = None,
    background: Tensor | None = None,  # [3]; None = black
    extras: Tensor | None = None,  # [N,E]
    backend: str = "auto",
    compute_normals: bool = True,
) -> RenderOutput:
    """Rasterize 3D Gaussians seen by ``camera``.

    ``colors`` of shape ``[N,K,3]`` are SH coefficients, evaluated at degree ``sh_degree``
    (default: the highest ``K`` allows) along the direction from the camera centre to each mean.
    ``backend``: ``"auto"`` (gsplat for CUDA float32 tensors, the PyTorch reference otherwise), ``"gsplat"``
    or ``"torch"``. Pass ``compute_normals=False`` to skip the normal channels (then ``normal`` is None).
    """
    if colors.dim() == 3 and sh_degree is None:
        sh_degree = round(colors.shape[1] ** 0.5) - 1
    return _render(
        means[None],
        quats[None],
        scales[None],
        opacities.reshape(1, -1),
        colors[None],
        [camera],
        sh_degree,
        background,
        None if extras is None else extras[None],
        backend,
        compute_normals,
        batched=False,
    )


def rasterize_batch(
    means: Tensor,  # [B,N,3] or [N,3] shared
    quats: Tensor,  # [B,N,4] or [N,4]
    scales: Tensor,  # [B,N,3] or [N,3]
    opacities: Tensor,  # [B,N] or [N]
    colors: Tensor,  # [B,N,3] / [N,3] RGB, or [B,N,K,3] / [N,K,3] SH (with sh_degree)
    cameras: list[Camera],
    *,
    sh_degree: int | None = None,
    background: Tensor | None = None,  # [3] or [B,3]; None = black
    extras: Tensor | None = None,  # [B,N,E] or [N,E]
    backend: str = "auto",
    compute_normals: bool = True,
) -> RenderOutput:
    """Rasterize ``B = len(cameras)`` frames at once (one gsplat launch per stage); every output gains a
    leading ``B`` (``means2d [B,N,2]``, ``radii [B,N]``). Tensors without the leading ``B`` are shared
    by all frames. SH coefficients need an explicit ``sh_degree``."""
    bsz = len(cameras)
    return _render(
        _per_frame(means, bsz, 2),
        _per_frame(quats, bsz, 2),
        _per_frame(scales, bsz, 2),
        _per_frame(opacities, bsz, 1),
        _per_frame(colors, bsz, 2 if sh_degree is None else 3),
        cameras,
        sh_degree,
        background,
        _per_frame(extras, bsz, 2),
        backend,
        compute_normals,
        batched=True,
    )
