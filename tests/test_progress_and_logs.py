"""What a user sees on the terminal: fast ``--help`` with defaults, one kind of boolean flag, a start line and a
progress bar for synthesis, evaluation and streaming, no MediaPipe/TFLite log noise unless ``--debug``, and
refusals that leave nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from badinputs import ffmpeg, needs_data

from instag.config import parse
from instag.errors import InstagError

REPO = Path(__file__).resolve().parents[1]
NOISE = ("inference_feedback_manager.cc", "Using NORM_RECT without IMAGE_DIMENSIONS",
         "Created TensorFlow Lite XNNPACK delegate", "absl::InitializeLog")


def _quiet_env() -> dict[str, str]:
    """The environment of a user's shell: none of the log-level variables the other CLI tests set."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLOG_minloglevel", "TF_CPP_MIN_LOG_LEVEL")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}


# ------------------------------------------------------------------------------------------ --help
HELP_WITHOUT_TORCH = """
import runpy, sys
from instag.cli import run_command
for name in ("process", "features", "pretrain", "synthesize", "stream", "evaluate"):
    try:
        run_command(name, ["--help"])
    except SystemExit:
        pass
sys.argv = ["instag", "adapt", "--help"]
try:
    runpy.run_module("instag", run_name="__main__")
except SystemExit:
    pass
print("torch imported:", "torch" in sys.modules)
"""


