"""Training engine units on generated data: losses, masks, sampler, checkpoints, resume (CPU, fast)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from synthetic_clip import make_clip

from instag.data.dataset import FACE, HAIR, MOUTH, FrameDataset, load_clip, read_masks
from instag.data.maps import read_mask
from instag.errors import InstagError
from instag.model.motion import UniversalFaceField, UniversalMouthField
from instag.model.talking_head import TalkingHead
from instag.train import losses as L
from instag.train.checkpoint import load_universal, read_checkpoint, save_universal, write_checkpoint
from instag.train.config import stage_config
from instag.train.engine import Identity, Trainer
from instag.train.sampler import CurriculumSampler, pick_in_window


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return [make_clip(root / "pretrain" / name, size=32, n_train=10, n_val=4, seed=k) for k, name in enumerate(("a", "b"))]


# ---------------------------------------------------------------------- losses
def test_ssim_and_photometric():
    a = torch.rand(3, 24, 24)
    assert abs(float(L.ssim(a, a)) - 1) < 1e-5
    assert float(L.photometric(a, a)) < 1e-5
    assert float(L.photometric(a, 1 - a)) > 0.2


def test_empty_masks_give_zero_not_nan():
    x = torch.rand(1, 8, 8)
    empty = torch.zeros(8, 8, dtype=torch.bool)
    assert float(L.masked_mean(x, empty)) == 0.0
    assert float(L.normal_prior_loss(torch.rand(3, 8, 8), torch.zeros(3, 8, 8), empty)) == 0.0
    assert float(L.depth_prior_loss(torch.rand(1, 8, 8), torch.zeros(1, 8, 8), empty)) == 0.0
    assert float(L.point_attention_loss(torch.rand(5), torch.zeros(5, dtype=torch.bool))) == 0.0
    assert float(L.alpha_loss(torch.rand(1, 8, 8), empty)) >= 0


def test_depth_prior_is_scale_and_shift_invariant():
    d = torch.rand(1, 16, 16) + 0.5
    mask = torch.ones(16, 16, dtype=torch.bool)
    assert float(L.depth_prior_loss(d, 3.0 * d - 2.0, mask)) < 1e-5
    assert float(L.depth_prior_loss(d, torch.rand(1, 16, 16) + 0.5, mask)) > 1e-3


def test_normal_prior_zero_for_equal_normals():
    n = torch.nn.functional.normalize(torch.randn(3, 8, 8), dim=0)
    mask = torch.ones(8, 8, dtype=torch.bool)
    assert float(L.normal_prior_loss(n, n, mask)) < 1e-5
    assert abs(float(L.normal_prior_loss(n, -n, mask)) - 2) < 1e-4


def test_contrast_loss_only_penalises_agreement():
    own = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
    assert float(L.contrast_loss(own, [-own])) == 0.0
    assert float(L.contrast_loss(own, [own])) == pytest.approx(1.0)


# ---------------------------------------------------------------------- data
def test_masks_face_excludes_teeth_and_mouth_includes_them(clips):
    layout = clips[0]
    for i in range(14):
        teeth = read_mask(layout.teeth_mask(i), "")
        if teeth.any():
            break
    assert teeth.any()
    masks = read_masks(layout, i)
    assert not (masks[teeth] & FACE).any()
    assert (masks[teeth] & MOUTH).all()
    assert (masks & HAIR).any() and (masks & FACE).any()


def test_dataset_sample_and_downscale(clips):
    clip = load_clip(clips[0].root, "train", "mel", max_side=16)
    assert clip.size == (16, 16) and clip.frames[0].camera.width == 16
    s = FrameDataset([clip], cache_bytes=1 << 20)[(0, 2)]
    assert s["image"].shape == (3, 16, 16) and s["image"].dtype == torch.uint8
    assert s["audio"].shape == (8, 80, 16) and s["au"].shape == (9,)
    assert s["lip_valid"] and s["lip_target"].shape == (80,)


def test_cache_is_bounded(clips):
    clip = load_clip(clips[0].root, "train", "mel")
    ds = FrameDataset([clip], cache_bytes=3 * 32 * 32 * 7)
    for pos in range(len(clip)):
        ds[(0, pos)]
    assert len(ds._cache) <= 3 and ds._cached <= ds.cache_bytes


# ---------------------------------------------------------------------- sampler
def test_pick_in_window_terminates_without_candidates():
    rng = np.random.default_rng(0)
    values = np.zeros(10)
    assert pick_in_window(values, 5.0, 6.0, rng) in range(10)
    assert pick_in_window(np.arange(10.0), 3.0, 3.5, rng) == 3


def test_curriculum_sampler_with_closed_mouth_terminates(clips):
    clip = load_clip(clips[0].root, "train", "mel")
    clip.au25[:] = 0.0  # mouth never opens: upstream's re-draw loop would never end
    clip.stats.update(au25_p25=0.0, au25_p75=0.0, au25_max=0.0)
    for stage, mode in (("mouth", "adapt"), ("mouth", "pretrain"), ("face", "adapt")):
        cfg = stage_config(stage, mode, 200)
        it = iter(CurriculumSampler([clip], cfg))
        draws = [next(it) for _ in range(200)]
        assert all(0 <= p < len(clip) for _, p in draws)


@pytest.mark.parametrize("stage,mode,iters,long", [
    ("face", "adapt", 2000, False), ("mouth", "adapt", 1500, False), ("face", "adapt", 10_000, False),
    ("mouth", "adapt", 10_000, False), ("face", "adapt", 10_000, True), ("mouth", "adapt", 10_000, True),
    ("face", "pretrain", 12_000, False), ("mouth", "pretrain", 8_000, False), ("fuse", "adapt", 500, False),
])
def test_opacity_resets_leave_room_to_recover(stage, mode, iters, long):
    cfg = stage_config(stage, mode, iters, long=long)
    resets = [it for it in range(1, iters + 1) if cfg.resets_opacity(it)]
    for it in resets:  # each is followed by supervised steps in which opacity still trains
        assert it + cfg.densify_interval <= min(cfg.densify_until, cfg.late_from, cfg.freeze_from)
    if (stage, mode, iters, long) == ("face", "adapt", 2000, False):
        assert resets == [600, 1200]  # the default recipe also reset at 1800, inside the lips-blanked phase
    if (stage, mode, iters, long) == ("mouth", "adapt", 1500, False):
        assert resets == [450, 900]  # ... and on 1350, the step after which the mouth's opacity froze


@pytest.mark.parametrize("iters", [100, 300, 999])
def test_short_runs_densify_in_proportion(iters):
    """Below 1 000 iterations the schedule keeps the 1 000-iteration run's densification rounds, closer together;
    --iterations 300 used to turn densification off (332 face Gaussians instead of 11 746)."""
    for stage, mode in (("face", "adapt"), ("mouth", "adapt"), ("face", "pretrain"), ("mouth", "pretrain")):
        cfg = stage_config(stage, mode, iters)
        rounds = [it for it in range(1, iters + 1)
                  if cfg.densify_from < it <= cfg.densify_until and it % cfg.densify_interval == 0]
        full = stage_config(stage, mode, 1000)
        full_rounds = [it for it in range(1, 1001) if full.densify_from < it <= full.densify_until
                       and it % full.densify_interval == 0]
        assert len(full_rounds) - 1 <= len(rounds) <= len(full_rounds) and len(rounds) >= 7, (stage, mode, rounds)
        assert cfg.densify_interval == round(iters / 10) and not cfg.note
    assert stage_config("face", "adapt", 1000).densify_interval == 100  # longer runs keep upstream's rhythm
    short = stage_config("face", "adapt", 99)
    assert short.densify_until == 0 and "too few to densify" in short.note and "100 or more" in short.note
    assert not stage_config("fuse", "adapt", 50).note  # the fuse stage never densifies


# ---------------------------------------------------------------------- engine
def _identity(layout, face_init=80, mouth_init=60):
    clip = load_clip(layout.root, "train", "mel")
    head = TalkingHead.create("mel", (80, 16), face_init, mouth_init, 1, generator=torch.Generator().manual_seed(0))
    return Identity(clip, head)


@pytest.mark.parametrize("stage", ["face", "mouth", "fuse"])
def test_each_stage_steps_with_finite_loss(clips, stage):
    ident = _identity(clips[0])
    cfg = stage_config(stage, "adapt", 12).replace(warmup=2, align_from=3, priors_from=4, late_from=6)
    trainer = Trainer(cfg, [ident], torch.device("cpu"))
    before = ident.head.face.features_dc.detach().clone()
    assert trainer.run(0, progress=False) == 12
    if stage in ("face", "fuse"):
        assert not torch.equal(before, ident.head.face.features_dc.detach())


def test_short_face_stage_grows_its_cloud(tmp_path):
    """A 100-iteration face stage on the CPU densifies: the cloud ends with several times its initial Gaussians."""
    layout = make_clip(tmp_path / "clip", size=16, n_train=8, n_val=2, seed=0)
    ident = _identity(layout, face_init=80)
    Trainer(stage_config("face", "adapt", 100), [ident], torch.device("cpu")).run(0, progress=False)
    assert ident.head.face.num_points >= 3 * 80, ident.head.face.num_points


def test_engine_resets_opacity_only_where_the_schedule_allows(clips, monkeypatch):
    """The engine asks the config; a reset on the mouth's freeze step used to leave it at 1 % opacity for good."""
    from instag.model.gaussians import GaussianCloud

    calls = []
    original = GaussianCloud.reset_opacity
    monkeypatch.setattr(GaussianCloud, "reset_opacity", lambda self, *a, **k: (calls.append(trainer.iteration), original(self, *a, **k)))
    base = stage_config("mouth", "adapt", 12).replace(warmup=1, align_from=1, densify_from=100, densify_interval=4,
                                                     opacity_reset_interval=4, green_reset_from=0)
    for cfg, expected in ((base.replace(densify_until=8, freeze_from=8), []),  # step 4 leaves < 4 steps before 8
                          (base.replace(densify_until=12, freeze_from=12), [4])):
        calls.clear()
        trainer = Trainer(cfg, [_identity(clips[0])], torch.device("cpu"))
        trainer.run(0, progress=False)
        assert calls == expected


