"""Bad input and faults in synthesis and evaluation (``instag synthesize`` / ``synthesize_fuse.py`` /
``instag evaluate``), through the real CLI.

Driving audio: stereo 44.1/48 kHz, 24-bit WAVE_FORMAT_EXTENSIBLE, silence, too short, not a wav,
features of another extractor; the model: missing, corrupted, another extractor; the data folder
empty; the output folder unmakeable, the disk full; odd characters in every path. Each fails with
exit code 2 and one line naming the file (no traceback, no partial mp4 or temporaries), or is
handled and the result checked. The model is an untrained fused head on a 16-px generated clip.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from badinputs import (
    DATA,
    Corpus,
    corrupt,
    fused_model,
    one_line_error,
    run_cli,
    stray_temporaries,
    synthetic_dataset,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer_world")
    clip = synthetic_dataset(root / "data" / "clip", size=16, n_train=8, n_val=4)
    return {"root": root, "clip": clip, "model": fused_model(root / "model"), "audio": Corpus(root / "audio")}


def synth(world, audio: Path, *extra: str, model: Path | None = None, source: Path | None = None, wrapper=None, **kw):
    args = ["-S", str(source or world["clip"].root), "-M", str(model or world["model"]), "--audio", str(audio),
            "--device", "cpu", *extra]
    if wrapper:
        return run_cli(*args, wrapper=wrapper, **kw)
    return run_cli("synthesize", *args, **kw)


def video_facts(path: Path) -> tuple[int, bool, float]:
    """(frames, has audio, audio seconds) of an mp4."""
    from instag.io.video import probe, read_audio

    info = probe(path, require_audio=False)
    seconds = read_audio(path).size / 16000 if info.has_audio else 0.0
    return info.num_frames, info.has_audio, seconds


# ------------------------------------------------------------------------------- handled audio
@pytest.mark.parametrize("rate", [44100, 48000])
def test_stereo_high_rate_wav_drives_synthesis(world, tmp_path, rate):
    wav = world["audio"].wav(f"stereo_{rate}", seconds=0.8, rate=rate, channels=2)
    out = tmp_path / "out.mp4"
    proc = synth(world, wav, "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    frames, has_audio, seconds = video_facts(out)
    assert frames == 20 and has_audio and abs(seconds - 0.8) < 0.1
    assert not stray_temporaries(tmp_path) and sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_24bit_extensible_wav_is_read():
    """Python's wave module rejects WAVE_FORMAT_EXTENSIBLE / 24-bit files; ours reads them."""
    from instag.infer.features import audio_items

    wav = DATA / "audio" / "sadtalker_deyu_de.wav"
    if not wav.exists():
        pytest.skip(f"{wav} not found (../shared/data beside the repository)")
    items, info = audio_items(wav, "mel")
    assert items.shape[0] == pytest.approx(9.3 * 25, abs=3) and np.isfinite(items.numpy()).all()


def test_silent_wav_gives_a_closed_mouth_video(world, tmp_path):
    wav = world["audio"].wav("silence", seconds=0.6, silent=True)
    out = tmp_path / "silent.mp4"
    proc = synth(world, wav, "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert video_facts(out)[0] == 15


def test_odd_paths_through_the_upstream_wrapper(world, tmp_path):
    wav_dir = tmp_path / "new speech ü"
    wav_dir.mkdir()
    wav = wav_dir / "Zoë's line 日本.wav"
    shutil.copy(world["audio"].wav("speech", seconds=0.4), wav)
    out = tmp_path / "out dir é" / "clip 1.mp4"
    proc = synth(world, wav, "--output", str(out), wrapper="synthesize_fuse.py")
    assert proc.returncode == 0, proc.stderr
    assert video_facts(out)[:2] == (10, True)


# ------------------------------------------------------------------------------- refused audio
def test_not_a_wav(world, tmp_path):
    fake = tmp_path / "speech.wav"
    fake.write_text("not audio\n" * 50)
    one_line_error(synth(world, fake, "--output", str(tmp_path / "o.mp4")), str(fake))
    assert not (tmp_path / "o.mp4").exists()


def test_missing_audio(world, tmp_path):
    one_line_error(synth(world, tmp_path / "nope.wav"), "nope.wav", "not found")


def test_audio_too_short_for_one_frame(world, tmp_path):
    wav = world["audio"].wav("blip", seconds=0.01)
    one_line_error(synth(world, wav, "--output", str(tmp_path / "o.mp4")), str(wav))
    assert not (tmp_path / "o.mp4").exists()


def test_features_of_another_extractor(world, tmp_path):
    feats = tmp_path / "speech_hu.npy"
    np.save(feats, np.zeros((20, 2, 1024), np.float32))  # HuBERT layout for a mel model
    one_line_error(synth(world, feats), str(feats), "another extractor")


# ------------------------------------------------------------------------------- model and data
def test_missing_model(world, tmp_path):
    one_line_error(synth(world, world["audio"].wav("speech", seconds=0.4), model=tmp_path / "nomodel"),
                   "chkpnt_fuse_latest.safetensors", "adapt one first: instag adapt")


def test_corrupted_model(world, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(world["model"], model)
    corrupt(model / "chkpnt_fuse_latest.safetensors")
    one_line_error(synth(world, world["audio"].wav("speech", seconds=0.4), model=model),
                   str(model / "chkpnt_fuse_latest.safetensors"), "corrupt")


def test_model_json_missing_or_damaged(world, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(world["model"], model)
    (model / "chkpnt_fuse_latest.json").write_text("{ truncated")
    one_line_error(synth(world, world["audio"].wav("speech", seconds=0.4), model=model), "chkpnt_fuse_latest.json")
    (model / "chkpnt_fuse_latest.json").unlink()
    one_line_error(synth(world, world["audio"].wav("speech", seconds=0.4), model=model), "chkpnt_fuse_latest")


def test_model_of_another_extractor(world):
    one_line_error(synth(world, world["audio"].wav("speech", seconds=0.4), "--audio_extractor", "hubert"),
                   str(world["model"]), "--audio_extractor mel")


def test_empty_data_folder(world, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(synth(world, world["audio"].wav("speech", seconds=0.4), source=empty), str(empty), "instag process")
    one_line_error(run_cli("evaluate", "-S", str(empty), "-M", str(world["model"]), "--device", "cpu"), str(empty))


# ------------------------------------------------------------------------------- output and faults
def test_unwritable_output(world, tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("x")
    one_line_error(synth(world, world["audio"].wav("speech", seconds=0.4), "--output", str(blocker / "o.mp4")), str(blocker))
    assert blocker.read_text() == "x"


def test_full_disk_leaves_no_partial_video(world, tmp_path):
    out = tmp_path / "out" / "o.mp4"
    proc = synth(world, world["audio"].wav("speech", seconds=0.4), "--output", str(out), "--save_frames",
                 fail_writes_after=3)
    one_line_error(proc, "No space left on device", str(out.with_suffix("")))
    assert not out.exists()
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not leftovers, leftovers


def test_evaluate_two_videos_refuses_a_broken_one(world, tmp_path):
    pytest.importorskip("mediapipe")
    from badinputs import CLIP

    if not CLIP.exists():
        pytest.skip(f"{CLIP} not found")
    bad = Corpus(tmp_path / "c")
    good, truncated = bad.good(), bad.truncated()
    one_line_error(run_cli("evaluate", "--pred", str(truncated), "--gt", str(good)), str(truncated), "truncated")
    notvideo = bad.not_a_video()
    one_line_error(run_cli("evaluate", "--pred", str(good), "--gt", str(notvideo)), str(notvideo))
