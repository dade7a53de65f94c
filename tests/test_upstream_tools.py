"""Optional upstream tools with small generated weights: BFM conversion and tracking, EasyPortrait, Sapiens, weights report."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from instag.cli import COMMANDS
from instag.data.format import PARSING_BGR, DatasetLayout
from instag.data.maps import read_depth, read_mask, read_normal
from instag.errors import InstagError
from instag.preprocess import bfm, easyportrait, sapiens, weights

REPO = Path(__file__).resolve().parents[1]


def _write_frames(root: Path, n: int, height: int, width: int) -> DatasetLayout:
    layout = DatasetLayout.of(root)
    layout.ori_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(layout.ori_image(i)), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    return layout


# ------------------------------------------------------------------------------------------------
# weights registry and prepare.sh


def test_where_and_require_name_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = weights.where("easyportrait")
    assert "data_utils/easyportrait/fpn-fp-512.pth" in text and "teeth" in text
    with pytest.raises(InstagError) as err:
        weights.require("easyportrait", tmp_path / "nope.pth")
    assert str(tmp_path / "nope.pth") in str(err.value) and "\n" not in str(err.value)
    present = tmp_path / "fpn.pth"
    present.write_bytes(b"x")
    assert weights.require("easyportrait", present) == present
    with pytest.raises(InstagError, match="unknown optional weight"):
        weights.where("no-such-weight")


def test_report_lists_every_weight(capsys):
    assert weights.main([]) == 0
    out = capsys.readouterr().out
    for name in ("deepspeech", "esperanto", "hubert", "ave", "easyportrait", "sapiens_depth", "sapiens_normal", "bfm"):
        assert f"  {name} " in out
    assert "licence-gated" in out


def test_fetch_downloads_atomically_and_unzips(tmp_path, monkeypatch):
    source = tmp_path / "graph.pb"
    source.write_bytes(b"frozen graph")
    archive = tmp_path / "graph.pb.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(source, "deepspeech/graph.pb")
    target = tmp_path / "models" / "graph.pb"
    monkeypatch.setitem(
        weights.REGISTRY,
        "test_zip",
        weights.OptionalWeight("test_zip", str(target), "a test", "a test", urls=(archive.as_uri(),), unzip=True),
    )
    assert weights.fetch("test_zip") == target and target.read_bytes() == b"frozen graph"
    assert sorted(p.name for p in target.parent.iterdir()) == ["graph.pb"]  # no temporary left behind
    bad = tmp_path / "other" / "w.pth"
    monkeypatch.setitem(
        weights.REGISTRY,
        "test_bad",
        weights.OptionalWeight("test_bad", str(bad), "a test", "a test", urls=((tmp_path / "missing").as_uri(),)),
    )
    with pytest.raises(InstagError, match="could not download test_bad"):
        weights.fetch("test_bad")
    assert not bad.exists()
    with pytest.raises(InstagError, match="cannot be fetched"):
        weights.fetch("bfm")


@pytest.mark.skipif("weights" not in COMMANDS, reason="the 'weights' command is not registered in instag.cli yet")
def test_prepare_sh_reports(tmp_path):
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "prepare.sh")], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "easyportrait" in proc.stdout and "missing" in proc.stdout


# ------------------------------------------------------------------------------------------------
# BFM: convert_BFM and the tracker


def _save_pickled(path: Path, obj) -> None:
    np.save(path, obj, allow_pickle=True)


def _small_bfm_files(model_dir: Path, num_v: int = 150, num_sub: int = 120) -> dict:
    """A tiny 01_MorphableModel.mat and AD-NeRF helper files with the real field names."""
    from scipy.io import savemat

    rng = np.random.default_rng(1)
    model_dir.mkdir(parents=True, exist_ok=True)
    mat = {
        "shapeMU": rng.normal(0, 5e4, (3 * num_v, 1)).astype(np.float32),
        "shapePC": rng.normal(0, 1, (3 * num_v, 6)).astype(np.float32),
        "shapeEV": rng.uniform(1e3, 5e3, (6, 1)).astype(np.float32),
        "texMU": rng.uniform(0, 255, (3 * num_v, 1)).astype(np.float32),
        "texPC": rng.normal(0, 1, (3 * num_v, 6)).astype(np.float32),
        "texEV": rng.uniform(1, 5, (6, 1)).astype(np.float32),
        "tl": np.ones((4, 3)),
    }
    savemat(model_dir / "01_MorphableModel.mat", mat)
    sub = rng.permutation(num_v)[:num_sub]
    _save_pickled(model_dir / "topology_info.npy", {"sub_inds": sub})
    _save_pickled(
        model_dir / "exp_info.npy",
        {
            "mu_exp": rng.normal(0, 1e3, 3 * num_sub),
            "base_exp": rng.normal(0, 1, (4, 3 * num_sub)),
            "sig_exp": np.full(4, 2e3),
        },
    )
    _save_pickled(
        model_dir / "keys_info.npy",
        {
            "keyinds": np.arange(68),
            "left_contour": np.arange(68, 92).reshape(8, 3),
            "right_contour": np.arange(92, 116).reshape(8, 3),
            "rigid_ids": np.arange(30),
        },
    )
    (model_dir / "sub_mesh.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 2/1/1 3/2/2 4/3/3\n")
    return {"mat": mat, "sub": sub}


def test_convert_bfm_small_mat(tmp_path, capsys):
    model_dir = tmp_path / "3DMM"
    made = _small_bfm_files(model_dir)
    assert bfm.convert_main(["--model_dir", str(model_dir), "--upstream_npy"]) == 0
    info = bfm.load_array_dict(model_dir / "3DMM_info.npz")
    sub, mat = made["sub"], made["mat"]
    np.testing.assert_allclose(info["mu_shape"], mat["shapeMU"].reshape(-1, 3)[sub].reshape(-1), rtol=1e-6)
    # PC k of vertex v is rows 3v..3v+2 of column k
    np.testing.assert_allclose(info["b_shape"][2].reshape(-1, 3), mat["shapePC"][:, 2].reshape(-1, 3)[sub], rtol=1e-6)
    assert info["b_shape"].shape == (6, 3 * len(sub)) and info["sig_shape"].shape == (6,)
    assert info["b_tex"].shape == (6, 3 * len(sub)) and info["b_exp"].shape == (4, 3 * len(sub))
    np.testing.assert_array_equal(info["tris"], [[0, 1, 2], [1, 2, 3]])
    assert info["keyinds"].shape == (68,) and info["left_contour"].shape == (8, 3)
    upstream = bfm.load_array_dict(model_dir / "3DMM_info.npy")  # upstream's pickled dict, read safely
    np.testing.assert_array_equal(upstream["b_shape"], info["b_shape"])
    model = bfm.FaceModel.load(model_dir / "3DMM_info.npz")
    assert model.id_dim == 6 and model.exp_dim == 4 and model.mean.shape == (len(sub), 3)
    assert abs(model.mean.mean(0)).max() < 1e-5  # centred
    assert "wrote" in capsys.readouterr().out


def test_convert_bfm_lists_missing_files(tmp_path):
    with pytest.raises(InstagError) as err:
        bfm.convert_bfm(tmp_path / "3DMM")
    msg = str(err.value)
    assert "01_MorphableModel.mat" in msg and "exp_info.npy" in msg and "topology_info.npy" in msg and "\n" not in msg


def test_pickled_npy_with_code_is_refused(tmp_path):
    evil = tmp_path / "keys_info.npy"
    _save_pickled(evil, {"keyinds": np.arange(3), "hook": os.getcwd})  # a callable global: must never be resolved
    with pytest.raises(InstagError, match="cannot read"):
        bfm.load_array_dict(evil)

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "bad.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump(np.array({"a": Boom()}, dtype=object), fh)
    with pytest.raises(InstagError, match="not an array constructor"):
        bfm.load_array_dict(tmp_path / "bad.npy")


def _synthetic_face_model() -> bfm.FaceModel:
    rng = np.random.default_rng(0)
    num_v = 68 + 48 + 10
    pts = np.stack([rng.uniform(-7e4, 7e4, num_v), rng.uniform(-9e4, 9e4, num_v), rng.uniform(-2e4, 6e4, num_v)], 1)
    info = {
        "mu_shape": pts.reshape(-1).astype(np.float32),
        "b_shape": rng.normal(0, 1, (20, 3 * num_v)).astype(np.float32),
        "sig_shape": np.full(20, 3e3, np.float32),
        "mu_exp": np.zeros(3 * num_v, np.float32),
        "b_exp": rng.normal(0, 1, (10, 3 * num_v)).astype(np.float32),
        "sig_exp": np.full(10, 2e3, np.float32),
        "keyinds": np.arange(68),
        "left_contour": np.arange(68, 92).reshape(8, 3),
        "right_contour": np.arange(92, 116).reshape(8, 3),
    }
    return bfm.FaceModel.from_arrays(info)


def _synthetic_track(model: bfm.FaceModel, n: int = 30, focal: float = 900.0):
    rng = np.random.default_rng(2)
    t = torch.linspace(0, 1, n)
    euler = torch.stack([0.15 * torch.sin(3 * t), 0.3 * torch.sin(2 * t), 0.1 * torch.cos(4 * t)], -1)
    trans = torch.stack([0.2 * t, -0.1 * t, -7 + 0.3 * t], -1)
    id_coef = torch.tensor(rng.normal(0, 0.5, (1, model.id_dim)), dtype=torch.float32)
    exp_coef = torch.tensor(rng.normal(0, 0.3, (n, model.exp_dim)), dtype=torch.float32)
    pix, _ = bfm._Keypoints(model)(id_coef, exp_coef, euler, trans, focal, 256.0, 256.0)
    return pix.numpy(), euler, trans


def test_bfm_tracker_recovers_known_pose(tmp_path):
    model = _synthetic_face_model()
    np.savez(
        tmp_path / "3DMM_info.npz",
        **{
            "mu_shape": (model.mean.numpy() * 1e5).reshape(-1),
            "mu_exp": np.zeros(model.mean.numel(), np.float32),
            "b_shape": (model.id_basis.numpy() * 1e5).reshape(model.id_dim, -1),
            "sig_shape": np.ones(model.id_dim, np.float32),
            "b_exp": (model.exp_basis.numpy() * 1e5).reshape(model.exp_dim, -1),
            "sig_exp": np.ones(model.exp_dim, np.float32),
            "keyinds": model.keyinds.numpy(),
            "left_contour": model.left_contour.numpy(),
            "right_contour": model.right_contour.numpy(),
        },
    )
    landmarks, euler, trans = _synthetic_track(model)
    layout = _write_frames(tmp_path / "clip", len(landmarks), 512, 512)
    for i, lms in enumerate(landmarks):
        np.savetxt(layout.lms(i), lms, "%f")
    track = bfm.track_with_bfm(
        layout, model_path=tmp_path / "3DMM_info.npz", settings=bfm.TrackSettings(focal_frames=6)
    )
    saved = torch.load(layout.track_params, weights_only=True)
    assert set(saved) == {"id", "exp", "euler", "trans", "focal"}
    assert saved["id"].shape == (1, 20) and saved["exp"].shape == (30, 10) and saved["euler"].shape == (30, 3)
    assert saved["trans"].shape == (30, 3) and saved["focal"].shape == (1,)
    assert abs(track["focal"].item() - 900.0) < 45.0  # upstream only resolves focal to its 100 px grid
    assert torch.rad2deg(track["euler"] - euler).abs().max() < 0.5
    assert (track["trans"] - trans).abs().max() < 0.2  # tracker units; the head is ~7 units away
    assert bfm.landmark_error(model, track, landmarks, 512, 512).mean() < 0.5  # px

    # camera_to_world follows upstream's transforms rule: w2c maps head points p/10 to (R p + t)/10
    c2w = bfm.camera_to_world(track["euler"], track["trans"])
    p = torch.tensor([0.3, -0.2, 0.5])
    cam = bfm.euler_to_rotation(track["euler"]) @ p + track["trans"]
    w2c = torch.linalg.inv(c2w)
    np.testing.assert_allclose((w2c[:, :3, :3] @ (p / 10) + w2c[:, :3, 3]).numpy(), (cam / 10).numpy(), atol=1e-5)


def test_bfm_temporal_smoothing_reduces_jitter():
    model = _synthetic_face_model()
    landmarks, euler, _ = _synthetic_track(model, n=40)
    noisy = landmarks + np.random.default_rng(3).normal(0, 1.5, landmarks.shape).astype(np.float32)
    fast = dict(pose_iters=200, shape_iters=400)

    def jitter(track):
        second = track["euler"][2:] - 2 * track["euler"][1:-1] + track["euler"][:-2]
        return torch.rad2deg(second).abs().mean().item()

    smooth = bfm.track_landmarks(model, noisy, 512, 512, focal=900.0, settings=bfm.TrackSettings(**fast))
    per_frame = bfm.track_landmarks(
        model, noisy, 512, 512, focal=900.0, settings=bfm.TrackSettings(pose_smooth=0.0, exp_smooth=0.0, **fast)
    )
    assert jitter(smooth) < 0.5 * jitter(per_frame)


def test_bfm_tracker_rejects_bad_landmarks():
    model = _synthetic_face_model()
    with pytest.raises(InstagError, match=r"\[N,68,2\]"):
        bfm.track_landmarks(model, np.zeros((3, 40, 2)), 512, 512)
    bad = np.zeros((3, 68, 2), np.float32)
    bad[1, 5] = np.nan
    with pytest.raises(InstagError, match=r"frames \[1\]"):
        bfm.track_landmarks(model, bad, 512, 512, focal=900.0)


# ------------------------------------------------------------------------------------------------
# EasyPortrait

# Keys and shapes of mmseg 0.x's EncoderDecoder(ResNetV1c-50, FPN, FPNHead) as stored in fpn-fp-512.pth.
EXPECTED_KEYS = {
    "backbone.stem.0.weight": (32, 3, 3, 3),
    "backbone.stem.1.running_mean": (32,),
    "backbone.stem.3.weight": (32, 32, 3, 3),
    "backbone.stem.6.weight": (64, 32, 3, 3),
    "backbone.stem.7.num_batches_tracked": (),
    "backbone.layer1.0.conv1.weight": (64, 64, 1, 1),
    "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "backbone.layer1.0.downsample.1.running_var": (256,),
    "backbone.layer2.0.conv2.weight": (128, 128, 3, 3),
    "backbone.layer3.5.bn3.weight": (1024,),
    "backbone.layer4.2.conv3.weight": (2048, 512, 1, 1),
    "neck.lateral_convs.0.conv.weight": (256, 256, 1, 1),
    "neck.lateral_convs.3.conv.bias": (256,),
    "neck.fpn_convs.2.conv.weight": (256, 256, 3, 3),
    "decode_head.scale_heads.0.0.conv.weight": (128, 256, 3, 3),
    "decode_head.scale_heads.0.0.bn.weight": (128,),
    "decode_head.scale_heads.2.2.conv.weight": (128, 128, 3, 3),
    "decode_head.scale_heads.3.4.bn.running_var": (128,),
    "decode_head.conv_seg.weight": (8, 128, 1, 1),
    "decode_head.conv_seg.bias": (8,),
}


def test_easyportrait_key_layout():
    state = easyportrait.EasyPortraitFPN().state_dict()
    for key, shape in EXPECTED_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("decode_head.scale_heads.3.1.") for k in state)  # upsampling holds no weights
    assert not any(".conv.bias" in k for k in state if k.startswith("decode_head.scale_heads"))  # conv+BN: no bias
    assert len(state) == 390
    # EasyPortrait lists this model at 108.91 MB of float32 weights
    assert abs(sum(v.numel() for v in state.values()) * 4 / 2**20 - 108.91) < 0.01


def _mmcv_checkpoint(path: Path, favour: int) -> None:
    torch.manual_seed(0)
    state = easyportrait.EasyPortraitFPN().state_dict()
    state["decode_head.conv_seg.weight"].zero_()
    state["decode_head.conv_seg.bias"].fill_(-5.0)
    state["decode_head.conv_seg.bias"][favour] = 5.0
    meta = {
        "mmcv_version": "1.7.1",
        "CLASSES": easyportrait.CLASSES,
        "PALETTE": [[0, 0, 0]] * 8,
        "config": "model = dict()",
        "hook_msgs": {"best_score": np.float64(0.8333), "last_ckpt": "work_dirs/fpn-fp/best.pth"},
        "seed": np.int64(0),
    }
    torch.save({"meta": meta, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)


def test_easyportrait_writes_teeth_masks(tmp_path, capsys):
    layout = _write_frames(tmp_path / "clip", 2, 64, 80)
    checkpoint = tmp_path / "fpn-fp-512.pth"
    _mmcv_checkpoint(checkpoint, favour=easyportrait.TEETH)
    assert easyportrait.main([str(layout.root), "--weights", str(checkpoint), "--device", "cpu"]) == 0
    for i in range(2):
        mask = read_mask(layout.teeth_mask(i), "")
        assert mask.dtype == np.bool_ and mask.shape == (64, 80) and mask.all()
    assert "wrote 2 teeth masks" in capsys.readouterr().out
    model = easyportrait.load_model(checkpoint)
    with torch.no_grad():
        model.decode_head.conv_seg.bias.copy_(torch.tensor([-5.0, 5.0] + [-5.0] * 6))  # skin everywhere
    assert easyportrait.write_teeth_masks(layout, model, progress=False) == 0  # done already: skipped
    assert easyportrait.write_teeth_masks(layout, model, force=True, progress=False) == 2
    assert not read_mask(layout.teeth_mask(0), "").any()


def test_easyportrait_bad_weights(tmp_path):
    layout = _write_frames(tmp_path / "clip", 1, 32, 32)
    with pytest.raises(InstagError) as err:
        easyportrait.main([str(layout.root), "--weights", str(tmp_path / "fpn-fp-512.pth")])
    assert str(tmp_path / "fpn-fp-512.pth") in str(err.value)
    wrong = tmp_path / "wrong.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}}, wrong)
    with pytest.raises(InstagError, match="not EasyPortrait's FPN-ResNet50"):
        easyportrait.load_model(wrong)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {}, "meta": {"hook": subprocess.Popen}}, unsafe)
    with pytest.raises(InstagError, match="could run code"):
        easyportrait.load_model(unsafe)


# ------------------------------------------------------------------------------------------------
# Sapiens


class _TinyDepth(nn.Module):
    """Same contract as Sapiens depth: [B,3,1024,768] -> [B,1,256,192]; predicts a left-to-right ramp."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x[:, :1], 4)
        ramp = torch.linspace(-0.5, 0.5, pooled.shape[3]).view(1, 1, 1, -1)
        return pooled * 0.0 + ramp