def test_empty_parsing_masks_do_not_make_nan(clips, tmp_path):
    import cv2

    layout = make_clip(tmp_path / "blank", size=32, n_train=6, n_val=2, seed=3)
    for i in range(8):  # nothing but background: every mask is empty
        cv2.imwrite(str(layout.parsing(i)), np.full((32, 32, 3), 255, np.uint8))
    ident = _identity(layout)
    cfg = stage_config("face", "adapt", 8).replace(warmup=1, align_from=2, priors_from=2, late_from=4)
    Trainer(cfg, [ident], torch.device("cpu")).run(0, progress=False)
    for stage in ("mouth", "fuse"):
        Trainer(stage_config(stage, "adapt", 4).replace(warmup=1), [ident], torch.device("cpu")).run(0, progress=False)


def test_step_with_every_gaussian_out_of_view_is_skipped(clips):
    ident = _identity(clips[0])
    with torch.no_grad():  # move the whole mouth cloud far behind the camera: nothing reaches the image
        ident.head.mouth.xyz.add_(torch.tensor([0.0, 0.0, 50.0]))
    cfg = stage_config("mouth", "adapt", 3).replace(warmup=5)  # static steps: the loss touches only the cloud
    trainer = Trainer(cfg, [ident], torch.device("cpu"))
    assert trainer.run(0, progress=False) == 3
    assert trainer.skipped_steps >= 1  # before the guard, backward() raised on the first such step


