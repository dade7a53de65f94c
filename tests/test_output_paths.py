"""No command writes over one of its own inputs, or over a file of a kind it does not make (issue 26).

``instag features --wav user.wav --out user.wav`` used to replace the recording with the ``.npy``. Every
command that takes an output file name checks it in one place (:func:`instag.io.atomic.check_output`) before
any work: ``features``, ``export-whisper``, ``synthesize``/``stream`` (``check_video_output``), ``evaluate
--pred/--gt --out`` and ``report --out``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from badinputs import one_line_error, run_cli

from instag.errors import InstagError
from instag.io.atomic import check_output
from instag.io.wav import write_wav


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_check_output_refuses_inputs_folders_and_other_kinds(tmp_path):
    wav = tmp_path / "user.wav"
    wav.write_bytes(b"RIFF....WAVE")
    with pytest.raises(InstagError, match=r"--out .*user\.wav is also the input --wav; writing there would replace it"):
        check_output(wav, "--out", (".npy",), {"--wav": wav})
    alias = tmp_path / "sub" / ".." / "user.wav"  # another spelling of the same file
    (tmp_path / "sub").mkdir()
    with pytest.raises(InstagError, match="is also the input --wav"):
        check_output(alias, "--out", (".npy",), {"--wav": wav})
    other = tmp_path / "other.wav"
    other.write_bytes(b"RIFF....WAVE")
    with pytest.raises(InstagError, match=r"ends in '\.wav', a file of another kind that it would replace; this command "
                                          r"writes \.npy files.*other\.npy"):
        check_output(other, "--out", (".npy",), {"--wav": wav})
    with pytest.raises(InstagError, match="is a folder"):
        check_output(tmp_path, "--out", (".npy",))
    assert check_output(tmp_path / "feats.NPY", "--out", (".npy",), {"--wav": wav, "--weights": None}) == tmp_path / "feats.NPY"


def _speech(path, seconds=0.4):
    t = np.arange(int(seconds * 16000)) / 16000
    write_wav(path, (0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32), 16000)
    return path


def test_features_never_writes_over_its_wav_or_another_kind(tmp_path):
    wav = _speech(tmp_path / "user.wav")
    before = _digest(wav)
    one_line_error(run_cli("features", "--wav", str(wav), "--extractor", "mel", "--out", str(wav)),
                   f"--out {wav}", "is also the input --wav")
    assert _digest(wav) == before
    song = _speech(tmp_path / "song.wav", 0.2)
    kept = _digest(song)
    one_line_error(run_cli("features", "--wav", str(wav), "--extractor", "mel", "--out", str(song)),
                   f"--out {song}", "writes .npy files")
    assert _digest(song) == kept and sorted(p.name for p in tmp_path.iterdir()) == ["song.wav", "user.wav"]

    proc = run_cli("features", "--wav", str(wav), "--extractor", "mel", "--out", str(tmp_path / "user_mel.npy"))
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "user_mel.npy").shape[0] == 10  # 0.4 s at 25 FPS


def test_evaluate_export_and_synthesize_refuse_their_inputs_as_outputs(tmp_path):
    pred, gt = tmp_path / "pred.mp4", tmp_path / "gt.mp4"
    pred.write_bytes(b"not decoded: refused before")
    gt.write_bytes(b"the user's ground truth")
    one_line_error(run_cli("evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(gt)),
                   f"--out {gt}", "is also the input --gt")
    one_line_error(run_cli("evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "m.csv")),
                   "writes .json files")
    weights = tmp_path / "whisper.safetensors"
    weights.write_bytes(b"weights")
    one_line_error(run_cli("export-whisper", "--out", str(weights), "--weights", str(weights)),
                   f"--out {weights}", "is also the input --weights")
    wav = _speech(tmp_path / "talk.wav")
    one_line_error(run_cli("synthesize", "-S", str(tmp_path / "clip"), "-M", str(tmp_path / "model"), "--audio", str(wav),
                           "--output", str(wav)), f"--output {wav}", "is also the input --audio")
    one_line_error(run_cli("report", str(tmp_path), "--out", str(tmp_path / "report.png")), "writes .html, .htm files")
    assert gt.read_bytes() == b"the user's ground truth" and weights.read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt.mp4", "pred.mp4", "talk.wav", "whisper.safetensors"]
