"""The pure-PyTorch rasterizer against closed forms, finite differences and gsplat's SH convention."""

from __future__ import annotations

import math

import pytest
import torch

from instag.render import Camera, composite, rasterize, rasterize_batch, reference
from instag.render.camera import stack_cameras
from instag.render.reference import EPS2D
from instag.render.sh import SH_C0, eval_sh, rgb_to_sh

F64 = torch.float64


def _axis_camera(width=40, height=32, focal=50.0, dtype=F64) -> Camera:
    """Camera at the origin looking down +z (OpenCV axes), principal point at the image centre."""
    return Camera(torch.eye(4, dtype=dtype), focal, focal, width / 2, height / 2, width, height)


def _pixel_grid(cam: Camera):
    ys, xs = torch.meshgrid(
        torch.arange(cam.height, dtype=F64) + 0.5, torch.arange(cam.width, dtype=F64) + 0.5, indexing="ij"
    )
    return xs, ys


def _one(values, dtype=F64):
    return torch.tensor([values], dtype=dtype)


def test_single_gaussian_matches_closed_form():
    cam = _axis_camera()
    z, sx, sy, sz, opacity = 2.0, 0.12, 0.07, 0.01, 0.8
    rgb = torch.tensor([0.9, 0.4, 0.1], dtype=F64)
    bg = torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    out = rasterize(
        _one([0.0, 0.0, z]), _one([1.0, 0.0, 0.0, 0.0]), _one([sx, sy, sz]), torch.tensor([opacity], dtype=F64),
        rgb[None], cam, background=bg, backend="torch",
    )  # fmt: skip
    xs, ys = _pixel_grid(cam)
    var_x = (cam.fx * sx / z) ** 2 + EPS2D
    var_y = (cam.fy * sy / z) ** 2 + EPS2D
    dx, dy = xs - cam.cx, ys - cam.cy
    alpha = (opacity * torch.exp(-0.5 * (dx**2 / var_x + dy**2 / var_y))).clamp(max=0.999)
    alpha = torch.where(alpha >= 1 / 255, alpha, torch.zeros_like(alpha))

    assert torch.allclose(out.alpha[0], alpha, atol=1e-12)
    assert torch.allclose(out.color, rgb[:, None, None] * alpha + (1 - alpha) * bg[:, None, None], atol=1e-12)
    covered = alpha > 0
    assert torch.allclose(out.depth[0][covered], torch.full_like(alpha, z)[covered])
    assert (out.depth[0][~covered] == 0).all()
    # shortest axis is world z; the camera looks down +z, so the normal faces back: (0, 0, -1)
    assert torch.allclose(
        out.normal[:, covered], torch.tensor([0.0, 0.0, -1.0], dtype=F64)[:, None].expand(3, int(covered.sum()))
    )
    assert (out.normal[:, ~covered] == 0).all()
    extend = min(3.33, math.sqrt(2 * math.log(255 * opacity)))
    assert out.visible.tolist() == [True]
    assert out.radii.tolist() == [max(math.ceil(extend * math.sqrt(var_x)), math.ceil(extend * math.sqrt(var_y)))]
    assert torch.allclose(out.means2d.detach(), torch.tensor([[cam.cx, cam.cy]], dtype=F64))


def test_opacity_aware_radius_and_culling():
    cam = _axis_camera()
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, -1.0], [5.0, 0.0, 2.0], [0.0, 0.0, 2.0]], dtype=F64)
    quats = torch.tensor([[1.0, 0, 0, 0]], dtype=F64).repeat(4, 1)
    scales = torch.full((4, 3), 0.05, dtype=F64)
    opacities = torch.tensor([0.9, 0.9, 0.9, 0.002], dtype=F64)  # in view, behind, off-screen, too faint
    out = rasterize(means, quats, scales, opacities, torch.ones(4, 3, dtype=F64), cam, backend="torch")
    assert out.visible.tolist() == [True, False, False, False]
    sigma = math.sqrt((cam.fx * 0.05 / 2.0) ** 2 + EPS2D)
    assert out.radii[0] == math.ceil(min(3.33, math.sqrt(2 * math.log(0.9 * 255))) * sigma)


