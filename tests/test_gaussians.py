"""GaussianCloud: activations, initialisation, densification and optimiser-state surgery."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from instag.model.gaussians import PARAM_NAMES, GaussianCloud, inverse_sigmoid, inverse_softplus
from instag.model.knn import knn_mean_sq_dist

LRS = {name: 1e-3 for name in PARAM_NAMES}


def _trained_cloud(num=12, seed=0):
    """A cloud with distinct rows and a non-trivial Adam state (two steps on a random loss)."""
    gen = torch.Generator().manual_seed(seed)
    cloud = GaussianCloud.random_init(num, sh_degree=1, generator=gen)
    with torch.no_grad():
        for name in PARAM_NAMES:
            getattr(cloud, name).add_(0.01 * torch.randn(getattr(cloud, name).shape, generator=gen))
    opt = torch.optim.Adam(cloud.optimizer_groups(LRS), eps=1e-15)
    for _ in range(2):
        opt.zero_grad()
        loss = sum((torch.randn(getattr(cloud, n).shape, generator=gen) * getattr(cloud, n)).sum() for n in PARAM_NAMES)
        loss.backward()
        opt.step()
    return cloud, opt


def _snapshot(cloud, opt):
    groups = {g["name"]: g["params"][0] for g in opt.param_groups}
    return {
        name: (
            getattr(cloud, name).detach().clone(),
            opt.state[groups[name]]["exp_avg"].clone(),
            opt.state[groups[name]]["exp_avg_sq"].clone(),
        )
        for name in PARAM_NAMES
    }


def _assert_aligned(cloud, opt):
    """Each group holds the cloud's current parameter and moments of the same shape."""
    groups = {g["name"]: g["params"] for g in opt.param_groups}
    for name in PARAM_NAMES:
        param = getattr(cloud, name)
        assert groups[name] == [param] or groups[name][0] is param
        state = opt.state[param]
        assert state["exp_avg"].shape == param.shape and state["exp_avg_sq"].shape == param.shape
    for stat in ("xyz_grad_accum", "denom", "max_radii2d"):
        assert getattr(cloud, stat).shape == (len(cloud),)


def test_activations_and_init():
    x = torch.tensor([1e-4, 0.01, 0.5, 3.0], dtype=torch.float64)
    assert torch.allclose(F.softplus(inverse_softplus(x)), x, rtol=1e-9)
    assert torch.allclose(
        torch.sigmoid(inverse_sigmoid(torch.tensor([0.01, 0.1, 0.9]))), torch.tensor([0.01, 0.1, 0.9])
    )
    gen = torch.Generator().manual_seed(0)
    cloud = GaussianCloud.random_init(500, box=0.1, sh_degree=2, generator=gen)
    assert cloud.xyz.abs().max() <= 0.1
    assert cloud.features_rest.shape == (500, 8, 3) and cloud.sh.shape == (500, 9, 3)
    assert torch.allclose(cloud.opacities, torch.full((500,), 0.1))
    assert torch.allclose(cloud.rotations, torch.tensor([1.0, 0, 0, 0]).expand(500, 4))
    expected = knn_mean_sq_dist(cloud.xyz.detach()).sqrt()
    assert torch.allclose(cloud.scales.detach(), expected[:, None].expand(500, 3), rtol=1e-4)
    cloud.rotation_raw.data.mul_(3.0)
    assert torch.allclose(cloud.rotations.norm(dim=-1), torch.ones(500))
    assert cloud.active_sh_degree == 0
    for _ in range(4):
        cloud.one_up_sh_degree()
    assert cloud.active_sh_degree == 2


def test_knn_matches_brute_force_in_chunks():
    gen = torch.Generator().manual_seed(1)
    pts = torch.rand(300, 3, generator=gen, dtype=torch.float64)
    pts[7] = pts[3]  # a duplicate: distance 0 to one neighbour, clamped overall at 1e-7
    d2 = torch.cdist(pts, pts).square()
    d2.fill_diagonal_(float("inf"))
    expected = d2.topk(3, largest=False).values.mean(1).clamp_min(1e-7)
    got = knn_mean_sq_dist(pts, k=3, chunk_elements=1000)  # 3-row chunks
    assert torch.allclose(got, expected)
    assert knn_mean_sq_dist(pts[:1]).tolist() == [1e-7]


