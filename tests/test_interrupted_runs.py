"""Runs killed with SIGKILL at a random point, then re-run (DESIGN §5: never lose work).

* Preprocessing: a killed ``process`` run re-run to the end gives the same files, byte for
  byte, as an uninterrupted run (``meta.json`` up to its step timings), and no temporaries.
* Training: a killed tiny adaptation continued with ``--resume`` completes every stage, and its
  validation metrics match those of an uninterrupted run within noise.

The kill time is drawn at random (the seed is printed in any failure message).
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from badinputs import (
    REPO,
    cli_env,
    corpus,
    meta_without_timings,
    needs_data,
    pretrained,
    run_cli,
    stray_temporaries,
    synthetic_dataset,
    tree,
)


def _kill_at_random(cmd: list[str], out: Path, low: float, high: float, seed: int) -> str:
    """Start ``cmd``, SIGKILL it after a random delay in [low, high] s; returns where it was killed.

    A run that ends by itself first (the machine was faster than the reference run) is deleted
    and started again with a shorter window.
    """
    rng = random.Random(seed)
    env = cli_env()
    for _ in range(4):
        delay = rng.uniform(low, high)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=str(REPO))
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        if proc.wait() == -signal.SIGKILL:
            return f"(seed {seed}: killed after {delay:.2f} s)"
        shutil.rmtree(out, ignore_errors=True)
        high = max(low * 1.01, min(high, 0.8 * (time.perf_counter() - t0)))
        low = min(low, 0.5 * high)
    raise AssertionError(f"seed {seed}: the run always ended before the kill")


@needs_data
def test_killed_preprocessing_rerun_gives_identical_files(tmp_path_factory, tmp_path):
    src = corpus(tmp_path_factory).odd_path()  # a path with spaces and non-ASCII letters on the way
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    t0 = time.perf_counter()
    proc = run_cli("process", str(src), "--out", str(whole))
    full_time = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr

    seed = random.SystemRandom().randrange(1 << 30)
    cmd = [sys.executable, "-m", "instag", "process", str(src), "--out", str(resumed)]
    where = _kill_at_random(cmd, resumed, 1.5, max(2.0, 0.8 * full_time), seed)
    proc = run_cli("process", str(src), "--out", str(resumed))
    assert proc.returncode == 0, f"{where}\n{proc.stderr}"

    assert not stray_temporaries(resumed), f"{where} {stray_temporaries(resumed)}"
    a, b = tree(whole), tree(resumed)
    a.pop("meta.json"), b.pop("meta.json")
    assert sorted(a) == sorted(b), f"{where} only whole: {sorted(set(a) - set(b))[:5]}, only resumed: {sorted(set(b) - set(a))[:5]}"
    differ = sorted(k for k in a if a[k] != b[k])
    assert not differ, f"{where} files differ: {differ[:8]}"
    assert meta_without_timings(whole / "meta.json") == meta_without_timings(resumed / "meta.json")


ADAPT = ["--preset", "tiny", "--iterations", "30", "--mouth_iterations", "12", "--fuse_iterations", "6",
         "--device", "cpu", "--quiet", "--workers", "0", "--checkpoint_seconds", "0.2"]


def _metrics(model: Path) -> dict:
    return json.loads((model / "test" / "ours_None" / "metrics.json").read_text())["ours"]


def test_killed_training_resumes_to_the_same_result(tmp_path):
    clip = synthetic_dataset(tmp_path / "data" / "clip", size=16, n_train=8, n_val=3)
    pre = pretrained(tmp_path / "pretrain")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    common = ["adapt", "-S", str(clip.root), "--pretrain_path", str(pre), *ADAPT]
    t0 = time.perf_counter()
    proc = run_cli(*common, "-M", str(whole))
    full_time = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr

    seed = random.SystemRandom().randrange(1 << 30)
    where = _kill_at_random([sys.executable, "-m", "instag", *common, "-M", str(resumed)], resumed, 2.5,
                            max(3.0, 0.85 * full_time), seed)
    proc = run_cli(*common, "-M", str(resumed), "--resume")
    assert proc.returncode == 0, f"{where}\n{proc.stderr}"
    assert not stray_temporaries(resumed), f"{where} {stray_temporaries(resumed)}"

    log = json.loads((resumed / "adapt_log.json").read_text())
    for stage, total in (("face", 30), ("mouth", 12), ("fuse", 6)):
        meta = json.loads((resumed / f"chkpnt_{stage}_latest.json").read_text())
        assert meta["iteration"] == total, f"{where} {stage}: {meta['iteration']}"
    assert log["stages"].get("fuse", {}).get("reached") == 6, where
    ours, theirs = _metrics(whole), _metrics(resumed)
    assert abs(ours["psnr"] - theirs["psnr"]) < 1.5, f"{where} PSNR {ours['psnr']:.2f} vs {theirs['psnr']:.2f}"
    assert abs(ours["ssim"] - theirs["ssim"]) < 0.05, f"{where} SSIM {ours['ssim']:.3f} vs {theirs['ssim']:.3f}"

    # and a kill right after the first mid-stage checkpoint: the resumed run continues from it
    mid = tmp_path / "mid"
    proc = subprocess.Popen([sys.executable, "-m", "instag", *common, "-M", str(mid), "--evaluate", "false"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env(), cwd=str(REPO))
    state = mid / "train_face.json"
    while proc.poll() is None and not state.exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reached = json.loads(state.read_text())["iteration"]
    assert 0 < reached < 30, reached
    proc = run_cli(*common, "-M", str(mid), "--evaluate", "false", "--resume")
    assert proc.returncode == 0, proc.stderr
    assert f"resuming adapt face from iteration {reached}" in proc.stderr
    assert json.loads((mid / "chkpnt_fuse_latest.json").read_text())["iteration"] == 6


def test_resume_from_a_damaged_state_is_refused_clearly(tmp_path):
    """State files damaged by a crash elsewhere (or a bad copy): one line naming the file, no traceback."""
    import shutil

    from badinputs import corrupt, one_line_error

    clip = synthetic_dataset(tmp_path / "data" / "clip", size=16, n_train=8, n_val=2)
    pre = pretrained(tmp_path / "pretrain")
    out = tmp_path / "out"
    common = ["adapt", "-S", str(clip.root), "--pretrain_path", str(pre), *ADAPT, "--evaluate", "false"]
    proc = run_cli(*common, "-M", str(out), "--stop_after", "0.000001")
    assert proc.returncode == 3, proc.stderr  # stopped early on purpose: resumable
    for k, target in enumerate(("train_face.optim.pt", "train_face.safetensors", "train_face.json")):
        copy = tmp_path / f"damaged{k}"
        shutil.copytree(out, copy)
        if target.endswith(".json"):
            (copy / target).write_text("{ not json")
        else:
            corrupt(copy / target)
        one_line_error(run_cli(*common, "-M", str(copy), "--resume"), target)


def _state_iteration(folder: Path, stem: str) -> int:
    return json.loads((folder / f"{stem}.json").read_text())["iteration"]


def test_training_killed_at_every_stage_boundary_resumes(tmp_path):
    """Deterministic kills at each boundary a random kill can hit: right after a stage's last state
    checkpoint (before its products are written), between stages, and after the last stage."""
    clip = synthetic_dataset(tmp_path / "data" / "clip", size=16, n_train=8, n_val=2)
    pre = pretrained(tmp_path / "pretrain")
    common = ["adapt", "-S", str(clip.root), "--pretrain_path", str(pre), *ADAPT]
    totals = {"face": 30, "mouth": 12, "fuse": 6}
    for stage, total in totals.items():
        # killed right after train_<stage>.json reached the stage's last iteration
        out = tmp_path / f"last_state_{stage}"
        killed = run_cli(*common, "-M", str(out), "--evaluate", "false", kill_after=f"train_{stage}.json@{total}")
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert _state_iteration(out, f"train_{stage}") == total
        proc = run_cli(*common, "-M", str(out), "--evaluate", "false", "--resume")
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
        for name, n in totals.items():
            assert _state_iteration(out, f"chkpnt_{name}_latest") == n, (stage, name)
        log = json.loads((out / "adapt_log.json").read_text())
        assert [log["stages"][s]["reached"] for s in totals] == list(totals.values()), log["stages"]

    # killed between stages: the face products are complete, the mouth stage has not begun
    out = tmp_path / "between"
    killed = run_cli(*common, "-M", str(out), "--evaluate", "false", kill_after="chkpnt_face_latest.json@30")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "train_mouth.json").exists()
    proc = run_cli(*common, "-M", str(out), "--evaluate", "false", "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "face stage already complete" in proc.stdout + proc.stderr
    assert _state_iteration(out, "chkpnt_fuse_latest") == 6

    # killed after the last stage's products, before the evaluation: a resume only evaluates
    out = tmp_path / "after_last"
    killed = run_cli(*common, "-M", str(out), kill_after="chkpnt_fuse_latest.json@6")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    proc = run_cli(*common, "-M", str(out), "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "fuse stage already complete" in proc.stdout + proc.stderr
    assert _metrics(out)["psnr"] > 0


def test_pretraining_killed_at_its_stage_boundaries_resumes(tmp_path):
    clips = [synthetic_dataset(tmp_path / "data" / name, size=16, n_train=6, n_val=0, seed=k)
             for k, name in enumerate(("a", "b"))]
    common = ["pretrain", "-S", str(clips[0].root.parent), "--preset", "tiny", "--iterations", "12",
              "--mouth_iterations", "6", "--device", "cpu", "--quiet", "--workers", "0", "--audio_extractor", "mel"]
    for stem, total in (("train_pretrain_face.json", 12), ("train_pretrain_mouth.json", 6)):
        out = tmp_path / stem.split(".")[0]
        killed = run_cli(*common, "-M", str(out), kill_after=f"{stem}@{total}")
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        proc = run_cli(*common, "-M", str(out), "--resume")
        assert proc.returncode == 0, proc.stderr
        assert "internal error" not in proc.stderr, proc.stderr
        for stage, n in (("face", 12), ("mouth", 6)):
            assert json.loads((out / f"chkpnt_ema_{stage}_latest.json").read_text())["iteration"] == n, (stem, stage)


def _signal_once_training(cmd: list[str], sig: int) -> tuple[int, str]:
    """Start ``cmd``, send ``sig`` a moment after its face stage's progress bar appears; returns (exit code, stderr)."""
    import os

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env(), cwd=str(REPO))
    seen = b""
    while b"adapt face:" not in seen and b"pretrain face:" not in seen:
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, seen.decode(errors="replace")
        seen += chunk
    time.sleep(1.0)
    proc.send_signal(sig)
    rest = proc.stderr.read()
    return proc.wait(timeout=120), (seen + rest).decode(errors="replace")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_signal_during_training_saves_and_prints_the_resume_command(tmp_path, sig):
    """Ctrl-C or SIGTERM mid-stage (no periodic checkpoint yet): the step under way ends, a resumable state is
    saved, and the last line gives the --resume command, which continues from that very iteration."""
    import shlex

    clip = synthetic_dataset(tmp_path / "data" / "clip", size=16, n_train=8, n_val=3)
    pre = pretrained(tmp_path / "pretrain")
    out = tmp_path / "out"
    args = ["adapt", "-S", str(clip.root), "--pretrain_path", str(pre), "-M", str(out), "--preset", "tiny",
            "--iterations", "20000", "--device", "cpu", "--workers", "0", "--checkpoint_seconds", "1000",
            "--evaluate", "false"]
    code, err = _signal_once_training([sys.executable, "-m", "instag", *args], sig)
    assert code == 128 + sig, err
    last = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()][-1]
    word = "interrupted" if sig == signal.SIGINT else "terminated"
    assert last.startswith(f"instag adapt: {word}; saved face iteration "), last
    reached = int(last.split("face iteration ")[1].split("/")[0])
    assert 0 < reached < 20000, last
    assert json.loads((out / "train_face.json").read_text())["iteration"] == reached
    assert json.loads((out / "chkpnt_face_latest.json").read_text())["iteration"] == reached
    assert json.loads((out / "adapt_log.json").read_text())["stages"]["face"]["reached"] == reached
    assert not stray_temporaries(out)

    command = shlex.split(last.split("continue with: ")[1])
    assert command[:2] == ["instag", "adapt"] and "--resume" in command
    proc = run_cli(*command[1:], "--stop_after", "0.000001")
    assert proc.returncode == 3, proc.stderr
    assert f"resuming adapt face from iteration {reached}" in proc.stderr
