"""Bad media and bad checkpoints (issue 26): read what a player reads, and say precisely why a file cannot serve.

* The picture and sound are the streams a player picks (the ones marked default), in the shape it shows
  (anamorphic pixels stretched by their sample aspect ratio).
* A picture too small to find a face in is called that, not "no video stream".
* A checkpoint whose tensors have other shapes is refused in one line naming the file, for rendering and for
  resuming a stage, not as an internal error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from badinputs import QUICK_ADAPT, ffmpeg, fused_model, one_line_error, pretrained, run_cli, synthetic_dataset

from instag.io.video import iter_frames, probe, read_audio, sample_frames


def _video(out: Path, *inputs: str, extra: tuple[str, ...] = ()) -> Path:
    args = []
    for source in inputs:
        args += ["-f", "lavfi", "-i", source]
    ffmpeg(*args, "-t", "1", *extra, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
           str(out))
    return out


def test_a_picture_too_small_for_a_face_is_called_that(tmp_path):
    tiny = _video(tmp_path / "tiny.mp4", "testsrc=size=8x8:rate=25", "sine=f=200:sample_rate=16000", extra=("-shortest",))
    line = one_line_error(run_cli("process", str(tiny), "--out", str(tmp_path / "out")), str(tiny),
                          "the picture is 8x8 pixels, too small to find a face in (at least 24 px a side)")
    assert "no video stream" not in line and not (tmp_path / "out").exists()


def test_anamorphic_pixels_are_read_in_the_shape_a_player_shows(tmp_path):
    path = _video(tmp_path / "sar.mp4", "testsrc=size=160x120:rate=25", "sine=f=200:sample_rate=16000",
                  extra=("-vf", "setsar=2/1", "-shortest"))
    info = probe(path)
    assert (info.width, info.height, info.sar) == (320, 120, "2:1")
    frame = next(iter_frames(info))
    assert frame.shape == (120, 320, 3)
    assert sample_frames(info, per_second=2)[0].shape == (120, 320, 3)
    crop = next(iter_frames(info, crop=(160, 0, 120, 120), size=(60, 60)))  # crop boxes are in the shown shape
    assert crop.shape == (60, 60, 3)
    assert "sar" not in probe(_video(tmp_path / "square.mp4", "testsrc=size=160x120:rate=25",
                                     "sine=f=200:sample_rate=16000", extra=("-shortest",))).as_dict()


def test_the_default_streams_are_the_ones_read(tmp_path):
    """Two pictures and two sounds: the second of each marked default, as a player would play them."""
    path = _video(tmp_path / "two.mp4", "testsrc=size=64x48:rate=25", "testsrc2=size=160x120:rate=25",
                  "sine=f=200:sample_rate=16000", "sine=f=800:sample_rate=22050",
                  extra=("-map", "0:v", "-map", "1:v", "-map", "2:a", "-map", "3:a", "-disposition:v:0", "0",
                         "-disposition:v:1", "default", "-disposition:a:0", "0", "-disposition:a:1", "default"))
    info = probe(path)
    assert (info.width, info.height, info.stream, info.audio_rate, info.audio_stream) == (160, 120, "0:1", 22050, "0:3")
    assert next(iter_frames(info)).shape == (120, 160, 3)
    samples = read_audio(path, 16000, info.audio_stream)[2000:14000]
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) * 16000 / len(samples) - 800) < 5  # the default track's 800 Hz tone, not 200 Hz


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    clip = synthetic_dataset(root / "data" / "clip", size=16, n_train=8, n_val=2)
    return {"root": root, "clip": clip.root, "pre": pretrained(root / "pre")}


def _reshape(path: Path, key: str) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as fh:
        header = fh.metadata()  # the iteration it records, checked against the json
    tensors = load_file(str(path))
    tensors[key] = tensors[key][:, :2].contiguous()  # xyz [N,3] -> [N,2]
    save_file(tensors, str(path), metadata=header)


def test_a_model_with_tensors_of_other_shapes_is_refused_naming_it(world, tmp_path):
    model = fused_model(tmp_path / "model")
    checkpoint = model / "chkpnt_fuse_latest.safetensors"
    _reshape(checkpoint, "face.xyz")
    wav = tmp_path / "a.wav"
    from instag.io.wav import write_wav

    write_wav(wav, np.zeros(6400, np.float32), 16000)
    line = one_line_error(run_cli("synthesize", "-S", str(world["clip"]), "-M", str(model), "--audio", str(wav),
                                  "--device", "cpu", "--output", str(tmp_path / "o.mp4")), str(checkpoint))
    assert "xyz has shape [200, 2], not [200, 3]" in line and not (tmp_path / "o.mp4").exists()


def test_resuming_from_a_state_of_other_shapes_is_refused_naming_it(world, tmp_path):
    out = tmp_path / "out"
    common = ["adapt", "-S", str(world["clip"]), "--pretrain_path", str(world["pre"]), "-M", str(out), *QUICK_ADAPT]
    assert run_cli(*common, "--stop_after", "0.000001").returncode == 3
    state = out / "train_face.safetensors"
    _reshape(state, "id0.face.xyz")
    line = one_line_error(run_cli(*common, "--resume"), str(state), "do not fit this model")
    assert "xyz has shape" in line and json.loads((out / "train_face.json").read_text())["iteration"] > 0
