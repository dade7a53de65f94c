"""Loading never executes code from a file (DESIGN §5: no plain pickle).

For every load path (pipeline files, checkpoints, feature arrays, optional upstream weights and
upstream's pickled files) a crafted malicious pickle, whose unpickling would create a marker
folder, is refused with a message naming the file, and the marker never appears. A static scan
of the package guards the load calls themselves.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from badinputs import REPO, one_line_error, run_cli, synthetic_dataset

from instag.errors import InstagError


class Payload:
    """Unpickling this calls ``os.mkdir(marker)``: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "CODE_WAS_EXECUTED"
    yield path
    assert not path.exists(), "loading a file executed code from it"


def evil_torch(path: Path, marker: Path, **tensors) -> Path:
    """A torch.save zip whose pickle calls os.mkdir, beside ordinary tensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**tensors, "payload": Payload(marker)}, path)
    return path


def evil_npy(path: Path, marker: Path) -> Path:
    """A .npy of dtype object whose pickle calls os.mkdir."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.array([Payload(marker), 1.0], dtype=object), allow_pickle=True)
    return path


# ----------------------------------------------------------------------------- pipeline files
def test_track_params_through_the_cli(tmp_path, marker):
    layout = synthetic_dataset(tmp_path / "clip", size=16, n_train=4, n_val=2)
    evil_torch(layout.track_params, marker, euler=torch.zeros(6, 3), trans=torch.zeros(6, 3), focal=torch.ones(1))
    one_line_error(run_cli("split", str(layout.root)), "track_params.pt")


def test_track_params_loader(tmp_path, marker):
    from instag.preprocess import tracking

    layout = synthetic_dataset(tmp_path / "clip", size=16, n_train=4, n_val=2)
    evil_torch(layout.track_params, marker, euler=torch.zeros(6, 3))
    with pytest.raises(InstagError, match="track_params.pt"):
        tracking.load(layout)


def test_landmarks_npy(tmp_path, marker):
    from instag.preprocess import landmarks

    layout = synthetic_dataset(tmp_path / "clip", size=16, n_train=4, n_val=2)
    evil_npy(layout.landmarks, marker)
    with pytest.raises(InstagError, match="landmarks.npy"):
        landmarks.load(layout)


def test_audio_features_npy(tmp_path, marker):
    from instag.audio.windows import load_features

    path = evil_npy(tmp_path / "aud_mel.npy", marker)
    with pytest.raises(InstagError, match="aud_mel.npy"):
        load_features(path, "mel", None)


def test_teeth_mask_npy(tmp_path, marker):
    from instag.data.dataset import read_masks

    layout = synthetic_dataset(tmp_path / "clip", size=16, n_train=4, n_val=2)
    layout.teeth_mask(1).unlink()
    evil_npy(layout.teeth_mask(1).with_suffix(".npy"), marker)  # the older layout's array
    with pytest.raises(InstagError, match="teeth_mask"):
        read_masks(layout, 1)


def test_geometry_prior_npy(tmp_path, marker):
    """depth/<i>.npy and normal/<i>.npy (the older layout, and Sapiens' upstream one) are read per frame while training."""
    from instag.data.dataset import FrameDataset, load_clip

    layout = synthetic_dataset(tmp_path / "clip", size=16, n_train=4, n_val=2)
    for kind in ("depth", "normal"):
        (layout.root / kind).mkdir()
    evil_npy(layout.root / "depth" / "0.npy", marker)
    clip = load_clip(layout.root, "train", "mel", with_priors=True)
    with pytest.raises(InstagError, match="0.npy"):
        FrameDataset([clip], with_priors=True)[(0, 0)]


def test_features_through_the_cli(tmp_path, marker):
    layout = synthetic_dataset(tmp_path / "clip", size=16, n_train=4, n_val=2)
    from badinputs import pretrained

    evil_npy(layout.audio_features("mel"), marker)
    proc = run_cli("adapt", "-S", str(layout.root), "-M", str(tmp_path / "out"), "--pretrain_path",
                   str(pretrained(tmp_path / "pre")), "--device", "cpu", "--preset", "tiny")
    one_line_error(proc, str(layout.audio_features("mel")))


# ----------------------------------------------------------------------------- checkpoints
def test_training_state_optimizer_file(tmp_path, marker):
    from instag.train.checkpoint import read_checkpoint, stem_paths, write_checkpoint

    write_checkpoint(tmp_path, "train_face", {"a": torch.zeros(2)}, {"iteration": 3}, {"step": 3})
    evil_torch(stem_paths(tmp_path, "train_face")[2], marker, iteration="3")
    with pytest.raises(InstagError, match="train_face.optim.pt"):
        read_checkpoint(tmp_path, "train_face", with_optim=True)


