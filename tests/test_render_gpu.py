"""gsplat backend vs the PyTorch reference on random scenes (CUDA, fp32). Run with ``pytest -m gpu``.

Set ``INSTAG_REPORT_DIR`` to also write the measured errors to ``render_parity.json`` there.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from instag.render import Camera, rasterize, rasterize_batch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

WIDTH, HEIGHT = 136, 120  # not multiples of the 16-px tile
REPORT: dict[str, dict] = {}


def _camera(seed: int, device: str = "cuda") -> Camera:
    gen = torch.Generator().manual_seed(1000 + seed)
    yaw, pitch = ((torch.rand(2, generator=gen) - 0.5) * 0.6).tolist()
    eye = (0.7 * math.sin(yaw) * math.cos(pitch), 0.7 * math.sin(pitch), 0.7 * math.cos(yaw) * math.cos(pitch))
    cam = Camera.look_at(eye, (0.0, 0.0, 0.0), focal=380.0, width=WIDTH, height=HEIGHT)
    return cam.to(device)


def _scene(seed: int, num: int, sh_degree: int | None, num_extras: int = 0, device: str = "cuda"):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=gen)

    means = (rand(num, 3) * 2 - 1) * 0.1
    quats = torch.randn(num, 4, generator=gen)
    scales = 0.002 + 0.012 * rand(num, 3)
    opacities = 0.05 + 0.85 * rand(num)
    colors = rand(num, 3) if sh_degree is None else torch.randn(num, (sh_degree + 1) ** 2, 3, generator=gen) * 0.4
    extras = rand(num, num_extras) if num_extras else None
    tensors = [t.to(device) for t in (means, quats, scales, opacities, colors)]
    return tensors, (extras.to(device) if extras is not None else None)


def _render(backend: str, params, camera, sh_degree, extras, background):
    leaves = [p.detach().clone().requires_grad_(True) for p in params]
    out = rasterize(*leaves, camera, sh_degree=sh_degree, extras=extras, background=background, backend=backend)
    return leaves, out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm().clamp_min(1e-12))


@pytest.mark.parametrize(
    "seed,num,sh_degree,num_extras",
    [(0, 600, None, 0), (1, 1500, 2, 2), (2, 3000, 1, 0)],
)
def test_gsplat_matches_reference(seed, num, sh_degree, num_extras):
    params, extras = _scene(seed, num, sh_degree, num_extras)
    camera = _camera(seed)
    background = torch.tensor([0.0, 1.0, 0.0], device="cuda")
    ref_leaves, ref = _render("torch", params, camera, sh_degree, extras, background)
    gs_leaves, gs = _render("gsplat", params, camera, sh_degree, extras, background)

    mask = (ref.alpha > 0.05).detach()
    gen = torch.Generator(device="cuda").manual_seed(seed)
    weights = {
        k: torch.rand(getattr(ref, k).shape, generator=gen, device="cuda")
        for k in ("color", "alpha", "depth", "normal")
    }
    for out in (ref, gs):
        loss = (weights["color"] * out.color).sum() + (weights["alpha"] * out.alpha).sum()
        loss = loss + (weights["depth"] * out.depth * mask).sum() + (weights["normal"] * out.normal * mask).sum()
        if extras is not None:
            loss = loss + out.extras.sum()
        loss.backward()

    m = mask[0]
    depth_err = (gs.depth[0] - ref.depth[0]).detach().abs()[m]
    normal_err = (gs.normal - ref.normal).detach().norm(dim=0)[m]
    errors = {
        "visible": int(ref.visible.sum()),
        "masked_pixels": int(m.sum()),
        "color_rel_l2": _rel(gs.color, ref.color),
        "alpha_rel_l2": _rel(gs.alpha, ref.alpha),
        "depth_mean_abs": float(depth_err.mean()),
        "depth_max_abs": float(depth_err.max()),
        "normal_mean_abs": float(normal_err.mean()),
        "normal_max_abs": float(normal_err.max()),
        "radii_equal": bool(torch.equal(gs.radii, ref.radii)),
        "means2d_grad_rel": _rel(gs.means2d.grad, ref.means2d.grad),
    }
    for name, a, b in zip(("means", "quats", "scales", "opacities", "colors"), gs_leaves, ref_leaves):
        errors[f"grad_{name}_rel"] = _rel(a.grad, b.grad)
    if extras is not None:
        errors["extras_rel_l2"] = _rel(gs.extras, ref.extras)
    REPORT[f"seed{seed}_n{num}_sh{sh_degree}"] = errors
    report_dir = os.environ.get("INSTAG_REPORT_DIR")
    if report_dir:
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        (Path(report_dir) / "render_parity.json").write_text(json.dumps(REPORT, indent=2))
    print(json.dumps(errors))

    assert errors["visible"] > num // 3
    assert errors["color_rel_l2"] < 1e-3 and errors["alpha_rel_l2"] < 1e-3
    assert errors["depth_max_abs"] < 1e-3 and errors["normal_max_abs"] < 1e-3
    assert errors["means2d_grad_rel"] < 1e-2
    for name in ("means", "quats", "scales", "opacities", "colors"):
        assert errors[f"grad_{name}_rel"] < 1e-2, name
    if extras is not None:
        assert errors["extras_rel_l2"] < 1e-3


def test_batch_matches_single_frames():
    params, _ = _scene(5, 2000, 1)
    cameras = [_camera(s) for s in range(4)]
    batch = rasterize_batch(*params, cameras, sh_degree=1, backend="gsplat")
    assert batch.color.shape == (4, 3, HEIGHT, WIDTH) and batch.radii.shape == (4, 2000)
    for i, cam in enumerate(cameras):
        single = rasterize(*params, cam, sh_degree=1, backend="gsplat")
        assert torch.allclose(batch.color[i], single.color, atol=1e-5)
        assert torch.allclose(batch.depth[i], single.depth, atol=1e-5)
        assert torch.equal(batch.radii[i], single.radii)
