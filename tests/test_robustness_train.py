"""Bad input and faults in training (``instag adapt`` / ``instag pretrain``), through the real CLI.

Cases (DESIGN §5): missing, wrong-extractor and corrupted pre-trained checkpoints, an empty data
folder, missing feature files and features shorter or longer than the video, an output folder
that cannot be made, a full disk, and a NaN loss. Each fails with exit code 2 and one line naming
the file (no traceback, no temporaries left), or is handled and the result checked. Clips are
generated (``tests/synthetic_clip.py``) at 16-32 px so that every case runs in seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from badinputs import corrupt, message_lines, one_line_error, pretrained, run_cli, stray_temporaries, synthetic_dataset

QUICK = ["--preset", "tiny", "--iterations", "12", "--mouth_iterations", "4", "--fuse_iterations", "2", "--device", "cpu",
         "--quiet", "--workers", "0", "--evaluate", "false"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A processed clip, a mel pre-training folder and a HuBERT one."""
    root = tmp_path_factory.mktemp("train_world")
    clip = synthetic_dataset(root / "data" / "clip", size=16, n_train=8, n_val=2)
    return {"root": root, "clip": clip, "pre": pretrained(root / "pre_mel"), "pre_hu": pretrained(root / "pre_hu", "hubert")}


def adapt(world, out: Path, *extra: str, source: Path | None = None, pre: Path | None = None, **kw):
    return run_cli("adapt", "-S", str(source or world["clip"].root), "-M", str(out), "--pretrain_path",
                   str(pre or world["pre"]), *QUICK, *extra, **kw)


def copy_clip(world, tmp_path: Path) -> Path:
    dst = tmp_path / "clip"
    shutil.copytree(world["clip"].root, dst)
    return dst


# ------------------------------------------------------------------------- pre-trained checkpoint
def test_missing_pretrained_checkpoint(world, tmp_path):
    missing = tmp_path / "no_pretrain"
    line = one_line_error(adapt(world, tmp_path / "out", pre=missing), str(missing), "pre-train first (instag pretrain")
    assert "chkpnt_ema_face_latest" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_pretrained_with_another_extractor_is_refused(world, tmp_path):
    one_line_error(adapt(world, tmp_path / "out", "--audio_extractor", "mel", pre=world["pre_hu"]),
                   str(world["pre_hu"]), "'hubert'", "--audio_extractor hubert")


def test_extractor_recorded_in_checkpoint_needs_its_features(world, tmp_path):
    """No --audio_extractor: the pre-trained one (HuBERT) is taken, and its missing features are named."""
    one_line_error(adapt(world, tmp_path / "out", pre=world["pre_hu"]), "aud_hu.npy", "instag features")


def test_corrupted_pretrained_checkpoint(world, tmp_path):
    pre = tmp_path / "pre"
    shutil.copytree(world["pre"], pre)
    corrupt(pre / "chkpnt_ema_mouth_latest.safetensors")
    one_line_error(adapt(world, tmp_path / "out", pre=pre), "chkpnt_ema_mouth_latest.safetensors", "corrupt")


def test_pretrained_checkpoint_of_another_shape(world, tmp_path):
    """A checkpoint from another model version (tensors of other shapes) is refused, not crashed on."""
    from instag.model.motion import UniversalFaceField
    from instag.train.checkpoint import save_universal

    pre = tmp_path / "pre"
    shutil.copytree(world["pre"], pre)
    state = UniversalFaceField((80, 16)).state_dict()
    name = next(iter(state))
    state[name] = state[name].flatten()[:-1].clone()  # one value short: a layout of another version
    save_universal(pre, "face", state, {"audio_extractor": "mel", "iteration": 1})
    one_line_error(adapt(world, tmp_path / "out", pre=pre), "chkpnt_ema_face_latest.safetensors", "does not fit")


# ------------------------------------------------------------------------- data folder
def test_empty_data_folder(world, tmp_path):
    empty = tmp_path / "data" / "empty"
    empty.mkdir(parents=True)
    one_line_error(adapt(world, tmp_path / "out", source=empty), str(empty), "instag process")
    proc = run_cli("pretrain", "-S", str(empty), "-M", str(tmp_path / "pre_out"), "--preset", "tiny", "--device", "cpu")
    one_line_error(proc, str(empty), "no processed clips")
    assert not stray_temporaries(tmp_path)


def test_missing_data_folder(world, tmp_path):
    one_line_error(adapt(world, tmp_path / "out", source=tmp_path / "nowhere"), "nowhere")