def test_nan_loss_stops_naming_step(clips):
    ident = _identity(clips[0])
    cfg = stage_config("face", "adapt", 10)
    trainer = Trainer(cfg, [ident], torch.device("cpu"))
    with torch.no_grad():
        ident.head.face.features_dc.fill_(float("nan"))
    with pytest.raises(InstagError, match="step 1.*Last good checkpoint"):
        trainer.run(0, progress=False, save=lambda it: "ckpt")


def test_pretrain_two_identities_contrast_and_ema(clips):
    ff, mf = UniversalFaceField((80, 16)), UniversalMouthField((80, 16))
    ids = []
    for layout in clips:
        clip = load_clip(layout.root, "train", "mel")
        ids.append(Identity(clip, TalkingHead.create("mel", (80, 16), 80, 60, 1, ff, mf)))
    cfg = stage_config("face", "pretrain", 10).replace(warmup=2)
    trainer = Trainer(cfg, ids, torch.device("cpu"), lip_head=torch.nn.Linear(32, 80))
    trainer.run(0, progress=False)
    assert trainer.ema is not None
    ema = trainer.ema.state_dict()
    live = ff.state_dict()
    assert any(not torch.equal(ema[k], live[k]) for k in live)  # EMA lags the trained weights


# ---------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_and_interrupted_write(tmp_path):
    t = {"a": torch.arange(6.0).reshape(2, 3)}
    write_checkpoint(tmp_path, "x", t, {"iteration": 5}, {"opt": {"step": 3}})
    tensors, meta, optim = read_checkpoint(tmp_path, "x", with_optim=True)
    assert torch.equal(tensors["a"], t["a"]) and meta["iteration"] == 5 and optim["opt"]["step"] == 3
    (tmp_path / "x.json").write_text(json.dumps({"iteration": 6}))  # json from another write
    with pytest.raises(InstagError, match="disagree"):
        read_checkpoint(tmp_path, "x")