def test_optimizer_groups_need_every_lr():
    cloud = GaussianCloud.random_init(5, generator=torch.Generator().manual_seed(0))
    groups = cloud.optimizer_groups(LRS)
    assert [g["name"] for g in groups] == list(PARAM_NAMES)
    with pytest.raises(ValueError, match="opacity_raw"):
        cloud.optimizer_groups({k: v for k, v in LRS.items() if k != "opacity_raw"})


def test_prune_slices_params_and_adam_state():
    cloud, opt = _trained_cloud()
    before = _snapshot(cloud, opt)
    mask = torch.zeros(12, dtype=torch.bool)
    mask[[0, 5, 6, 11]] = True
    cloud.prune(mask, opt)
    assert len(cloud) == 8
    _assert_aligned(cloud, opt)
    after = _snapshot(cloud, opt)
    for name in PARAM_NAMES:
        for old, new in zip(before[name], after[name]):
            assert torch.equal(new, old[~mask]), name
    opt.step()  # the optimiser still works on the new tensors


def test_clone_appends_copies_with_zero_moments():
    cloud, opt = _trained_cloud()
    before = _snapshot(cloud, opt)
    chosen = torch.tensor([2, 9])
    grads = torch.zeros(12, 2)
    grads[chosen] = 1.0  # far above the threshold
    cloud.add_densify_stats(grads, torch.ones(12, dtype=torch.bool))
    stats = cloud.densify_and_prune(opt, grad_threshold=0.5, min_opacity=0.0, extent=100.0)  # every Gaussian is "small"
    assert stats == {"cloned": 2, "split": 0, "pruned": 0}
    assert len(cloud) == 14
    _assert_aligned(cloud, opt)
    after = _snapshot(cloud, opt)
    for name in PARAM_NAMES:
        param, m1, m2 = after[name]
        old_param, old_m1, old_m2 = before[name]
        assert torch.equal(param[:12], old_param) and torch.equal(param[12:], old_param[chosen])
        assert torch.equal(m1[:12], old_m1) and torch.equal(m2[:12], old_m2)
        assert (m1[12:] == 0).all() and (m2[12:] == 0).all()
    assert (cloud.xyz_grad_accum == 0).all() and (cloud.denom == 0).all()


def test_split_replaces_parents_by_two_smaller_children():
    cloud, opt = _trained_cloud()
    before = _snapshot(cloud, opt)
    chosen = torch.tensor([1, 4, 10])
    grads = torch.zeros(12, 2)
    grads[chosen] = 1.0
    cloud.add_densify_stats(grads, torch.ones(12, dtype=torch.bool))
    parent_scales = cloud.scales.detach()[chosen]
    stats = cloud.densify_and_prune(
        opt, grad_threshold=0.5, min_opacity=0.0, extent=1e-6, generator=torch.Generator().manual_seed(3)
    )  # every Gaussian is "large"
    assert stats == {"cloned": 0, "split": 3, "pruned": 0}
    assert len(cloud) == 12 - 3 + 6
    _assert_aligned(cloud, opt)
    after = _snapshot(cloud, opt)
    keep = torch.ones(12, dtype=torch.bool)
    keep[chosen] = False
    for name in PARAM_NAMES:
        param, m1, m2 = after[name]
        old_param, old_m1, old_m2 = before[name]
        assert torch.equal(param[:9], old_param[keep]), name
        assert torch.equal(m1[:9], old_m1[keep]) and torch.equal(m2[:9], old_m2[keep])
        assert (m1[9:] == 0).all() and (m2[9:] == 0).all()
        if name not in ("xyz", "scale_raw"):
            assert torch.equal(param[9:], old_param[chosen].repeat(2, *[1] * (old_param.dim() - 1))), name
    child_scales = cloud.scales.detach()[9:]
    assert torch.allclose(child_scales, parent_scales.repeat(2, 1) / 1.6, rtol=1e-4)
    offsets = cloud.xyz.detach()[9:] - before["xyz"][0][chosen].repeat(2, 1)
    assert (offsets.norm(dim=1) < 6 * parent_scales.repeat(2, 1).max(1).values).all()
    assert (offsets.norm(dim=1) > 0).all()


