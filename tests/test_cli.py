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
