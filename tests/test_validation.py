"""Validation while adapting (``--val_every``), early stopping with the best checkpoint (``--early_stop``),
sample grids and resume, through the real CLI on a tiny generated clip.

The selection score is replaced in the CLI's process by one that depends on the iteration alone
(``-|iteration - 5|``: best at the first check), so which checks improve, where a stage stops and
which checkpoint it keeps are known in advance while everything else (rendering, metrics, grids,
checkpoints, resume) runs for real.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from badinputs import (
    KILL_AFTER_RENAME,
    REPO,
    cli_env,
    cut,
    needs_data,
    one_line_error,
    pretrained,
    read_frames,
    run_cli,
    synthetic_dataset,
)

ITERS = {"face": 30, "mouth": 12, "fuse": 6}
ADAPT = ["--preset", "tiny", "--iterations", "30", "--mouth_iterations", "12", "--fuse_iterations", "6",
         "--device", "cpu", "--quiet", "--workers", "0", "--checkpoint_seconds", "0"]
VALIDATE = ["--val_every", "5", "--early_stop", "2"]
PEAK_AT_5 = """
import instag.train.validation as _validation
_validation.validation_score = lambda row: -abs(row["iteration"] - 5)
"""
# with PEAK_AT_5 and patience 2: face checks 5 (best), 10, 15 -> stops at 15; mouth 5 (best), 10, 12 (its last
# step: no early stop); fuse 5 (best), 6
CHECKS = {"face": [5, 10, 15], "mouth": [5, 10, 12], "fuse": [5, 6]}
REACHED = {"face": 15, "mouth": 12, "fuse": 6}


def _run_peaked(*args: str, kill_after: str | None = None) -> subprocess.CompletedProcess:
    env, prelude = cli_env(), PEAK_AT_5
    if kill_after is not None:
        env["INSTAG_KILL_AFTER"] = kill_after
        prelude += KILL_AFTER_RENAME
    code = prelude + f"\nimport runpy, sys\nsys.argv = {['instag', *args]!r}\nrunpy.run_module('instag', run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", errors="replace",
                          env=env, cwd=str(REPO), timeout=300)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("validation")
    clip = synthetic_dataset(tmp / "data" / "clip", size=16, n_train=8, n_val=3)
    pre = pretrained(tmp / "pretrain")
    return {"tmp": tmp, "clip": clip, "common": ["adapt", "-S", str(clip.root), "--pretrain_path", str(pre), *ADAPT]}


@pytest.fixture(scope="module")
def adapted(world):
    """One uninterrupted run with validation and early stopping (and the evaluation)."""
    out = world["tmp"] / "whole"
    proc = _run_peaked(*world["common"], *VALIDATE, "-M", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, proc


def _validation_set(world):
    import torch

    from instag.data.dataset import load_clip
    from instag.train.validation import ValidationSet

    train = load_clip(world["clip"].root, "train", "mel", max_side=128)
    return ValidationSet.for_adaptation(world["clip"].root, train, "mel", 128, 50, False, torch.device("cpu"))


def _tiles(png: Path, rows: int) -> np.ndarray:
    """The grid ``png`` as tiles [rows, 3, h, w, 3] RGB."""
    grid = cv2.imread(str(png))[:, :, ::-1]
    h, w = grid.shape[0] // rows, grid.shape[1] // 3
    return grid.reshape(rows, h, 3, w, 3).transpose(0, 2, 1, 3, 4)


def _check_log(out: Path) -> None:
    log = json.loads((out / "adapt_log.json").read_text())["stages"]
    for stage, checks in CHECKS.items():
        entry = log[stage]
        assert [v["iteration"] for v in entry["validation"]] == checks, (stage, entry["validation"])
        assert entry["reached"] == REACHED[stage], stage
        assert entry["best_iteration"] == 5, stage
        assert entry["early_stopped"] == (stage == "face"), stage
        for row in entry["validation"]:
            assert row["psnr"] > 0 and row["score"] == -abs(row["iteration"] - 5)
            assert {"lmd", "mouth_corr", "mouth_amp", "aue_lower", "aue_upper", "seconds"} <= set(row)
    for stage, reached in REACHED.items():
        product = json.loads((out / f"chkpnt_{stage}_latest.json").read_text())
        assert (product["iteration"], product["iterations"]) == (reached, ITERS[stage]), stage
        assert product["selected_iteration"] == 5 and product["early_stopped"] == (stage == "face"), stage
        assert json.loads((out / f"chkpnt_{stage}_final.json").read_text())["iteration"] == reached, stage
    grids = sorted(p.name for p in (out / "val").glob("*.png"))
    assert grids == sorted(f"{s}_{it:05d}.png" for s, checks in CHECKS.items() for it in checks)
    assert (out / "val" / "progress.mp4").stat().st_size > 0


def test_validation_steps_early_stop_and_the_kept_checkpoint(world, adapted):
    out, proc = adapted
    _check_log(out)
    assert "face stage stopped early at iteration 15; kept the checkpoint of iteration 5" in proc.stdout

    from safetensors.torch import load_file

    # the mouth stage started from the face stage's kept checkpoint (it leaves the face cloud alone)
    face, final, mouth = (load_file(str(out / f"{stem}.safetensors")) for stem in
                          ("chkpnt_face_latest", "chkpnt_face_final", "chkpnt_mouth_latest"))
    assert all(np.array_equal(face[k].numpy(), mouth[k].numpy()) for k in face if k.startswith("face."))
    assert not all(np.array_equal(face[k].numpy(), final[k].numpy()) for k in face if k.startswith("face."))


def test_sample_grids_and_what_evaluation_loads(world, adapted):
    """Grids are ground truth | render | mouth (truth over render) per sample row; the model folder's fused
    checkpoint, which evaluation and synthesis load, renders what the kept check rendered."""
    from instag.model.talking_head import TalkingHead

    out, _ = adapted
    vset = _validation_set(world)
    try:
        rows = len(vset.rows)
        assert rows == 3
        th, tw = vset.tile_size()
        for png in (out / "val").glob("*.png"):
            assert cv2.imread(str(png)).shape == (rows * th, 3 * tw, 3), png.name
        early, late = _tiles(out / "val" / "face_00005.png", rows), _tiles(out / "val" / "face_00015.png", rows)
        assert np.array_equal(early[:, 0], vset.gt[vset.rows])  # ground truth (tiles at the frames' own size)
        assert np.array_equal(early[:, 2, : th // 2], late[:, 2, : th // 2])  # the truth's mouth, the same at every check
        for stem, png in (("chkpnt_fuse_latest", "fuse_00005.png"), ("chkpnt_fuse_final", "fuse_00006.png"),
                          ("chkpnt_mouth_latest", "mouth_00005.png"), ("chkpnt_mouth_final", "mouth_00012.png")):
            frames = vset.render(TalkingHead.load(out, device="cpu", name=stem))
            assert np.array_equal(_tiles(out / "val" / png, rows)[:, 1], frames[vset.rows]), (stem, png)
        kept = vset.render(TalkingHead.load(out, device="cpu"))
    finally:
        vset.close()
    evaluated = [cv2.imread(str(out / "test" / "ours_None" / "renders" / f"{k:05d}.png"))[:, :, ::-1] for k in range(3)]
    assert np.array_equal(np.stack(evaluated), kept)


def test_tensorboard_has_validation_scalars_and_images(adapted):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = adapted
    steps: dict[str, list[int]] = {}
    images: set[str] = set()
    for events in sorted((out / "tb").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            steps.setdefault(tag, []).extend(e.step for e in acc.Scalars(tag))
        images |= set(acc.Tags()["images"])
    for stage, checks in CHECKS.items():
        assert sorted(steps[f"adapt_{stage}/val_psnr"]) == checks, stage
        assert sorted(steps[f"adapt_{stage}/val_score"]) == checks, stage
        assert f"adapt_{stage}/val_samples" in images


@pytest.mark.parametrize("kill_at", [10, 15])
def test_resume_with_validation_on(world, kill_at):
    """Killed right after the state of a check (10), or of the early stop itself (15), then resumed: the same
    checks, stop and kept checkpoints as the uninterrupted run."""
    out = world["tmp"] / f"killed_{kill_at}"
    args = [*world["common"], *VALIDATE, "-M", str(out), "--evaluate", "false"]
    killed = _run_peaked(*args, kill_after=f"train_face.json@{kill_at}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert sorted(p.name for p in (out / "val").glob("*.png")) == [f"face_{it:05d}.png" for it in range(5, kill_at + 1, 5)]
    if kill_at == 15:  # the early stop's state needs the validation flags to be finished
        one_line_error(run_cli(*world["common"], "-M", str(out), "--evaluate", "false", "--resume"),
                       "train_face.safetensors", "--early_stop")
    proc = _run_peaked(*args, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    if kill_at == 10:
        assert "resuming adapt face from iteration 10" in proc.stderr
    else:
        assert "had reached its early stop (iteration 15)" in proc.stderr
    _check_log(out)


def test_validation_leaves_training_unchanged(world):
    """Scoring renders in eval mode: the audio encoders' running statistics, and so the weights, are as without it."""
    from safetensors.torch import load_file

    outs = {}
    for every in ("0", "4"):
        outs[every] = world["tmp"] / f"face_only_{every}"
        proc = run_cli(*world["common"], "--stages", "face", "--iterations", "12", "--val_every", every,
                       "-M", str(outs[every]))
        assert proc.returncode == 0, proc.stderr
    a, b = (load_file(str(o / "chkpnt_face_latest.safetensors")) for o in outs.values())
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert [v["iteration"] for v in json.loads((outs["4"] / "adapt_log.json").read_text())["stages"]["face"]["validation"]] == [4, 8, 12]