def test_extractor_mismatch_is_refused(tmp_path):
    field = UniversalFaceField((80, 16))
    save_universal(tmp_path, "face", field.state_dict(), {"audio_extractor": "mel", "iteration": 1})
    load_universal(tmp_path / "chkpnt_ema_face_latest.pth", "face", UniversalFaceField((80, 16)), "mel")
    with pytest.raises(InstagError, match="pre-trained with the 'mel' audio extractor"):
        load_universal(tmp_path, "face", UniversalFaceField((29, 16)), "deepspeech")
    with pytest.raises(InstagError, match="run pre-training first"):
        load_universal(tmp_path / "missing", "face", field, "mel")


def test_resume_continues_a_stopped_stage(clips, tmp_path):
    from instag.train.adapt import AdaptConfig, adapt
    from instag.train.run import INCOMPLETE

    pre = tmp_path / "pre"
    save_universal(pre, "face", UniversalFaceField((80, 16)).state_dict(), {"audio_extractor": "mel", "iteration": 1})
    save_universal(pre, "mouth", UniversalMouthField((80, 16)).state_dict(), {"audio_extractor": "mel", "iteration": 1})
    out = tmp_path / "out"
    common = dict(source_path=str(clips[1].root), model_path=str(out), pretrain_path=str(pre), preset="tiny",
                  iterations=16, mouth_iterations=6, fuse_iterations=4, evaluate=False, quiet=True)
    assert adapt(AdaptConfig(**common, stop_after=1e-9), log=lambda *a: None) == INCOMPLETE
    meta = json.loads((out / "train_face.json").read_text())
    assert 0 < meta["iteration"] < 16
    first = json.loads((out / "adapt_log.json").read_text())["stages"]["face"]
    with pytest.raises(InstagError, match="deepspeech"):
        adapt(AdaptConfig(**{**common, "audio_extractor": "deepspeech"}), log=lambda *a: None)
    assert adapt(AdaptConfig(**common, resume=True), log=lambda *a: None) == 0
    log = json.loads((out / "adapt_log.json").read_text())
    assert log["stages"]["face"]["reached"] == 16 and log["stages"]["fuse"]["reached"] == 4
    # the resumed face stage keeps the first piece on record: its time added, its loss history kept
    face = log["stages"]["face"]
    assert face["pieces"] == 2 and log["stages"]["mouth"]["pieces"] == 1
    assert face["seconds"] >= first["seconds"]
    assert face["loss_history"][: len(first["loss_history"])] == first["loss_history"]
    head = TalkingHead.load(out, device="cpu")
    assert head.audio_extractor == "mel"


# ---------------------------------------------------------------------- lip motion
def _lip_camera(width: int = 64):
    from instag.render import Camera

    return Camera.look_at((0.0, 0.0, 0.7), (0.0, 0.0, 0.0), focal=2.0 * width, width=width, height=width)


