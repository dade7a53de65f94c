"""Video encoding and audio muxing, probed with the ffmpeg binary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instag.errors import InstagError
from instag.io.encode import VideoWriter, mux_audio, probe_media, write_video
from instag.io.wav import write_wav


def _frames(n: int, h: int = 37, w: int = 50) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_mp4_from_frames_and_wav(tmp_path):
    silent = write_video(tmp_path / "silent.mp4", _frames(40))  # odd sizes are padded for yuv420p
    assert probe_media(silent) == {"frames": 40, "audio_seconds": None, "comment": probe_media(silent)["comment"]}
    wav = tmp_path / "speech.wav"
    write_wav(wav, (0.1 * np.sin(np.arange(25600) / 7)).astype(np.float32), 16000)  # 1.6 s
    out = mux_audio(silent, wav, tmp_path / "with sound.mp4")
    info = probe_media(out)
    assert info["frames"] == 40
    assert info["audio_seconds"] == pytest.approx(1.6, abs=0.03)
    assert "synthesized by instag" in info["comment"]


def test_mux_pads_short_audio_and_cuts_long_audio(tmp_path):
    silent = write_video(tmp_path / "v.mp4", _frames(33))  # 1.32 s
    for seconds in (1.0, 2.5):
        wav = tmp_path / f"a{seconds}.wav"
        write_wav(wav, np.zeros(int(seconds * 16000), np.float32), 16000)
        info = probe_media(mux_audio(silent, wav, tmp_path / f"o{seconds}.mp4"))
        assert info["frames"] == 33
        assert info["audio_seconds"] == pytest.approx(1.32, abs=0.05)


def test_float_tensor_frames_and_opencv_fallback(tmp_path):
    frames = [torch.rand(3, 32, 48) for _ in range(10)]
    with VideoWriter(tmp_path / "a.mp4") as vw:
        for f in frames:
            vw.write(f)
    assert probe_media(tmp_path / "a.mp4")["frames"] == 10
    write_video(tmp_path / "b.mp4", _frames(12, 32, 48), backend="opencv")
    assert probe_media(tmp_path / "b.mp4")["frames"] == 12


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "x.mp4"
    with pytest.raises(InstagError):
        with VideoWriter(target) as vw:
            vw.write(_frames(1)[0])
            vw.write(_frames(1, 20, 20)[0])  # wrong size
    assert not target.exists() and not list(tmp_path.iterdir())
    with pytest.raises(InstagError):
        mux_audio(tmp_path / "missing.mp4", tmp_path / "missing.wav", tmp_path / "o.mp4")


def test_background_encoding_thread(tmp_path):
    frames = _frames(30, 32, 32)
    with VideoWriter(tmp_path / "bg.mp4", background=True, queue_size=4) as vw:
        for f in frames:
            vw.write(f)
    assert probe_media(tmp_path / "bg.mp4")["frames"] == 30
    with pytest.raises(InstagError):
        with VideoWriter(tmp_path / "bad.mp4", background=True) as vw:
            vw.write(frames[0])
            vw.write(_frames(1, 20, 20)[0])
    assert not (tmp_path / "bad.mp4").exists()