def test_pickle_disguised_as_safetensors(tmp_path, marker):
    """A model folder whose .safetensors is really a pickle (e.g. an upstream .pth renamed)."""
    from badinputs import fused_model

    model = fused_model(tmp_path / "model")
    for path in model.glob("*.safetensors"):
        evil_torch(path, marker, w=torch.zeros(3))
    from instag.model.talking_head import TalkingHead

    with pytest.raises(InstagError, match="safetensors"):
        TalkingHead.load(model, device="cpu")


def test_pretrained_field_disguised(tmp_path, marker):
    from badinputs import pretrained

    from instag.model.motion import UniversalFaceField
    from instag.train.checkpoint import load_universal

    pre = pretrained(tmp_path / "pre")
    evil_torch(pre / "chkpnt_ema_face_latest.safetensors", marker, w=torch.zeros(3))
    with pytest.raises(InstagError, match="chkpnt_ema_face_latest.safetensors"):
        load_universal(pre, "face", UniversalFaceField((80, 16)), "mel")


# ----------------------------------------------------------------------------- optional weights
def test_ave_weights(tmp_path, marker):
    from instag.audio.ave import load_encoder

    with pytest.raises(InstagError, match="ave.pth"):
        load_encoder(evil_torch(tmp_path / "ave.pth", marker, w=torch.zeros(2)))


def test_easyportrait_weights(tmp_path, marker):
    from instag.preprocess.easyportrait import load_state_dict

    with pytest.raises(InstagError, match="fpn-fp-512.pth"):
        load_state_dict(evil_torch(tmp_path / "fpn-fp-512.pth", marker, state_dict={"w": torch.zeros(2)}))


def test_lpips_and_syncnet_weights(tmp_path, marker):
    from instag.metrics.lpips import LPIPS
    from instag.metrics.syncnet import SyncNet

    lin = evil_torch(tmp_path / "alex.pth", marker, w=torch.zeros(2))
    with pytest.raises(InstagError, match="alex.pth"):
        LPIPS().load(lin, lin)
    with pytest.raises(InstagError, match="syncnet_v2.model"):
        SyncNet.from_file(evil_torch(tmp_path / "syncnet_v2.model", marker, w=torch.zeros(2)))


def test_upstream_pickled_3dmm_info(tmp_path, marker):
    """Upstream writes 3DMM_info.npy as a pickled dict; ours reads it with an arrays-only unpickler."""
    from instag.preprocess.bfm import load_array_dict

    good = tmp_path / "good.npy"
    np.save(good, {"meanshape": np.zeros((3, 2), np.float32)}, allow_pickle=True)
    assert load_array_dict(good)["meanshape"].shape == (3, 2)
    evil = tmp_path / "3DMM_info.npy"
    np.save(evil, {"meanshape": np.zeros(3), "x": Payload(marker)}, allow_pickle=True)
    with pytest.raises(InstagError, match="3DMM_info.npy"):
        load_array_dict(evil)


# ----------------------------------------------------------------------------- static guard
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            yield node, owner, name


def _kw(node: ast.Call, key: str):
    for kw in node.keywords:
        if kw.arg == key:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "dynamic"
    return None


def test_no_load_call_can_unpickle_code():
    """torch.load always with weights_only=True, np.load never with allow_pickle=True, no pickle.load(s)
    (the arrays-only Unpickler subclass is the one exception), no eval of file contents."""
    bad = []
    for path in sorted((REPO / "instag").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node, owner, name in _calls(tree):
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if owner == "torch" and name == "load" and _kw(node, "weights_only") is not True:
                bad.append(f"{where} torch.load without weights_only=True")
            if owner == "np" and name == "load" and _kw(node, "allow_pickle") not in (None, False):
                bad.append(f"{where} np.load(allow_pickle=...)")
            if owner == "pickle" and name in ("load", "loads"):
                bad.append(f"{where} pickle.{name}")
            if (isinstance(node.func, ast.Name) or owner == "builtins") and name in ("eval", "exec"):
                bad.append(f"{where} {name}()")
            if owner == "jit" and name == "load" and path.name != "sapiens.py":
                bad.append(f"{where} torch.jit.load outside the optional Sapiens runner")
    assert not bad, "\n".join(bad)


def test_a_model_from_an_older_layout_is_refused_with_a_clear_message(tmp_path):
    """A fused checkpoint whose tensors do not match this version's modules: InstagError, not a traceback."""
    from instag.model.talking_head import TalkingHead

    head = TalkingHead.create("mel", (80, 16), face_init=20, mouth_init=20)
    path = head.save(tmp_path)
    from safetensors.torch import load_file, save_file

    tensors = {k: v for k, v in load_file(str(path)).items() if ".audio.norm." not in k}
    save_file(tensors, str(path))
    with pytest.raises(InstagError, match="does not fit this version"):
        TalkingHead.load(tmp_path, device="cpu")