def test_lip_motion_loss_is_zero_for_matching_motion_and_pulls_toward_the_flow():
    cam = _lip_camera()
    g = torch.Generator().manual_seed(0)
    anchor = torch.rand(6, 3, generator=g) * 0.04 - 0.02
    canonical = anchor.repeat(3, 1)  # exactly on the landmarks: each point takes its own landmark's flow
    flow = torch.randn(6, 2, generator=g) * 2.0
    # the motion whose projection is exactly the interpolated flow: move each point in the image plane
    target = cam.project(canonical) + flow.repeat(3, 1)
    w2c = cam.world_to_camera
    z = (canonical @ w2c[:3, :3].T + w2c[:3, 3])[:, 2:3]
    pc = torch.cat([(target[:, :1] - cam.cx) / cam.fx * z, (target[:, 1:] - cam.cy) / cam.fy * z, z], dim=1)
    moved = (pc - w2c[:3, 3]) @ w2c[:3, :3]  # back to the head frame at the same depth
    radius = 0.002
    exact = L.lip_motion_loss(canonical, moved, cam, anchor, flow, radius)
    still = L.lip_motion_loss(canonical, canonical.clone(), cam, anchor, flow, radius)
    assert float(exact) < 1e-3 < float(still)
    # gradient descent on the offsets lowers the loss
    delta = torch.zeros(18, 3, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=1e-4)
    for _ in range(100):
        loss = L.lip_motion_loss(canonical, canonical + delta, cam, anchor, flow, radius)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * float(still)
    # Gaussians far from every landmark: zero loss that still back-propagates
    far = canonical + 1.0
    moved_far = far.clone().requires_grad_(True)
    zero = L.lip_motion_loss(far, moved_far, cam, anchor, flow, radius)
    zero.backward()
    assert float(zero.detach()) == 0.0 and moved_far.grad is not None


def test_lip_flow_recovers_the_non_rigid_lip_motion(tmp_path):
    from types import SimpleNamespace

    from instag.data.dataset import _lip_flow
    from instag.data.format import DatasetLayout
    from instag.metrics.lips import LIP_INDICES

    layout = DatasetLayout.of(tmp_path)
    g = torch.Generator().manual_seed(1)
    shape = torch.rand(478, 3, generator=g) * 0.1 - 0.05
    torch.save({"shape": shape}, layout.track_params)
    idx = list(LIP_INDICES)
    n, native = 5, 128
    frames, motion = [], torch.randn(n, len(idx), 2, generator=g)
    motion -= motion.mean(0)
    lms = np.zeros((n, 478, 3), np.float32)
    for k in range(n):
        cam = _lip_camera(native)
        yaw = 0.1 * k  # a different head pose per frame: the rigid part must not show up as flow
        rot = torch.tensor([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]], dtype=torch.float32)
        w2c = cam.world_to_camera.clone()
        w2c[:3, :3] = w2c[:3, :3] @ rot
        cam.world_to_camera = w2c
        uv = cam.project(shape)
        uv[idx] += motion[k]
        lms[k, :, :2] = uv.numpy()
        frames.append(SimpleNamespace(index=k, camera=cam.scaled(0.5)))
    np.save(layout.landmarks, lms)
    anchor, flow, ok = _lip_flow(layout, frames, (64, 64), (native, native))
    assert ok.all()
    assert anchor.shape == (len(idx), 3) and flow.shape == (n, len(idx), 2)
    np.testing.assert_allclose(flow, motion.numpy() * 0.5, atol=1e-3)


def test_audio_vector_varies_with_the_audio_and_is_standardised():
    from instag.model.audio_encoder import AudioEncoder

    torch.manual_seed(0)
    enc = AudioEncoder((80, 16))
    windows = torch.randn(64, 8, 80, 16)
    out = enc(windows)  # training mode: the first batch sets the running statistics
    assert out.std(0).mean() > 0.5 and out.mean(0).abs().max() < 1e-3
    enc.eval()
    frozen = enc.norm.mean.clone()
    again = enc(windows * 2.0)
    assert torch.equal(enc.norm.mean, frozen)  # evaluation never moves the statistics
    assert again.std(0).mean() > out.std(0).mean()
    enc.train()
    for _ in range(3):
        enc(torch.randn(1, 8, 80, 16))  # batch size 1 updates without NaN
    assert torch.isfinite(enc.norm.var).all() and int(enc.norm.count) == 4


# ---------------------------------------------------------------------- patch LPIPS
def test_patch_lpips_tiles_the_image_and_back_propagates(tmp_path):
    from lpips_weights import write_lpips_weights

    from instag.metrics.lpips import LPIPS

    model = LPIPS().load(*write_lpips_weights(tmp_path))
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 70, 100, generator=g)
    assert float(L.patch_lpips(model, target, target, 32)) < 1e-6
    render = torch.rand(3, 70, 100, generator=g).requires_grad_(True)
    d = L.patch_lpips(model, render, target, 32)  # 2 x 3 tiles of 32 px, the rest cropped away
    d.backward()
    assert float(d.detach()) > 0 and render.grad is not None
    grad_rows = render.grad.abs().sum(dim=(0, 2))
    assert float(grad_rows[:3].sum()) == 0.0 and float(grad_rows[3:67].sum()) > 0  # centred crop: rows 3..66


