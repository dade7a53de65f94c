"""The instag CLI: typed configs, one-line errors, atomic writes."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from instag.config import parse
from instag.errors import InstagError
from instag.io.atomic import atomic_path, write_json


@dataclasses.dataclass
class _Cfg:
    source_path: str = dataclasses.field(metadata={"flags": ("-S",)})
    iterations: int = 100
    long: bool = False
    audio_extractor: str = dataclasses.field(default="mel", metadata={"choices": ("mel", "hubert")})
    keep: bool = True


def test_parse_dataclass_config():
    cfg = parse(_Cfg, ["-S", "data/x", "--iterations", "7", "--long", "--keep", "false"])
    assert cfg == _Cfg(source_path="data/x", iterations=7, long=True, audio_extractor="mel", keep=False)


def test_parse_rejects_bad_choice():
    with pytest.raises(SystemExit):
        parse(_Cfg, ["-S", "x", "--audio_extractor", "wav2letter"])


def test_error_message_is_one_line():
    err = InstagError("cannot read data/x.mp4:\n  not a video\n  re-encode it")
    assert "\n" not in str(err)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    write_json(target, {"a": 1})
    assert target.read_text().strip().startswith("{")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_path_failing_write_is_one_clear_error(tmp_path, monkeypatch):
    import os

    def full_disk(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(InstagError, match="No space left on device"):
        write_json(tmp_path / "x.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_cli_prints_usage_and_rejects_unknown_command():
    ok = subprocess.run([sys.executable, "-m", "instag", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "synthesize" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "instag", "frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command" in bad.stderr


def test_cli_user_error_is_one_line_without_traceback(tmp_path):
    missing = Path(tmp_path) / "nope" / "nope.mp4"
    res = subprocess.run([sys.executable, "-m", "instag", "process", str(missing)], capture_output=True, text=True)
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr and str(missing) in lines[0]


def test_atomic_outputs_follow_the_umask(tmp_path):
    import os

    write_json(tmp_path / "x.json", {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_checkpoint_tensors_get_the_same_mode_as_their_json(tmp_path):
    """safetensors recreates the file it writes as 0600: the atomic rename still gives it the umask's mode."""
    import os

    import torch

    from instag.model.talking_head import save_tensors
    from instag.train.checkpoint import write_checkpoint

    mask = os.umask(0)
    os.umask(mask)
    save_tensors(tmp_path / "head.safetensors", {"w": torch.zeros(3)})
    write_json(tmp_path / "head.json", {"a": 1})
    write_checkpoint(tmp_path, "chkpnt", {"w": torch.zeros(2)}, {"iteration": 1})
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"head.safetensors": 0o666 & ~mask, "head.json": 0o666 & ~mask,
                     "chkpnt.safetensors": 0o666 & ~mask, "chkpnt.json": 0o666 & ~mask}


def _all_configs():
    from instag.audio.cli import ExportWhisperConfig, FeaturesConfig
    from instag.infer.stream import StreamConfig
    from instag.infer.synthesize import SynthesizeConfig
    from instag.metrics.evaluate import EvaluateConfig
    from instag.preprocess.pipeline import ProcessConfig
    from instag.preprocess.split import SplitConfig
    from instag.serve.app import ServeConfig
    from instag.train.adapt import AdaptConfig
    from instag.train.pretrain import PretrainConfig
    from instag.train.refine import RefineConfig

    return (AdaptConfig, PretrainConfig, RefineConfig, SynthesizeConfig, StreamConfig, EvaluateConfig, ProcessConfig,
            FeaturesConfig, ExportWhisperConfig, SplitConfig, ServeConfig)


@pytest.mark.parametrize("command, argv, words", [
    ("adapt", ["-S", "d", "-M", "m", "--iterations", "-5"], "--iterations -5: out of range; give a value at least 0"),
    ("adapt", ["-S", "d", "-M", "m", "--N_views", "0"], "--N_views 0: out of range; give -1, or a value at least 1"),
    ("adapt", ["-S", "d", "-M", "m", "--checkpoint_seconds", "-1"], "--checkpoint_seconds -1.0: out of range; give a value at least 0"),
    ("pretrain", ["-S", "d", "-M", "m", "--stop_after", "nan"], "--stop_after nan: not a number of any use here"),
    ("process", ["v.mp4", "--max_face_gap", "-1"], "--max_face_gap -1: out of range"),
    ("synthesize", ["-S", "d", "-M", "m", "--audio", "a.wav", "--mouth_scale", "nan"], "--mouth_scale nan"),
    ("synthesize", ["-S", "d", "-M", "m", "--audio", "a.wav", "--reference_db", "inf"], "--reference_db inf"),
    ("stream", ["-S", "d", "-M", "m", "--audio", "a.wav", "--batch", "0"], "--batch 0: out of range"),
    ("split", ["d", "--val_fraction", "1"], "--val_fraction 1.0: out of range; give a value above 0 and below 1"),
    ("evaluate", ["--pred", "p.mp4", "--batch", "-2"], "--batch -2"),
    ("serve", ["-S", "d", "-M", "m", "--jpeg_quality", "101"], "--jpeg_quality 101: out of range; give a value from 1 to 100"),
])
def test_impossible_numbers_are_refused_at_parse_time(command, argv, words, tmp_path):
    """One check in the dataclass-to-argparse layer (field metadata), before any file is read: one line naming the flag."""
    import os

    proc = subprocess.run([sys.executable, "-m", "instag", command, *argv], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], proc.stderr
    assert lines[0].startswith(f"instag {command}: error: ") and not list(tmp_path.iterdir())


def test_every_default_passes_its_own_bounds():
    from instag.config import check_value

    for cls in _all_configs():
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING and f.default is not None:
                check_value(f, f.default)
    assert any("min" in f.metadata for cls in _all_configs() for f in dataclasses.fields(cls))