def test_occlusion_order_follows_depth():
    cam = _axis_camera()
    red, blue = [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 3.0]], dtype=F64)
    quats = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]], dtype=F64)
    scales = torch.tensor([[0.05, 0.05, 0.05], [0.08, 0.08, 0.08]], dtype=F64)
    opac = torch.tensor([0.7, 0.9], dtype=F64)
    colors = torch.tensor([red, blue], dtype=F64)
    out = rasterize(means, quats, scales, opac, colors, cam, backend="torch")
    swapped = rasterize(means.flip(0), quats, scales.flip(0), opac.flip(0), colors.flip(0), cam, backend="torch")
    assert torch.allclose(out.color, swapped.color) and torch.allclose(out.depth, swapped.depth)

    i, j = int(cam.cy), int(cam.cx)  # pixel centre is 0.5 px from the means

    def peak(scale, z, o):
        var = (cam.fx * scale / z) ** 2 + EPS2D
        return o * math.exp(-0.5 * (0.25 / var + 0.25 / var))

    a_front, a_back = peak(0.05, 2.0, 0.7), peak(0.08, 3.0, 0.9)
    expected_color = torch.tensor(red, dtype=F64) * a_front + torch.tensor(blue, dtype=F64) * a_back * (1 - a_front)
    alpha = 1 - (1 - a_front) * (1 - a_back)
    assert torch.allclose(out.color[:, i, j], expected_color, atol=1e-12)
    assert out.alpha[0, i, j].item() == pytest.approx(alpha, abs=1e-12)
    expected_depth = (2.0 * a_front + 3.0 * a_back * (1 - a_front)) / alpha
    assert out.depth[0, i, j].item() == pytest.approx(expected_depth, abs=1e-12)
    assert out.color[0, i, j] > out.color[2, i, j]  # red in front dominates


def test_transmittance_cutoff_stops_pixel():
    cam = _axis_camera(16, 16)
    n = 5
    means = torch.tensor([[0.0, 0.0, 2.0 + 0.1 * k] for k in range(n)], dtype=F64)
    quats = torch.tensor([[1.0, 0, 0, 0]], dtype=F64).repeat(n, 1)
    scales = torch.full((n, 3), 0.5, dtype=F64)  # wide: alpha ~ opacity at the centre
    colors = torch.eye(3, dtype=F64).repeat(2, 1)[:n]
    out = rasterize(means, quats, scales, torch.full((n,), 0.99, dtype=F64), colors, cam, backend="torch")
    # T after k Gaussians ~ 0.01^k; the third would bring T below 1e-4, so it and all behind it are skipped
    centre = out.color[:, 8, 8]
    assert centre[2].item() == pytest.approx(0.0, abs=1e-12)
    assert out.alpha[0, 8, 8].item() == pytest.approx(1 - (1 - 0.99 * math.exp(-1e-4)) ** 2, abs=1e-4)


def _small_scene(dtype=F64, n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=gen, dtype=dtype) - 0.5) * 0.12
    quats = torch.randn(n, 4, generator=gen, dtype=dtype)
    scales = 0.01 + 0.02 * torch.rand(n, 3, generator=gen, dtype=dtype)
    opac = 0.3 + 0.5 * torch.rand(n, generator=gen, dtype=dtype)
    colors = torch.rand(n, 3, generator=gen, dtype=dtype)
    cam = Camera.look_at((0.15, 0.1, 0.7), (0.0, 0.0, 0.0), focal=60.0, width=24, height=20).to(dtype=dtype)
    return (means, quats, scales, opac, colors), cam


def test_gradients_match_finite_differences():
    params, cam = _small_scene()
    params = tuple(p.requires_grad_(True) for p in params)
    gen = torch.Generator().manual_seed(1)
    w_color = torch.rand(3, cam.height, cam.width, generator=gen, dtype=F64)
    w_depth = torch.rand(1, cam.height, cam.width, generator=gen, dtype=F64)
    w_normal = torch.rand(3, cam.height, cam.width, generator=gen, dtype=F64)
    with torch.no_grad():
        mask = rasterize(*params, cam, backend="torch").alpha > 0.05

    def loss(means, quats, scales, opac, colors):
        out = rasterize(means, quats, scales, opac, colors, cam, backend="torch")
        value = (w_color * out.color).sum() + out.alpha.sum()
        return value + (w_depth * out.depth * mask).sum() + (w_normal * out.normal * mask).sum()

    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_means2d_grad_is_screen_space_gradient():
    (means, quats, scales, opac, colors), cam = _small_scene()
    means = means.requires_grad_(True)
    out = rasterize(means, quats, scales, opac, colors, cam, backend="torch")
    out.color.sum().backward()
    assert out.means2d.shape == (4, 2) and out.means2d.grad is not None
    assert out.means2d.grad[out.visible].abs().sum() > 0
    # a screen-space shift of the means moves the image: chain rule through the projection
    delta = torch.zeros_like(means)
    delta[:, 0] = 1e-6
    with torch.no_grad():
        shifted = rasterize(means + delta, quats, scales, opac, colors, cam, backend="torch")
    fd = (shifted.color.sum() - out.color.sum()) / 1e-6
    assert fd.item() == pytest.approx(means.grad[:, 0].sum().item(), rel=1e-3, abs=1e-6)