def test_prune_by_opacity_screen_and_world_size():
    cloud, opt = _trained_cloud()
    with torch.no_grad():
        cloud.opacity_raw[3] = inverse_sigmoid(torch.tensor(0.01))
        cloud.scale_raw[5] = inverse_softplus(torch.tensor(0.5))
    cloud.add_densify_stats(
        torch.zeros(12, 2), torch.ones(12, dtype=torch.bool), radii=torch.tensor([1] * 7 + [30] + [1] * 4)
    )
    xyz = cloud.xyz.detach().clone()
    stats = cloud.densify_and_prune(
        opt, grad_threshold=1.0, min_opacity=0.05, extent=1.0, max_screen_size=20, max_world_scale=0.1
    )
    assert stats["pruned"] == 3 and len(cloud) == 9
    keep = torch.ones(12, dtype=torch.bool)
    keep[[3, 5, 7]] = False
    assert torch.equal(cloud.xyz.detach(), xyz[keep])
    _assert_aligned(cloud, opt)


def test_densify_stats_scale_to_ndc_and_track_radii():
    cloud = GaussianCloud.random_init(3, generator=torch.Generator().manual_seed(0))
    grad = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    cloud.add_densify_stats(
        grad, torch.tensor([True, True, False]), radii=torch.tensor([4, 9, 7]), image_size=(200, 100)
    )
    cloud.add_densify_stats(grad, torch.tensor([True, False, False]), radii=torch.tensor([2, 1, 1]))
    assert torch.allclose(cloud.xyz_grad_accum, torch.tensor([100.0 + 1.0, 50.0, 0.0]))
    assert cloud.denom.tolist() == [2, 1, 0] and cloud.max_radii2d.tolist() == [4, 9, 0]


def test_reset_opacity_and_params():
    cloud, opt = _trained_cloud()
    before = _snapshot(cloud, opt)
    cloud.reset_opacity(opt, value=0.01)
    assert (cloud.opacities <= 0.01 + 1e-6).all()
    after = _snapshot(cloud, opt)
    assert (after["opacity_raw"][1] == 0).all() and (after["opacity_raw"][2] == 0).all()
    assert torch.equal(after["xyz"][1], before["xyz"][1])

    cloud.xyz_grad_accum.fill_(2.0)
    mask = torch.zeros(12, dtype=torch.bool)
    mask[[0, 7]] = True
    scales = cloud.scales.detach().clone()
    before = _snapshot(cloud, opt)
    cloud.reset_params(mask, opt, opacity=0.1, scale_factor=0.1)
    after = _snapshot(cloud, opt)
    assert torch.allclose(cloud.opacities[mask], torch.tensor([0.1, 0.1]))
    assert torch.allclose(cloud.scales.detach()[mask], scales[mask] * 0.1, rtol=1e-4)
    assert torch.equal(cloud.scales.detach()[~mask], scales[~mask])
    for name in ("opacity_raw", "scale_raw"):
        assert (after[name][1][mask] == 0).all() and torch.equal(after[name][1][~mask], before[name][1][~mask])
    assert cloud.xyz_grad_accum.tolist() == [1.0] + [2.0] * 6 + [1.0] + [2.0] * 4
    _assert_aligned(cloud, opt)


def test_state_tensors_round_trip(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    cloud, _ = _trained_cloud()
    cloud.one_up_sh_degree()
    path = tmp_path / "cloud.safetensors"
    safetensors.save_file(cloud.state_tensors(), str(path))
    loaded = GaussianCloud.from_state_tensors(safetensors.load_file(str(path)))
    assert loaded.max_sh_degree == 1 and loaded.active_sh_degree == 1
    for name in PARAM_NAMES:
        assert torch.equal(getattr(loaded, name), getattr(cloud, name))


def test_surgery_finds_renamed_groups_by_identity():
    cloud = GaussianCloud.random_init(6, generator=torch.Generator().manual_seed(2))
    groups = [{**g, "name": "face." + g["name"]} for g in cloud.optimizer_groups(LRS) if g["name"] != "xyz"]
    opt = torch.optim.Adam(groups)
    (cloud.sh.sum() + cloud.opacities.sum() + cloud.scales.sum() + cloud.rotations.sum()).backward()
    opt.step()
    dc_moment = opt.state[cloud.features_dc]["exp_avg"].clone()
    cloud.prune(torch.tensor([True, False, False, True, False, False]), opt)
    assert len(opt.param_groups) == 5 and opt.param_groups[0]["params"][0] is cloud.features_dc
    assert torch.equal(opt.state[cloud.features_dc]["exp_avg"], dc_moment[[1, 2, 4, 5]])
    assert cloud.xyz.shape == (4, 3) and cloud.xyz not in opt.state