def test_help_answers_without_importing_torch():
    proc = subprocess.run([sys.executable, "-c", HELP_WITHOUT_TORCH], capture_output=True, text=True, env=_quiet_env(),
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("usage: instag") == 7
    assert proc.stdout.rstrip().endswith("torch imported: False")


def _help(cls, prog: str, capsys) -> str:
    with pytest.raises(SystemExit):
        parse(cls, ["--help"], prog=prog)
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_help_shows_defaults_and_stage_names(capsys):
    from instag.infer.synthesize import SynthesizeConfig
    from instag.train.adapt import AdaptConfig
    from instag.train.pretrain import PretrainConfig

    adapt = _help(AdaptConfig, "instag adapt", capsys)
    assert "--pretrain_path PRETRAIN_PATH pre-training folder (or one of its checkpoint files) (default: output/pretrain_model)" in adapt
    assert "of face, mouth, fuse (default: face,mouth,fuse)" in adapt
    assert "--N_views N_VIEWS use the first N training frames (250 = 10 s); -1 = all (default: -1)" in adapt
    assert "of face, mouth (default: face,mouth)" in _help(PretrainConfig, "instag pretrain", capsys)
    synth = _help(SynthesizeConfig, "instag synthesize", capsys)
    assert "--batch BATCH frames rendered per batch (default: 8)" in synth
    # a default that the help text explains already is not repeated, and None is never printed
    assert "(default output/<ID>/inference/<audio name>.mp4)" in synth and "default: None" not in synth


def test_dilate_is_one_kind_of_flag_in_adapt_synthesize_and_evaluate(capsys):
    from instag.infer.synthesize import SynthesizeConfig
    from instag.metrics.evaluate import EvaluateConfig
    from instag.train.adapt import AdaptConfig

    required = {AdaptConfig: ["-S", "d", "-M", "m"], SynthesizeConfig: ["-S", "d", "-M", "m", "--audio", "a.wav"],
                EvaluateConfig: []}
    defaults = {AdaptConfig: True, SynthesizeConfig: True, EvaluateConfig: False}
    for cls, base in required.items():
        assert re.search(r"--dilate \[BOOL\] dilate the mouth alpha 13x13 before compositing.*?\(default: "
                         f"{str(defaults[cls]).lower()}\\)", _help(cls, "instag", capsys))
        assert parse(cls, base).dilate is defaults[cls]
        assert parse(cls, [*base, "--dilate"]).dilate is True
        assert parse(cls, [*base, "--dilate", "false"]).dilate is False
        assert parse(cls, [*base, "--dilate", "true"]).dilate is True


def test_unknown_stage_is_refused_naming_the_stages():
    from instag.train.config import STAGES, stage_list

    assert stage_list(" face, fuse ", STAGES) == ["face", "fuse"]
    for bad in ("face,mouht", ""):
        with pytest.raises(InstagError, match="comma list of face, mouth, fuse"):
            stage_list(bad, STAGES)


# ------------------------------------------------------------------------------------------ progress
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A generated processed clip (48², 12 training and 8 validation frames) and a fused random-init head."""
    import torch
    from synthetic_clip import make_clip, speech

    from instag.io.wav import write_wav
    from instag.model.talking_head import TalkingHead

    root = tmp_path_factory.mktemp("data") / "tiny"
    make_clip(root, size=48, n_train=12, n_val=8)
    model_dir = tmp_path_factory.mktemp("output") / "tiny"
    TalkingHead.create("mel", (80, 16), face_init=300, mouth_init=100, generator=torch.Generator().manual_seed(0)).save(model_dir)
    wav = root.parent / "speech.wav"
    write_wav(wav, speech(20, seed=1)[0], 16000)  # 0.8 s = 20 frames
    return {"root": str(root), "model": str(model_dir), "wav": str(wav)}


def _bar_finished(err: str, desc: str, total: int) -> bool:
    return bool(re.search(rf"{desc}: 100%\|[^\n\r]*\| {total}/{total} ", err))


def test_synthesize_evaluate_and_stream_print_a_start_line_and_a_progress_bar(tiny, capsys):
    from instag.infer import stream, synthesize
    from instag.metrics import evaluate

    common = ["-S", tiny["root"], "-M", tiny["model"], "--device", "cpu"]
    assert synthesize.main([*common, "--audio", tiny["wav"]]) == 0
    out, err = capsys.readouterr()
    assert "instag synthesize: 20 frames (0.80 s) at 48x48 on cpu -> " in out
    assert _bar_finished(err, "synthesize", 20)

    assert evaluate.main(common) == 0
    out, err = capsys.readouterr()
    assert f"instag evaluate: rendering 8 validation frames of {tiny['root']} at 48x48 on cpu with the static baseline" in out
    assert _bar_finished(err, "evaluate", 8)

    assert stream.main([*common, "--audio", tiny["wav"], "--realtime", "false"]) == 0
    out, err = capsys.readouterr()
    assert "instag stream: 20 frames (0.80 s) at 48x48 on cpu in 200-ms chunks -> " in out
    assert _bar_finished(err, "stream", 20)

    assert synthesize.main([*common, "--audio", tiny["wav"], "--quiet"]) == 0
    assert "synthesize:" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ log noise
NATIVE_WRITES = r"""
import os, subprocess, sys
from instag.io.native_stderr import filter_native_stderr
with filter_native_stderr():
    os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    os.write(2, b"W0000 00:00:1796451451.301107   9850 inference_feedback_manager.cc:114] Feedback manager ...\n")
    os.write(2, b"I0000 00:00:1796451451.451288   9851 gl_context.cc:357] GL version: 3.2\n")
    os.write(2, b"E0000 00:00:1796451451.451288   9851 calculator_graph.cc:887] a real error\n")
    os.write(2, b"an unknown native line\n")
    subprocess.run(["sh", "-c", "echo 'a child process line' >&2"], check=True)
    print("a python line", file=sys.stderr)
os.write(2, b"W0000 00:00:1796451451.301107   9850 after.cc:1] outside the block\n")
"""


def test_native_log_noise_is_dropped_and_everything_else_kept():
    proc = subprocess.run([sys.executable, "-c", NATIVE_WRITES], capture_output=True, text=True, env=_quiet_env(),
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    kept = proc.stderr.splitlines()
    assert sorted(kept) == sorted([
        "E0000 00:00:1796451451.451288   9851 calculator_graph.cc:887] a real error", "an unknown native line",
        "a child process line", "a python line", "W0000 00:00:1796451451.301107   9850 after.cc:1] outside the block"])


@needs_data
def test_preprocessing_stderr_has_no_mediapipe_noise_unless_debug(tmp_path):
    from badinputs import cut

    video = cut(tmp_path / "clip" / "clip.mp4", seconds=1.2, side=256)
    proc = subprocess.run([sys.executable, "-m", "instag", "process", str(video)], capture_output=True, text=True,
                          env=_quiet_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "frames ready" in proc.stdout
    assert not [n for n in NOISE if n in proc.stderr], proc.stderr[-3000:]
    debug = subprocess.run([sys.executable, "-m", "instag", "process", str(video), "--task", "landmarks", "--debug"],
                           capture_output=True, text=True, env=_quiet_env(), timeout=600)
    assert debug.returncode == 0, debug.stderr
    assert "inference_feedback_manager.cc" in debug.stderr  # what the filter hides is really there


# ------------------------------------------------------------------------------------------ refusals
def test_lip_report_without_any_face_is_one_error_and_writes_nothing(tmp_path):
    pytest.importorskip("mediapipe")
    from instag.metrics.evaluate import main

    video = tmp_path / "synth.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=128x128:d=1:r=25", "-f", "lavfi", "-i", "sine=frequency=300:d=1",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(video))
    with pytest.raises(InstagError, match=r"no face found in any of the 25 frames of .*synth\.mp4"):
        main(["--pred", str(video), "--quiet"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth.mp4"]


def test_refused_adapt_leaves_no_output_folder(tmp_path):
    from instag.train.adapt import AdaptConfig, adapt

    pretrained = tmp_path / "pretrain_model"
    pretrained.mkdir()
    (pretrained / "chkpnt_ema_face_latest.json").write_text('{"audio_extractor": "mel"}')
    unprocessed = tmp_path / "data" / "new"
    unprocessed.mkdir(parents=True)
    existing = tmp_path / "existing"
    existing.mkdir()
    for out in (tmp_path / "output" / "new", existing):
        cfg = AdaptConfig(source_path=str(unprocessed), model_path=str(out), pretrain_path=str(pretrained), device="cpu",
                          quiet=True)
        with pytest.raises(InstagError, match="transforms_train.json"):
            adapt(cfg, log=lambda *_: None)
    assert not (tmp_path / "output").exists()  # the folders this run made are gone
    assert existing.is_dir() and not any(existing.iterdir())  # the one the user had is kept


# ------------------------------------------------------------------------------------------ debug overlays
def test_debug_caption_is_drawn_once():
    from instag.preprocess.debug import _label

    img = _label(np.full((40, 320, 3), 128, np.uint8), "frame 0: landmarks")
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    white, dark = np.flatnonzero((gray > 230).any(0)), np.flatnonzero((gray < 30).any(0))
    # the outline hugs the letters: it ends within its 1-pixel shift (plus anti-aliasing) of the white text
    assert abs(int(dark.max()) - int(white.max())) <= 2 and abs(int(dark.min()) - int(white.min())) <= 2