class _TinyNormal(nn.Module):
    """Same contract as Sapiens normals: [B,3,1024,768] -> [B,3,256,192]; everything faces the camera."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x, 4) * 0.0
        facing = torch.tensor([0.0, 0.0, 2.0]).view(1, 3, 1, 1)
        return pooled + facing


def _scripted_models(tmp_path: Path) -> tuple[Path, Path]:
    depth = tmp_path / weights.SAPIENS_DEPTH_FILE
    normal = tmp_path / weights.SAPIENS_NORMAL_FILE
    torch.jit.script(_TinyDepth()).save(str(depth))
    torch.jit.script(_TinyNormal()).save(str(normal))
    return depth, normal


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated, but Sapiens-lite ships TorchScript
def test_sapiens_priors_with_scripted_models(tmp_path, capsys):
    layout = _write_frames(tmp_path / "clip", 3, 48, 40)
    parsing = np.zeros((48, 40, 3), np.uint8)
    parsing[:, :20] = PARSING_BGR["background"]  # left half is background
    layout.parsing_dir.mkdir()
    cv2.imwrite(str(layout.parsing(0)), parsing)
    depth_model, normal_model = _scripted_models(tmp_path)
    argv = [str(layout.root), "--depth_model", str(depth_model), "--normal_model", str(normal_model), "--gpus", "cpu"]
    assert sapiens.main(argv) == 0
    assert "3 frames" in capsys.readouterr().out

    raw_depth = np.load(layout.root / "sapiens" / "depth" / "sapiens_0.3b" / "0.npy")
    assert raw_depth.dtype == np.float32 and raw_depth.shape == (48, 40)
    assert (np.diff(raw_depth, axis=1) > 0).all() and raw_depth.min() < 0 < raw_depth.max()
    raw_normal = np.load(layout.root / "sapiens" / "normal" / "sapiens_0.3b" / "0.npy")
    assert raw_normal.shape == (48, 40, 3)
    np.testing.assert_allclose(raw_normal[..., 2], 1.0, atol=1e-4)

    prior_depth = read_depth(layout.depth_prior(0), "")
    assert (prior_depth[:, :20] == 0).all() and (prior_depth[:, 20:] > 0).all()
    prior_normal = read_normal(layout.normal_prior(0), "")
    assert (prior_normal[:, :20] == 0).all()
    np.testing.assert_allclose(
        prior_normal[:, 20:], np.broadcast_to([0, 0, -1], (48, 20, 3)), atol=1 / 254
    )  # OpenCV: faces -z
    assert (read_depth(layout.depth_prior(1), "") > 0).all()  # no parsing for frame 1: every pixel
    info = json.loads((layout.root / "priors.json").read_text())
    assert info["depth"] == "relative" and info["source"] == {"depth": "sapiens_0.3b", "normal": "sapiens_0.3b"}

    stamp = layout.depth_prior(2).stat().st_mtime_ns
    assert sapiens.main(argv) == 0  # resumable: nothing recomputed
    assert layout.depth_prior(2).stat().st_mtime_ns == stamp


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_sapiens_splits_frames_across_processes(tmp_path):
    layout = _write_frames(tmp_path / "clip", 3, 24, 20)
    depth_model, _ = _scripted_models(tmp_path)
    done = sapiens.run_sapiens(layout, {"depth": depth_model}, devices=["cpu", "cpu"], progress=False)
    assert done == 3
    assert all(layout.depth_prior(i).is_file() for i in range(3))
    assert not layout.normal_dir.exists()


def test_sapiens_missing_model_names_the_path(tmp_path):
    layout = _write_frames(tmp_path / "clip", 1, 24, 20)
    with pytest.raises(InstagError) as err:
        sapiens.main([str(layout.root), "--tasks", "depth", "--depth_model", str(tmp_path / "x.pt2"), "--gpus", "cpu"])
    assert str(tmp_path / "x.pt2") in str(err.value) and "sapiens" in str(err.value).lower()


@pytest.mark.skipif("sapiens" not in COMMANDS, reason="the 'sapiens' command is not registered in instag.cli yet")
def test_sapiens_run_sh_without_weights_is_one_line(tmp_path):
    layout = _write_frames(tmp_path / "clip", 1, 24, 20)
    proc = subprocess.run(
        ["bash", str(REPO / "data_utils" / "sapiens" / "run.sh"), str(layout.root), "--gpus", "cpu"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    assert weights.SAPIENS_DEPTH_FILE in proc.stderr