def _adapt_parts(clips, tmp_path, monkeypatch, **kw) -> dict:
    """Run a tiny adaptation and collect the logged loss parts per stage."""
    import instag.train.run as run_mod
    from instag.train.adapt import AdaptConfig, adapt

    seen: dict = {}
    original = run_mod.Logger.__call__

    def record(self, log):
        original(self, log)
        for k, v in log.parts.items():
            seen.setdefault(self.tag, {}).setdefault(k, []).append(v)

    monkeypatch.setattr(run_mod.Logger, "__call__", record)
    pre = tmp_path / "pre"
    save_universal(pre, "face", UniversalFaceField((80, 16)).state_dict(), {"audio_extractor": "mel", "iteration": 1})
    save_universal(pre, "mouth", UniversalMouthField((80, 16)).state_dict(), {"audio_extractor": "mel", "iteration": 1})
    cfg = AdaptConfig(source_path=str(clips[1].root), model_path=str(tmp_path / "out"), pretrain_path=str(pre),
                      preset="tiny", iterations=16, mouth_iterations=6, fuse_iterations=8, evaluate=False, quiet=True, **kw)
    assert adapt(cfg, log=lambda *a: None) == 0
    return seen


def test_lpips_term_joins_training_when_its_weights_are_present(clips, tmp_path, monkeypatch):
    from lpips_weights import write_lpips_weights

    lin, alex = write_lpips_weights(tmp_path / "w")
    monkeypatch.setenv("INSTAG_LPIPS_LIN", str(lin))
    monkeypatch.setenv("INSTAG_ALEXNET", str(alex))
    parts = _adapt_parts(clips, tmp_path, monkeypatch)
    fuse = parts["adapt_fuse"]
    assert "lpips" in fuse and all(np.isfinite(fuse["lpips"])) and max(fuse["lpips"]) > 0  # from step at(1001) = 4 of 8
    assert "lpips" in parts["adapt_face"] and "lpips" not in parts["adapt_mouth"]  # the mouth uses it with --long only
    log = json.loads((tmp_path / "out" / "adapt_log.json").read_text())
    assert not any("LPIPS" in n for s in ("face", "mouth", "fuse") for n in log["stages"][s].get("notes", []))


def test_training_without_lpips_weights_notes_it_in_the_log(clips, tmp_path, monkeypatch):
    monkeypatch.setenv("INSTAG_LPIPS_LIN", str(tmp_path / "missing_lin.pth"))
    monkeypatch.setenv("INSTAG_ALEXNET", str(tmp_path / "missing_alex.pth"))
    parts = _adapt_parts(clips, tmp_path, monkeypatch)
    assert "lpips" not in parts["adapt_fuse"]
    log = json.loads((tmp_path / "out" / "adapt_log.json").read_text())
    assert any("without its LPIPS term" in n and "alex.pth" in n for n in log["stages"]["fuse"]["notes"])
    # no LPIPS term in its recipe: only what its 6 iterations leave out
    assert log["stages"]["mouth"]["notes"] == ["6 iterations are too few to densify: the clouds keep their initial "
                                               "Gaussians (give 100 or more)"]


def test_adapt_command_line_overrides_reach_the_face_recipe():
    from instag.config import parse
    from instag.train.adapt import AdaptConfig, stage_recipe
    from instag.train.config import FACE_ADAPT_DENSIFY_GRAD, LIP_MOTION_ADAPT

    base = ["-S", "data/x", "-M", "output/x"]
    default = parse(AdaptConfig, base)
    face = stage_recipe(default, "face", 2000, few_shot=True)
    assert (face.densify_grad_threshold, face.lip_motion) == (FACE_ADAPT_DENSIFY_GRAD, LIP_MOTION_ADAPT)
    assert face.priors_from < 2000 and stage_recipe(default, "face", 2000, few_shot=False).priors_from == 1 << 30
    cfg = parse(AdaptConfig, base + ["--densify_grad_threshold", "0.0003", "--lip_motion", "0"])
    face = stage_recipe(cfg, "face", 2000, few_shot=True)
    assert (face.densify_grad_threshold, face.lip_motion) == (0.0003, 0.0)
    mouth = stage_recipe(cfg, "mouth", 1500, few_shot=True)
    assert mouth.densify_grad_threshold == stage_config("mouth", "adapt", 1500).densify_grad_threshold
