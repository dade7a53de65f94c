"""Every file is checked where it is read, and the error names it (issue 14), through the real commands.

Damaged files of a processed clip (au.csv with NaN, a ``.lms`` of NaNs, landmarks.npy of another shape, a
ground-truth frame of another size, transforms_*.json with fields of the wrong type, NaN, huge values, a
focal length of 0 or an ``img_id`` past the end, features with NaN or huge values) stop ``instag adapt``
with one line naming the file; a model json of the wrong type, NaN model tensors, a model adapted on
another clip, ``--reference_db nan``, NaN samples in a WAV and an ``--output`` that is a folder or has no
video extension stop ``synthesize`` before it renders anything; ``stream`` with 0.01 s of audio names the
audio; an audio file with cover art given to ``process`` is called an audio file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from badinputs import (
    QUICK_ADAPT,
    corpus,
    ffmpeg,
    fused_model,
    message_lines,
    needs_data,
    one_line_error,
    pretrained,
    run_cli,
    synthetic_dataset,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("validation")
    clip = synthetic_dataset(root / "data" / "clip", size=16, n_train=8, n_val=4)
    return {"root": root, "clip": clip.root, "pre": pretrained(root / "pre"), "model": fused_model(root / "model"),
            "corpus": corpus(tmp_path_factory)}


def damaged_clip(world, tmp_path: Path, damage) -> Path:
    clip = tmp_path / "clip"
    shutil.copytree(world["clip"], clip)
    damage(clip)
    return clip


def adapt(world, clip: Path, tmp_path: Path):
    return run_cli("adapt", "-S", str(clip), "-M", str(tmp_path / "out"), "--pretrain_path", str(world["pre"]), *QUICK_ADAPT)


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def set_frame(k: int, key: str, value):
    def change(data):
        data["frames"][k][key] = value
    return change


def set_entry(i: int, j: int, value: float):
    def change(data):
        data["frames"][2]["transform_matrix"][i][j] = value
    return change


def replace_au(clip: Path) -> None:
    lines = (clip / "au.csv").read_text().splitlines()
    header = [h.strip() for h in lines[0].split(",")]
    row = lines[3].split(",")
    row[header.index("AU04_r")] = " nan"
    lines[3] = ",".join(row)
    (clip / "au.csv").write_text("\n".join(lines) + "\n")


TRANSFORMS = "transforms_train.json"
CASES = {
    "au.csv with NaN": (replace_au, "au.csv", ("AU04_r", "data row 3", "nan")),
    ".lms of NaNs": (lambda c: (c / "ori_imgs" / "2.lms").write_text("nan nan\n" * 68), "ori_imgs/2.lms", ("landmark 0",)),
    "landmarks.npy of another shape": (lambda c: np.save(c / "landmarks.npy", np.zeros((12, 68, 2), np.float32)),
                                       "landmarks.npy", ("[12, 68, 2]", "[N,478,3]")),
    "frames not a list": (lambda c: edit_json(c / TRANSFORMS, lambda d: d.update(frames={"0": 1})), TRANSFORMS, ("'frames'",)),
    "focal_len a string": (lambda c: edit_json(c / TRANSFORMS, lambda d: d.update(focal_len="1200")), TRANSFORMS,
                           ("focal_len", "not a number")),
    "focal_len 0": (lambda c: edit_json(c / TRANSFORMS, lambda d: d.update(focal_len=0)), TRANSFORMS,
                    ("focal_len is 0", "above 0")),
    "NaN in a camera": (lambda c: edit_json(c / TRANSFORMS, set_entry(0, 3, float("nan"))), TRANSFORMS,
                        ("frames[2].transform_matrix [0][3]",)),
    "huge translation": (lambda c: edit_json(c / TRANSFORMS, set_entry(1, 3, 1e30)), TRANSFORMS,
                         ("frames[2].transform_matrix [1][3] is 1e+30",)),
    "img_id past the end": (lambda c: edit_json(c / TRANSFORMS, set_frame(5, "img_id", 999)), TRANSFORMS,
                            ("frames[5].img_id is 999", "12 frames")),
    "img_id a string": (lambda c: edit_json(c / TRANSFORMS, set_frame(1, "img_id", "3")), TRANSFORMS,
                        ("frames[1].img_id", "not an integer")),
    "features with NaN": (lambda c: np.save(c / "aud_mel.npy", np.full((12, 16, 80), np.nan, np.float32)), "aud_mel.npy",
                          ("NaN",)),
    "huge features": (lambda c: np.save(c / "aud_mel.npy", np.full((12, 16, 80), 1e30, np.float32)), "aud_mel.npy",
                      ("1e+30",)),
    "gt frames of another size": (lambda c: _each_gt_frame(c, _wider), "gt_imgs", ("is 20x16", "are 16x16")),
    "missing gt frames": (lambda c: _each_gt_frame(c, Path.unlink), "gt_imgs", ("missing or corrupt",)),
}


def _wider(path: Path) -> None:
    import cv2

    cv2.imwrite(str(path), np.zeros((16, 20, 3), np.uint8))


def _each_gt_frame(clip: Path, damage) -> None:
    """Damage every ground-truth frame but the first (the clip's size is read from it), so that training meets one."""
    for i in range(1, 12):
        damage(clip / "gt_imgs" / f"{i}.jpg")


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_clip_files_are_named(world, tmp_path, case):
    damage, name, words = CASES[case]
    clip = damaged_clip(world, tmp_path, damage)
    line = one_line_error(adapt(world, clip, tmp_path), str(clip / name), *words)
    assert "loss became nan" not in line and "audio features" not in line or "aud_mel" in name


# ------------------------------------------------------------------------------------------- synthesis inputs
def synth(world, wav: Path, out: Path, *extra: str, model: Path | None = None, source: Path | None = None):
    return run_cli("synthesize", "-S", str(source or world["clip"]), "-M", str(model or world["model"]), "--audio", str(wav),
                   "--device", "cpu", "--output", str(out), "--quiet", *extra)


def copy_model(world, tmp_path: Path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(world["model"], model)
    return model


@pytest.mark.parametrize("meta, words", [([1, 2], ("holds list",)), ({"format": "instag-talking-head", "item_shape": "16x80"},
                                                                          ("audio_extractor",))])
def test_model_json_of_the_wrong_type(world, tmp_path, meta, words):
    model = copy_model(world, tmp_path)
    (model / "chkpnt_fuse_latest.json").write_text(json.dumps(meta))
    one_line_error(synth(world, world["corpus"].wav("speech", seconds=0.4), tmp_path / "o.mp4", model=model),
                   str(model / "chkpnt_fuse_latest.json"), *words)


def test_nan_model_tensors_are_refused(world, tmp_path):
    from safetensors.torch import load_file, save_file

    model = copy_model(world, tmp_path)
    path = model / "chkpnt_fuse_latest.safetensors"
    tensors = load_file(str(path))
    tensors["face.xyz"] = tensors["face.xyz"] * float("nan")
    save_file(tensors, str(path))
    one_line_error(synth(world, world["corpus"].wav("speech", seconds=0.4), tmp_path / "o.mp4", model=model),
                   str(path), "face.xyz", "NaN")
    assert not (tmp_path / "o.mp4").exists()


def test_model_adapted_on_another_clip_is_refused(world, tmp_path):
    model = copy_model(world, tmp_path)
    edit_json(model / "chkpnt_fuse_latest.json",
              lambda d: d.update(source_clip={"path": "/data/A", "fingerprint": "a" * 64}, source_path="/data/A"))
    clip = damaged_clip(world, tmp_path, lambda c: (c / "meta.json").write_text(json.dumps({"source": {"fingerprint": "b" * 64}})))
    one_line_error(synth(world, world["corpus"].wav("speech", seconds=0.4), tmp_path / "o.mp4", model=model, source=clip),
                   str(model / "chkpnt_fuse_latest.json"), "adapted on /data/A", "-S /data/A")
    edit_json(clip / "meta.json", lambda d: d["source"].update(fingerprint="a" * 64))  # the same video, moved: rendered
    proc = synth(world, world["corpus"].wav("speech", seconds=0.4), tmp_path / "o.mp4", model=model, source=clip)
    assert proc.returncode == 0 and not message_lines(proc.stderr), proc.stderr


def test_adaptation_records_its_clip(tmp_path):
    from instag.model.talking_head import source_clip

    clip = synthetic_dataset(tmp_path / "clip", size=16, n_train=4, n_val=2)
    assert source_clip(clip.root) == {"path": str(clip.root.resolve()), "fingerprint": None}
    (clip.root / "meta.json").write_text(json.dumps({"source": {"fingerprint": "f" * 64}}))
    assert source_clip(clip.root)["fingerprint"] == "f" * 64


def test_reference_db_nan_is_refused(world, tmp_path):
    one_line_error(synth(world, world["corpus"].wav("speech", seconds=0.4), tmp_path / "o.mp4", "--reference_db", "nan"),
                   "--reference_db nan", "finite")
    assert not (tmp_path / "o.mp4").exists()


def test_nan_samples_in_a_float_wav_are_refused_before_rendering(world, tmp_path):
    samples = np.sin(np.arange(8000) / 10).astype("<f4")
    samples[4000] = np.nan
    wav = tmp_path / "nan.wav"
    fmt = (3).to_bytes(2, "little") + (1).to_bytes(2, "little") + (16000).to_bytes(4, "little") + \
        (64000).to_bytes(4, "little") + (4).to_bytes(2, "little") + (32).to_bytes(2, "little")
    data = samples.tobytes()
    wav.write_bytes(b"RIFF" + (36 + len(data)).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little") + fmt
                    + b"data" + len(data).to_bytes(4, "little") + data)
    one_line_error(synth(world, wav, tmp_path / "out" / "o.mp4"), str(wav), "NaN or infinite", "0.250 s")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("name, words", [("folder", ("is a folder",)), ("talk", ("has no extension",)),
                                         ("talk.wav", ("ends in '.wav'",))])
def test_output_that_cannot_be_a_video_is_refused_before_rendering(world, tmp_path, name, words):
    out = tmp_path / name
    if name == "folder":
        out.mkdir()
    wav = world["corpus"].wav("speech", seconds=0.4)
    for command in ("synthesize", "stream"):
        proc = run_cli(command, "-S", str(world["clip"]), "-M", str(world["model"]), "--audio", str(wav), "--device", "cpu",
                       "--output", str(out), "--quiet")
        one_line_error(proc, f"--output {out}", *words)
        assert "instag synthesize: " not in proc.stdout  # refused before rendering: no progress line
    assert sorted(p.name for p in tmp_path.iterdir()) == (["folder"] if name == "folder" else [])


def test_stream_of_a_hundredth_of_a_second(world, tmp_path):
    wav = world["corpus"].wav("blip", seconds=0.01)
    one_line_error(run_cli("stream", "-S", str(world["clip"]), "-M", str(world["model"]), "--audio", str(wav), "--device",
                           "cpu", "--output", str(tmp_path / "o.mp4")), str(wav), "too short to drive a single frame")
    assert not any(tmp_path.iterdir())


@needs_data
def test_audio_file_with_cover_art_is_called_an_audio_file(world, tmp_path):
    import cv2

    cover = tmp_path / "cover.png"
    cv2.imwrite(str(cover), np.full((64, 64, 3), 90, np.uint8))
    song = tmp_path / "song.m4a"
    ffmpeg("-i", str(world["corpus"].wav("speech", seconds=1.0)), "-i", str(cover), "-map", "0:a", "-map", "1:v", "-c:a", "aac",
           "-c:v", "mjpeg", "-disposition:v", "attached_pic", str(song))
    line = one_line_error(run_cli("process", str(song), "--out", str(tmp_path / "out")), str(song), "cover picture")
    assert "truncated" not in line
    assert not (tmp_path / "out").exists()