def test_early_stop_needs_validation(world):
    one_line_error(run_cli(*world["common"], "--early_stop", "3", "-M", str(world["tmp"] / "refused")), "--val_every")


def test_score_puts_lip_sync_first():
    from instag.train.validation import validation_score

    synced = {"psnr": 25.0, "mouth_corr": 0.8, "mouth_amp": 1.0}
    sharp_but_off = {"psnr": 32.0, "mouth_corr": 0.5, "mouth_amp": 1.0}
    muted = {"psnr": 25.0, "mouth_corr": 0.8, "mouth_amp": 0.4}
    assert validation_score(synced) > validation_score(sharp_but_off) > validation_score(muted)
    assert validation_score({**synced, "psnr": 26.0}) > validation_score(synced)  # image breaks ties
    assert validation_score({"psnr": 25.0, "mouth_corr": None, "mouth_amp": None}) == pytest.approx(-0.5 + 0.5)


@needs_data
def test_validation_metrics_on_real_faces(tmp_path):
    """Lip metrics and AU error of the validation frames: perfect for the ground truth itself, worse for a
    render whose mouth moves out of time."""
    import torch

    from instag.data.dataset import load_clip
    from instag.train.validation import ValidationSet

    clip = synthetic_dataset(tmp_path / "clip", size=256, n_train=2, n_val=8)
    real = read_frames(cut(tmp_path / "may.mp4", seconds=1.2, side=256))[::3][:8]
    for k, frame in enumerate(real):
        cv2.imwrite(str(clip.gt_image(2 + k)), frame)
    val = load_clip(clip.root, "val", "mel")
    vset = ValidationSet(val, list(range(8)), torch.device("cpu"), "test")
    try:
        assert np.isfinite(vset.gt_landmarks).all()
        perfect = vset.score(vset.gt)
        assert perfect["psnr"] == 100.0 and perfect["frames_without_face"] == 0
        assert perfect["lmd"] == 0.0 and perfect["mouth_corr"] == pytest.approx(1.0) and perfect["mouth_amp"] == 1.0
        assert perfect["aue"] == 0.0 and perfect["aue_lower"] == 0.0 and perfect["aue_upper"] == 0.0
        shuffled = vset.score(vset.gt[[3, 7, 1, 5, 0, 6, 2, 4]])
        assert shuffled["mouth_corr"] < 0.9 and shuffled["lmd"] > 0 and shuffled["aue_lower"] > 0
        assert shuffled["psnr"] < 40
        assert shuffled["mouth_amp"] == pytest.approx(1.0)  # the same openings, reordered
        grid = vset.grid(vset.gt)
        assert grid.shape == (3 * 256, 3 * 256, 3)
    finally:
        vset.close()


@needs_data
def test_evaluate_reports_lower_and_upper_face_au_error(tmp_path):
    """``instag evaluate --pred --gt``: AUE and its lower-/upper-face parts (landmark AU estimator), 0 for a video
    against itself."""
    gt = cut(tmp_path / "gt.mp4", seconds=0.8, side=256)
    other = cut(tmp_path / "other.mp4", seconds=0.8, side=256, start=1.6)
    for pred, same in ((gt, True), (other, False)):
        out = tmp_path / f"{pred.stem}.json"
        proc = run_cli("evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(out), "--quiet")
        assert proc.returncode == 0, proc.stderr
        ours = json.loads(out.read_text())["ours"]
        assert ours["aue_source"] == "landmark AU estimator"
        assert ours["aue"] == pytest.approx(ours["aue_lower"] + ours["aue_upper"])  # every AU is in one of the two
        if same:
            assert ours["aue"] == 0.0
        else:
            assert ours["aue_lower"] > 0 and ours["aue_upper"] > 0
        assert "aue_lower" in proc.stdout and "aue_upper" in proc.stdout  # the printed table