def test_sh_matches_gsplat_convention():
    torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    gen = torch.Generator().manual_seed(0)
    dirs = torch.randn(50, 3, generator=gen, dtype=F64)
    coeffs = torch.randn(50, 16, 3, generator=gen, dtype=F64)
    for degree in range(4):
        expected = (torch_impl._spherical_harmonics(degree, dirs, coeffs) + 0.5).clamp_min(0)
        assert torch.allclose(eval_sh(degree, dirs, coeffs), expected, atol=1e-12), degree


def test_sh_colours_render_like_rgb():
    params, cam = _small_scene()
    means, quats, scales, opac, colors = params
    sh = torch.zeros(4, 9, 3, dtype=F64)
    sh[:, 0] = rgb_to_sh(colors)
    assert torch.allclose(sh[:, 0] * SH_C0 + 0.5, colors)
    rgb = rasterize(*params, cam, backend="torch")
    via_sh = rasterize(means, quats, scales, opac, sh, cam, sh_degree=2, backend="torch")
    assert torch.allclose(rgb.color, via_sh.color, atol=1e-12)
    # view dependence: a degree-1 term changes the colour with the view direction
    sh[:, 3, :] = 0.5
    tinted = rasterize(means, quats, scales, opac, sh, cam, sh_degree=1, backend="torch")
    assert not torch.allclose(tinted.color, rgb.color)


def test_batch_and_extras_match_single_frames():
    params, cam = _small_scene(torch.float32, n=30)
    cams = [cam, Camera.look_at((-0.2, 0.0, 0.6), (0.0, 0.0, 0.0), focal=60.0, width=24, height=20)]
    extras = torch.rand(30, 2)
    batch = rasterize_batch(*params, cams, extras=extras, background=torch.tensor([0.0, 1.0, 0.0]), backend="torch")
    assert batch.color.shape == (2, 3, 20, 24) and batch.means2d.shape == (2, 30, 2) and batch.radii.shape == (2, 30)
    for i, c in enumerate(cams):
        single = rasterize(*params, c, extras=extras, background=torch.tensor([0.0, 1.0, 0.0]), backend="torch")
        for name in ("color", "alpha", "depth", "normal", "extras"):
            assert torch.allclose(getattr(batch, name)[i], getattr(single, name), atol=1e-6), name
    # extras composite like colours: a constant channel renders as alpha
    ones = rasterize(*params, cam, extras=torch.ones(30, 1), backend="torch")
    assert torch.allclose(ones.extras, ones.alpha, atol=1e-6)


def test_composite_and_options():
    params, cam = _small_scene(torch.float32, n=10)
    out = rasterize(*params, cam, backend="torch", compute_normals=False)
    assert out.normal is None and out.extras is None
    bg = torch.rand(3, cam.height, cam.width)
    assert torch.allclose(composite(out.color, out.alpha, bg), out.color + (1 - out.alpha) * bg)
    with pytest.raises(ValueError):
        rasterize(*params, cam, backend="vulkan")
    with pytest.raises(ValueError):
        rasterize(*params, cam, backend="gsplat")  # CPU tensors


