"""Bad input to ``instag process`` (DESIGN §5), through the real command in a subprocess.

Each case either fails with exit code 2 and one line on stderr naming the file and the problem
(no traceback, nothing left behind), or is handled, and the test checks the result. The inputs
come from :mod:`badinputs` (cut from ``../shared/data`` at test time).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from badinputs import corpus, message_lines, needs_data, one_line_error, run_cli, stray_temporaries

pytestmark = needs_data


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return corpus(tmp_path_factory)


def process(*args: str, **kw):
    return run_cli("process", *args, **kw)


def assert_nothing_written(out: Path, source: Path | None = None) -> None:
    """A refused first run leaves no output folder, and nothing beside the source video."""
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    if source is not None:
        assert [p.name for p in source.parent.iterdir() if p.name != "src"] == [source.name]


# ------------------------------------------------------------------------------------ refused
@pytest.mark.parametrize("case, words", [
    ("not_a_video", ("not a readable video",)),
    ("truncated", ("truncated",)),
    ("truncated_no_index", ("not a readable video",)),
    ("no_audio", ("has no audio track",)),
    ("silent_audio", ("silent",)),
])
def test_refused_inputs_name_the_file(bad, tmp_path, case, words):
    src = getattr(bad, case)()
    out = tmp_path / "out"
    one_line_error(process(str(src), "--out", str(out)), str(src), *words)
    assert_nothing_written(out)


def test_refused_in_place_leaves_nothing_beside_the_video(bad):
    src = bad.no_audio()
    one_line_error(process(str(src)), str(src), "no audio track")
    assert_nothing_written(src.parent / "never", src)


def test_missing_file_and_folder_instead_of_video(tmp_path):
    one_line_error(process(str(tmp_path / "nope.mp4")), "nope.mp4", "no such file")
    empty = tmp_path / "data" / "May"
    empty.mkdir(parents=True)
    # a folder is a batch of videos (instag process FOLDER --out DIR): an empty one is refused, naming it
    one_line_error(process(str(empty)), str(empty), "no videos in")
    assert list(empty.iterdir()) == []


def test_long_stretch_without_face_is_refused_naming_frames(bad, tmp_path):
    src = bad.face_gap(10, 12)
    out = tmp_path / "out"
    one_line_error(process(str(src), "--out", str(out)), str(src), "no face in frames 10-21", "cut those parts out")
    assert_nothing_written(out)


def test_unwritable_output_folder(bad, tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    out = blocker / "out"  # mkdir fails with ENOTDIR, even as root
    one_line_error(process(str(bad.good()), "--out", str(out)), str(blocker))
    assert blocker.read_text() == "not a folder"


def test_full_disk_mid_run_leaves_no_partial_dataset(bad, tmp_path):
    out = tmp_path / "out"
    proc = process(str(bad.good()), "--out", str(out), fail_writes_after=12)  # fails among the frames
    line = one_line_error(proc, "No space left on device")
    assert str(out) in line
    assert_nothing_written(out)


# ------------------------------------------------------------------------------------ handled
def test_non_25_fps_is_resampled(bad, tmp_path):
    out = tmp_path / "out"
    proc = process(str(bad.fps30()), "--out", str(out), "--task", "frames")
    assert proc.returncode == 0, proc.stderr
    assert "30.00 FPS; resampling to 25 FPS" in proc.stdout
    assert len(list((out / "ori_imgs").glob("*.jpg"))) == 30  # 1.2 s at 25 FPS
    assert not message_lines(proc.stderr)


def test_variable_frame_rate_is_resampled(bad, tmp_path):
    from instag.io.video import probe

    src = bad.variable_fps()
    info = probe(src)
    assert info.variable_fps and 15 < info.fps < 22
    out = tmp_path / "out"
    proc = process(str(src), "--out", str(out), "--task", "frames")
    assert proc.returncode == 0, proc.stderr
    assert "variable frame rate" in proc.stdout and "resampling to 25 FPS" in proc.stdout
    frames = len(list((out / "ori_imgs").glob("*.jpg")))
    assert abs(frames - round(info.frame_span * 25)) <= 1  # the clip's duration at 25 FPS, not its frame count
    assert frames > info.num_frames


@pytest.mark.parametrize("rate", [44100, 48000])
def test_stereo_audio_becomes_16k_mono(bad, tmp_path, rate):
    from instag.io.wav import read_wav

    out = tmp_path / "out"
    proc = process(str(bad.stereo(rate)), "--out", str(out), "--task", "audio")
    assert proc.returncode == 0, proc.stderr
    assert f"{rate} Hz, 2 channel(s) -> 16000 Hz mono" in proc.stdout
    samples, sr = read_wav(out / "aud.wav")
    assert sr == 16000 and samples.ndim == 1
    assert abs(samples.size / 16000 - 1.2) < 0.05
    assert np.abs(samples).max() > 0.05  # speech, not silence


def _frames_and_landmarks(src: Path, out: Path) -> tuple[str, np.ndarray]:
    texts = []
    for task in ("frames", "landmarks"):
        proc = process(str(src), "--out", str(out), "--task", task)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        texts.append(proc.stdout)
    return "\n".join(texts), np.load(out / "landmarks.npy")


def test_short_gap_without_face_is_interpolated(bad, tmp_path):
    text, lm = _frames_and_landmarks(bad.face_gap(10, 3), tmp_path / "out")
    assert "no face in frames 10-12: interpolated" in text
    assert lm.shape == (40, 478, 3) and np.isfinite(lm).all()
    # the filled frames lie between their neighbours
    for i in (10, 11, 12):
        lo, hi = np.minimum(lm[9], lm[13]), np.maximum(lm[9], lm[13])
        assert (lm[i, :, :2] >= lo[:, :2] - 1e-3).all() and (lm[i, :, :2] <= hi[:, :2] + 1e-3).all()


def test_two_faces_keep_one_person_and_say_so(bad, tmp_path):
    out = tmp_path / "out"
    text, lm = _frames_and_landmarks(bad.two_faces(), out)
    assert "several faces in the frames at 0.0, 0.5 s: following the largest" in text, text
    crop = json.loads((out / "crop.json").read_text())
    assert crop["applied"] and crop["output_size"] == [512, 512]
    centres = lm[:, :, 0].mean(1)
    assert np.ptp(centres) < 80  # the same person in every frame (no jump to the other face)


def test_tiny_frames_are_upscaled_around_the_face(bad, tmp_path):
    import cv2

    out = tmp_path / "out"
    _, lm = _frames_and_landmarks(bad.tiny(), out)
    img = cv2.imread(str(out / "ori_imgs" / "0.jpg"))
    assert img.shape == (512, 512, 3)
    crop = json.loads((out / "crop.json").read_text())
    assert crop["source_size"] == [64, 64] and crop["scale"] == pytest.approx(8.0)
    assert lm.shape[0] == 30 and np.isfinite(lm).all()


def test_huge_frames_are_cropped_around_the_face(bad, tmp_path):
    import cv2

    out = tmp_path / "out"
    _, lm = _frames_and_landmarks(bad.huge(), out)
    crop = json.loads((out / "crop.json").read_text())
    x, y, w, h = crop["box"]
    assert crop["applied"] and crop["source_size"] == [3840, 2160] and w == h <= 2160
    assert 840 - w < x <= 840 + 2160 and x + w >= 840  # the square holds the picture, not the padding
    assert cv2.imread(str(out / "ori_imgs" / "0.jpg")).shape == (512, 512, 3)
    face_w = np.ptp(lm[:, :, 0], axis=1).mean()
    assert 100 < face_w < 400  # the face fills a fair part of the 512² frame


def test_odd_path_through_the_upstream_wrapper(bad, tmp_path):
    src = bad.odd_path()
    out = tmp_path / "out dir é 日本"
    proc = run_cli(str(src), "--out", str(out), "--task", "audio", wrapper="data_utils/process.py")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(str(src), "--out", str(out), "--task", "frames", wrapper="data_utils/process.py")
    assert proc.returncode == 0, proc.stderr
    assert (out / "aud.wav").exists() and len(list((out / "ori_imgs").glob("*.jpg"))) == 30
    assert not stray_temporaries(out)


def test_image_encoder_failing_on_full_disk_is_not_ignored(bad, tmp_path):
    """OpenCV signals a failed write only by returning False: no truncated image may be kept."""
    out = tmp_path / "out"
    proc = process(str(bad.good()), "--out", str(out), fail_images_after=5)
    line = one_line_error(proc, str(out))
    assert "cannot write" in line
    assert_nothing_written(out)


def test_debug_flag_shows_the_traceback(bad, tmp_path):
    proc = process(str(bad.not_a_video()), "--out", str(tmp_path / "out"), "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "InstagError" in proc.stderr