def test_missing_feature_file(world, tmp_path):
    clip = copy_clip(world, tmp_path)
    (clip / "aud_mel.npy").unlink()
    one_line_error(adapt(world, tmp_path / "out", source=clip), str(clip / "aud_mel.npy"), "instag features")


@pytest.mark.parametrize("rows, which", [(4, "shorter"), (30, "longer")])
def test_features_not_matching_the_video_are_refused(world, tmp_path, rows, which):
    clip = copy_clip(world, tmp_path)
    feats = np.load(clip / "aud_mel.npy")
    np.save(clip / "aud_mel.npy", np.resize(feats, (rows, *feats.shape[1:])))
    one_line_error(adapt(world, tmp_path / "out", source=clip), str(clip / "aud_mel.npy"), which)


@pytest.mark.parametrize("delta", [-3, 3])
def test_features_a_few_rows_off_are_fitted_with_a_warning(world, tmp_path, delta):
    from instag.data.dataset import load_clip

    clip = copy_clip(world, tmp_path)
    feats = np.load(clip / "aud_mel.npy")
    n = feats.shape[0]
    np.save(clip / "aud_mel.npy", np.resize(feats, (n + delta, *feats.shape[1:])))
    with pytest.warns(UserWarning, match="aud_mel.npy"):
        loaded = load_clip(clip, "train", "mel")
    assert np.asarray(loaded.features).shape[0] == n


def test_features_of_another_extractor_are_refused(world, tmp_path):
    clip = copy_clip(world, tmp_path)
    np.save(clip / "aud_mel.npy", np.zeros((10, 16, 29), np.float32))  # DeepSpeech layout under the mel name
    one_line_error(adapt(world, tmp_path / "out", source=clip), "aud_mel.npy", "another extractor")


# ------------------------------------------------------------------------- output and faults
def test_unwritable_output_folder(world, tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("x")
    one_line_error(adapt(world, blocker / "out"), str(blocker))
    proc = run_cli("pretrain", "-S", str(world["clip"].root.parent), "-M", str(blocker / "pre"), "--preset", "tiny",
                   "--device", "cpu", "--quiet")
    one_line_error(proc, str(blocker))


def test_full_disk_while_saving(world, tmp_path):
    out = tmp_path / "out"
    proc = adapt(world, out, fail_writes_after=0)
    one_line_error(proc, str(out), "No space left on device")
    assert not stray_temporaries(tmp_path)
    assert not list(out.glob("*.json")), "a checkpoint is recorded although its write failed"


def test_nan_loss_stops_naming_the_step_and_last_checkpoint(world, tmp_path):
    out = tmp_path / "out"
    proc = adapt(world, out, nan_from=5)
    line = one_line_error(proc, "step 5", "Last good checkpoint")
    assert "nan" in line.lower()
    assert not stray_temporaries(tmp_path)
    for meta in out.glob("*.json"):  # whatever was saved is finite and loadable
        if meta.name.startswith("chkpnt_face"):
            from instag.model.talking_head import TalkingHead

            head = TalkingHead.load(out, device="cpu", name=meta.stem)
            assert all(np.isfinite(p.detach().numpy()).all() for p in head.parameters())


def test_successful_run_leaves_only_complete_outputs(world, tmp_path):
    out = tmp_path / "out dir ü"  # spaces and non-ASCII letters in the model path
    proc = adapt(world, out)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and not any("error" in ln for ln in message_lines(proc.stderr))
    assert not stray_temporaries(out)
    for stage, total in (("face", 12), ("mouth", 4), ("fuse", 2)):
        assert json.loads((out / f"chkpnt_{stage}_latest.json").read_text())["iteration"] == total


@pytest.mark.parametrize("script", ["train_xx_few.sh", "pretrain_con.sh"])
def test_upstream_scripts_fail_in_one_line(world, tmp_path, script):
    import os
    import subprocess
    import sys

    from badinputs import REPO, cli_env

    empty = tmp_path / "data" / "empty"
    empty.mkdir(parents=True)
    env = {**cli_env(), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PRETRAIN": str(world["pre"])}
    proc = subprocess.run(["bash", str(REPO / "scripts" / script), str(empty), str(tmp_path / "out"), "0", "--device", "cpu"],
                          capture_output=True, text=True, env=env, cwd=str(REPO), timeout=120)
    one_line_error(proc, str(empty))