def _dense_rasterize(means, quats, scales, opacities, features, viewmats, Ks, width, height):
    """Every pixel against every visible Gaussian, front to back (no tiles, no chunks): the tiled rasterizer's
    reference -> features ``[B,D,H,W]``, alpha, depth ``[B,1,H,W]``."""
    means2d, conics, depths, radii = reference.project(
        means, quats, scales, opacities, viewmats, Ks, width, height, 0.01, 100.0
    )
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=means.dtype) + 0.5, torch.arange(width, dtype=means.dtype) + 0.5, indexing="ij"
    )
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)
    images, alphas = [], []
    for b in range(means.shape[0]):
        ids = torch.nonzero((radii[b] > 0).any(-1)).squeeze(1)
        ids = ids[torch.sort(depths[b, ids], stable=True).indices]
        d = means2d[b, ids][:, None] - pix[None]  # [n,P,2]
        con = conics[b, ids]
        sigma = 0.5 * (con[:, None, 0] * d[..., 0] ** 2 + con[:, None, 2] * d[..., 1] ** 2)
        sigma = sigma + con[:, None, 1] * d[..., 0] * d[..., 1]
        alpha = torch.clamp(opacities[b, ids, None] * torch.exp(-sigma), max=reference.ALPHA_MAX)
        alpha = torch.where((sigma >= 0) & (alpha >= reference.ALPHA_MIN), alpha, 0.0)
        with torch.no_grad():
            alive = torch.cumprod(1 - alpha, 0) > reference.TRANSMITTANCE_MIN
        alpha = torch.where(alive, alpha, 0.0)
        trans = torch.cumprod(1 - alpha, 0)
        weights = alpha * torch.cat([torch.ones_like(trans[:1]), trans[:-1]])
        values = torch.cat([features[b, ids], depths[b, ids, None]], -1)
        images.append((weights.T @ values).T.reshape(-1, height, width))
        alphas.append((1 - trans[-1]).reshape(1, height, width))
    image, alpha = torch.stack(images), torch.stack(alphas)
    return image[:, :-1], alpha, image[:, -1:] / alpha.clamp_min(1e-10)


def _crowded_scene(n=160, seed=3, needle=True):
    """Two frames of 36x44 (partial tiles at both edges): a random cloud, a stack of near-opaque Gaussians that
    stops pixels part-way through a chunk of a crowded tile, and a needle (a conic far enough from round that
    the rasterizer checks the sign of sigma)."""
    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=gen, dtype=F64) - 0.5) * torch.tensor([0.2, 0.15, 0.1], dtype=F64)
    means[:60, :2] = 0.02 * torch.randn(60, 2, generator=gen, dtype=F64) - 0.05  # crowded tile, > CHUNK deep
    quats = torch.randn(n, 4, generator=gen, dtype=F64)
    quats = quats / quats.norm(dim=-1, keepdim=True)
    scales = 0.004 + 0.03 * torch.rand(n, 3, generator=gen, dtype=F64)
    if needle:
        scales[0] = torch.tensor([3.0, 1e-4, 1e-4], dtype=F64)
    opac = 0.05 + 0.9 * torch.rand(n, generator=gen, dtype=F64)
    opac[:60] = 0.97
    feats = torch.rand(n, 4, generator=gen, dtype=F64)
    cams = [
        Camera.look_at((0.05, 0.02, 0.7), (0.0, 0.0, 0.0), focal=90.0, width=44, height=36).to(dtype=F64),
        Camera.look_at((-0.2, 0.1, 0.6), (0.0, 0.0, 0.0), focal=80.0, width=44, height=36).to(dtype=F64),
    ]
    viewmats, Ks = stack_cameras(cams, "cpu", F64)
    params = [t[None].expand(2, *t.shape).clone() for t in (means, quats, scales, opac, feats)]
    return params, viewmats, Ks


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("needle", [False, True])
@pytest.mark.parametrize("small_steps", [False, True])
def test_tiled_matches_dense(grad, needle, small_steps, monkeypatch):
    if small_steps:  # many chunks per tile and one or two tiles per call
        monkeypatch.setattr(reference, "CHUNK", 7)
        monkeypatch.setattr(reference, "GROUP_ELEMENTS", 2 * 7 * reference.TILE**2)
    params, viewmats, Ks = _crowded_scene(needle=needle)
    with torch.set_grad_enabled(grad):
        if grad:  # the differentiable path (autograd), else the in-place one
            params = [p.requires_grad_(True) for p in params]
        tiled = reference.rasterize_features(*params, viewmats, Ks, 44, 36)
        image, alpha, depth = _dense_rasterize(*params, viewmats, Ks, 44, 36)
    assert alpha.max() > 0.9998 and (alpha == 0).any()  # pixels stopped at T ~ 1e-4, and empty ones
    assert torch.allclose(tiled.features, image, atol=1e-10)
    assert torch.allclose(tiled.alpha, alpha, atol=1e-10)
    assert torch.allclose(tiled.depth, depth, atol=1e-9)


