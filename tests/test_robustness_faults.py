"""Crashes, hangs and partial outputs (issue 14), through the real commands in a subprocess.

- a sound track that ends before the picture is refused at the audio step and leaves nothing; one that
  runs past it is cut at the last frame; any exception, not only ours, puts the folder back;
- audio and frame counts that do not divide evenly at the clip's end (evaluate's static baseline, the
  offset check's envelope);
- SIGTERM cleans up like Ctrl-C (synthesis staging), staging folders of dead runs are swept, a failed
  mux in ``stream`` leaves nothing; a fresh folder holding a file called ``ori_imgs`` is left as it was;
- an error in a DataLoader worker is one line, as in the main process.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from badinputs import (
    CLIP,
    QUICK_ADAPT,
    REPO,
    X264,
    cli_env,
    corpus,
    ffmpeg,
    fused_model,
    meta_without_timings,
    needs_data,
    one_line_error,
    pretrained,
    run_cli,
    synthetic_dataset,
    tree,
)

from instag.io import folders


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    clip = synthetic_dataset(root / "data" / "clip", size=16, n_train=8, n_val=4)
    return {"root": root, "clip": clip, "model": fused_model(root / "model"), "corpus": corpus(tmp_path_factory)}


def synth_args(world, wav: Path, out: Path, *extra: str) -> list[str]:
    return ["synthesize", "-S", str(world["clip"].root), "-M", str(world["model"]), "--audio", str(wav), "--device", "cpu",
            "--output", str(out), "--quiet", *extra]


# ------------------------------------------------------------------------------------------- sound vs picture
@needs_data
def test_sound_ending_before_the_picture_is_refused_leaving_nothing(tmp_path):
    video = tmp_path / "src" / "short sound.mp4"
    video.parent.mkdir()
    ffmpeg("-i", str(CLIP), "-t", "1.6", "-vf", "scale=256:256", "-af", "atrim=end=0.4", *X264, "-c:a", "aac", str(video))
    out = tmp_path / "out"
    one_line_error(run_cli("process", str(video), "--out", str(out)), str(video), "sound ends at 0.4", "picture runs to 1.60")
    assert not out.exists()


@needs_data
def test_process_puts_the_folder_back_after_an_internal_error(world, tmp_path):
    """Not only our own error type: an IndexError in a late step still restores a fresh folder (nothing left)."""
    video = world["corpus"].good()
    out = tmp_path / "out"
    prelude = ("import instag.preprocess.background as b\n"
               "def boom(*a, **k):\n    raise IndexError('index 40 is out of bounds')\n"
               "b.run = boom\n"
               f"import runpy, sys; sys.argv = ['instag', 'process', {str(video)!r}, '--out', {str(out)!r}]\n"
               "runpy.run_module('instag', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", prelude], capture_output=True, text=True, env=cli_env(), cwd=str(REPO),
                          timeout=300)
    assert proc.returncode == 1 and "internal error: IndexError" in proc.stderr, proc.stderr
    assert not out.exists()


@needs_data
def test_sound_past_the_picture_and_a_damaged_meta_json_are_handled(tmp_path):
    """Sound 0.8 s longer than the picture: aud.wav ends with the last frame (no "truncated" refusal); a meta.json
    of another shape in the folder means every step runs anew."""
    video = tmp_path / "A" / "A.mp4"
    video.parent.mkdir()
    ffmpeg("-i", str(CLIP), "-i", str(CLIP), "-map", "0:v", "-map", "1:a", "-vf", "scale=256:256,trim=end=1.2",
           "-af", "atrim=end=2.0", *X264, "-c:a", "aac", str(video))
    (video.parent / "meta.json").write_text(json.dumps({"steps": ["audio"], "num_frames": "30"}))
    proc = run_cli("process", str(video))
    assert proc.returncode == 0, proc.stderr
    assert "sound runs 0.80 s past the picture's end (1.20 s)" in proc.stdout
    assert "meta.json: unreadable or not written by instag process; every step runs anew" in proc.stdout
    from instag.io.wav import read_wav

    samples, rate = read_wav(video.parent / "aud.wav")
    meta = meta_without_timings(video.parent / "meta.json")
    assert meta["num_frames"] == 30 and samples.shape == (30 * 640,) and rate == 16000
    assert all(record["done"] for record in meta["steps"].values()) and len(meta["steps"]) == 13


def test_offset_envelope_and_speech_energy_past_the_end_of_the_audio():
    """Fewer samples than frames (audio that ends early, 388,083 samples for 607 frames): silence past the end."""
    from instag.audio.activity import speech_envelope
    from instag.metrics.evaluate import speech_energy
    from instag.preprocess.av_sync import estimate_offset

    rng = np.random.default_rng(0)
    samples = rng.standard_normal(388_083).astype(np.float32)
    energy = speech_energy(samples, 610)
    assert energy.shape == (610,) and (energy[607:] == 0).all() and (energy[:600] > 0.5).all()
    envelope = speech_envelope(samples[:16000], 125)  # 1 s of sound for 5 s of picture
    assert envelope.shape == (125,) and np.ptp(envelope[40:]) == 0 and envelope[:20].min() > envelope[60]
    offset, confidence = estimate_offset(rng.random(125), samples[:16000])
    assert isinstance(offset, int) and np.isfinite(confidence)


def test_evaluate_with_audio_ending_inside_the_last_frames(world, tmp_path):
    """The static baseline's quietest-frame search on an aud.wav three and a bit frames short of the video."""
    from instag.io.wav import read_wav, write_wav

    clip = tmp_path / "clip"
    import shutil

    shutil.copytree(world["clip"].root, clip)
    samples, rate = read_wav(clip / "aud.wav")
    write_wav(clip / "aud.wav", samples[: samples.size - 3 * 640 - 557], rate)
    proc = run_cli("evaluate", "-S", str(clip), "-M", str(world["model"]), "--device", "cpu", "--quiet",
                   "--out", str(tmp_path / "report"))
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["frames"] == 4 and "quietest frame" in metrics["static_audio"]