def test_tiled_gradients_match_dense():
    params, viewmats, Ks = _crowded_scene(n=80, seed=4)
    params = [p.requires_grad_(True) for p in params]
    gen = torch.Generator().manual_seed(5)
    w_image, w_alpha, w_depth = (torch.rand(2, c, 36, 44, generator=gen, dtype=F64) for c in (4, 1, 1))
    with torch.no_grad():
        w_depth *= _dense_rasterize(*params, viewmats, Ks, 44, 36)[1] > 0.05

    def grads(fn):
        image, alpha, depth = fn()
        loss = (w_image * image).sum() + (w_alpha * alpha).sum() + (w_depth * depth).sum()
        return torch.autograd.grad(loss, params)

    def tiled():
        out = reference.rasterize_features(*params, viewmats, Ks, 44, 36)
        return out.features, out.alpha, out.depth

    for name, a, b in zip(("means", "quats", "scales", "opacities", "features"), grads(tiled),
                          grads(lambda: _dense_rasterize(*params, viewmats, Ks, 44, 36))):  # fmt: skip
        assert b.abs().max() > 0, name
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10), name


def test_tile_pairs_cover_exactly_the_tiles_reached():
    """A (tile, Gaussian) pair is listed iff alpha reaches 1/255 in the tile: none missing, and an extra only
    where the threshold is met between pixel centres (found by 8x supersampling)."""
    params, viewmats, Ks = _crowded_scene()
    means, quats, scales, opac, _ = (p[:1] for p in params)
    width, height, tile = 44, 36, reference.TILE
    means2d, conics, _, radii = reference.project(
        means, quats, scales, opac, viewmats[:1], Ks[:1], width, height, 0.01, 100.0
    )
    visible = torch.nonzero((radii[0] > 0).any(-1)).squeeze(1)
    shapes = torch.cat([means2d[0], conics[0], opac[0, :, None].log()], -1)[visible]
    tiles, position = reference._tile_pairs(shapes, torch.zeros_like(visible), width, height)
    listed = set(zip(tiles.tolist(), position.tolist()))
    tiles_x = math.ceil(width / tile)

    def reach(step):  # [M, tiles] largest alpha over each tile's rectangle of pixel centres, every ``step`` px
        ys, xs = torch.meshgrid(torch.arange(0.5, height - 0.5 + 1e-9, step, dtype=F64),
                                torch.arange(0.5, width - 0.5 + 1e-9, step, dtype=F64), indexing="ij")  # fmt: skip
        ys, xs = ys.reshape(-1), xs.reshape(-1)
        inside = (ys % tile >= 0.5) & (ys % tile <= tile - 0.5) & (xs % tile >= 0.5) & (xs % tile <= tile - 0.5)
        ys, xs = ys[inside], xs[inside]
        d = shapes[:, None, :2] - torch.stack([xs, ys], -1)
        sigma = 0.5 * (shapes[:, None, 2] * d[..., 0] ** 2 + shapes[:, None, 4] * d[..., 1] ** 2)
        sigma = sigma + shapes[:, None, 3] * d[..., 0] * d[..., 1]
        alpha = opac[0, visible, None] * torch.exp(-sigma)
        which = (ys // tile).long() * tiles_x + (xs // tile).long()
        return torch.zeros(len(visible), tiles_x * math.ceil(height / tile), dtype=F64).scatter_reduce(
            1, which.expand_as(alpha), alpha, "amax"
        )

    needed = {(t, m) for m, t in torch.nonzero(reach(1.0) >= reference.ALPHA_MIN).tolist()}
    assert needed and needed <= listed
    fine = reach(1 / 8)
    assert all(fine[m, t] >= 0.98 * reference.ALPHA_MIN for t, m in listed - needed)
    order = tiles * len(shapes) + position  # by tile, then front to back (positions are in depth order)
    assert (order[1:] > order[:-1]).all()


def test_nothing_visible_renders_empty():
    params, viewmats, Ks = _crowded_scene(n=80)
    params[0] = params[0] + torch.tensor([0.0, 0.0, 5.0], dtype=F64)  # behind both cameras
    out = reference.rasterize_features(*params, viewmats, Ks, 44, 36)
    assert (out.radii == 0).all() and (out.alpha == 0).all() and (out.features == 0).all() and (out.depth == 0).all()