# ------------------------------------------------------------------------------------------- signals and staging
def staging_dirs(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"{folders.STAGING_PREFIX}*"))


def test_sigterm_during_synthesis_leaves_nothing(world, tmp_path):
    wav = world["corpus"].wav("long speech", seconds=40.0)
    out = tmp_path / "out" / "talk.mp4"
    with open(tmp_path / "stderr.txt", "w") as err:
        run = subprocess.Popen([sys.executable, "-m", "instag", *synth_args(world, wav, out, "--save_frames")],
                               stdout=subprocess.DEVNULL, stderr=err, env=cli_env(), cwd=str(REPO))
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and run.poll() is None:  # until frames are being staged
            staged = staging_dirs(out.parent)
            if staged and len(list(staged[0].glob("frames/*.png"))) >= 5:
                break
            time.sleep(0.05)
        assert run.poll() is None, (tmp_path / "stderr.txt").read_text()
        run.send_signal(signal.SIGTERM)
        code = run.wait(timeout=120)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert code == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines()[-1] == "instag synthesize: terminated", stderr
    assert sorted(out.parent.iterdir()) == [], sorted(out.parent.rglob("*"))


def test_staging_folders_of_dead_runs_are_swept(world, tmp_path):
    out = tmp_path / "talk.mp4"
    dead = tmp_path / f"{folders.STAGING_PREFIX}dead1234"  # a killed run's: its lock file is free
    (dead / "frames").mkdir(parents=True)
    (dead / folders.LOCK_NAME).touch()
    (dead / "video.mp4").write_bytes(b"partial")
    alive = tmp_path / f"{folders.STAGING_PREFIX}alive123"  # a running one's: locked
    alive.mkdir()
    fd = os.open(alive / folders.LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        proc = run_cli(*synth_args(world, world["corpus"].wav("speech", seconds=0.4), out))
    finally:
        os.close(fd)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "talk.mp4"]


def test_stream_mux_failure_leaves_nothing(world, tmp_path):
    out = tmp_path / "out" / "o.mp4"
    proc = run_cli("stream", "-S", str(world["clip"].root), "-M", str(world["model"]), "--audio",
                   str(world["corpus"].wav("speech", seconds=0.4)), "--device", "cpu", "--output", str(out), "--quiet",
                   fail_writes_after=1)  # the silent video is written, then writing the muxed one fails
    one_line_error(proc, str(out), "No space left on device")
    assert sorted(out.parent.rglob("*")) == []


@needs_data
def test_fresh_folder_with_a_file_where_a_folder_goes_is_left_as_it_was(world, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "ori_imgs").write_text("my notes, not frames")
    before = tree(out)
    one_line_error(run_cli("process", str(world["corpus"].good()), "--out", str(out)), str(out / "ori_imgs"))
    assert tree(out) == before and sorted(p.name for p in out.iterdir()) == ["ori_imgs"]


# ------------------------------------------------------------------------------------------- data-loader workers
def test_error_in_a_data_loader_worker_is_one_line(world, tmp_path):
    import shutil

    clip = tmp_path / "clip"
    shutil.copytree(world["clip"].root, clip)
    for i in range(1, 12):  # frame 0 stays readable: the clip's size is read from it in the main process
        (clip / "gt_imgs" / f"{i}.jpg").write_bytes(b"not a jpeg")
    proc = run_cli("adapt", "-S", str(clip), "-M", str(tmp_path / "out"), "--pretrain_path",
                   str(pretrained(tmp_path / "pre")), *QUICK_ADAPT, "--workers", "1")
    line = one_line_error(proc, str(clip / "gt_imgs"), "cannot read image", "re-run preprocessing")
    assert "DataLoader" not in line and "Caught" not in line
