"""Audio-video offset check: synthetic clips with a known lag, and real clips from ../shared/data."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from instag.errors import InstagError
from instag.preprocess.av_sync import MIN_CONFIDENCE, estimate_offset, mouth_opening, shift_audio

SR, FPS = 16000, 25
VIDEO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video"


def _synthetic_clip(num_frames: int, audio_lag: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mouth opening of a random syllable train, and speech whose loudness follows it ``audio_lag`` frames later."""
    rng = np.random.default_rng(seed)
    syllables = np.convolve(rng.random(num_frames + 40) ** 3, np.hanning(7), mode="same")
    mouth = syllables[20 : 20 + num_frames] + 0.02 * rng.standard_normal(num_frames)
    loudness = syllables[20 - audio_lag : 20 - audio_lag + num_frames]
    hop = SR // FPS
    envelope = np.interp(np.arange(num_frames * hop) / hop, np.arange(num_frames), loudness)
    audio = envelope * rng.standard_normal(envelope.size) * 0.2
    return mouth.astype(np.float32), audio.astype(np.float32)


@pytest.mark.parametrize("lag", [-5, 0, 2, 6, 11])
def test_finds_synthetic_lag(lag):
    mouth, audio = _synthetic_clip(300, lag)
    offset, confidence = estimate_offset(mouth, audio)
    assert offset == lag
    assert confidence > MIN_CONFIDENCE


def test_shift_audio_undoes_the_offset():
    mouth, audio = _synthetic_clip(300, 6, seed=1)
    fixed = shift_audio(audio, 6)
    assert fixed.shape == audio.shape
    np.testing.assert_array_equal(fixed[: -6 * 640], audio[6 * 640 :])
    assert not fixed[-6 * 640 :].any()
    assert estimate_offset(mouth, fixed)[0] == 0
    early = shift_audio(audio, -3)
    np.testing.assert_array_equal(early[3 * 640 :], audio[: -3 * 640])
    stereo = shift_audio(np.stack([audio, audio], axis=1), 2)
    assert stereo.shape == (audio.size, 2)


def test_missing_faces_and_bad_input():
    mouth, audio = _synthetic_clip(300, 4, seed=2)
    mouth[50:60] = np.nan  # a few frames without a face are interpolated
    assert estimate_offset(mouth, audio)[0] == 4
    assert estimate_offset(mouth, np.zeros_like(audio)) == (0, 0.0)  # silent audio: no evidence
    with pytest.raises(InstagError, match="at least"):
        estimate_offset(mouth[:20], audio)
    with pytest.raises(InstagError, match="half of the frames"):
        estimate_offset(np.full(300, np.nan), audio)
    lms = np.zeros((2, 478, 3))
    lms[:, 33, 0], lms[:, 263, 0] = 100, 200
    lms[1, 14, 1] = 25
    np.testing.assert_allclose(mouth_opening(lms), [0.0, 0.25])


def _mouth_and_audio(video: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame mouth opening (MediaPipe face mesh 13-14 / 33-263) and 16 kHz mono audio of a 25-FPS clip."""
    cv2 = pytest.importorskip("cv2")
    mp = pytest.importorskip("mediapipe")
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    raw = subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-v",
            "error",
            "-i",
            str(video),
            "-vn",
            "-ac",
            "1",
            "-ar",
            str(SR),
            "-f",
            "s16le",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    audio = np.frombuffer(raw, np.int16).astype(np.float32) / 32768.0
    cap = cv2.VideoCapture(str(video))
    opening = []
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1) as mesh:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            found = mesh.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).multi_face_landmarks
            if not found:
                opening.append(np.nan)
                continue
            lms = np.array([[p.x * bgr.shape[1], p.y * bgr.shape[0], 0.0] for p in found[0].landmark])
            opening.append(float(mouth_opening(lms[None])[0]))
    cap.release()
    return np.array(opening), audio


@pytest.mark.parametrize("clip,expected", [("edtalk_obama_20s", 6), ("mimictalk_german_20s", 0)])
def test_real_clips(clip, expected):
    video = VIDEO / f"{clip}.mp4"
    if not video.exists():
        pytest.skip(f"{video} absent (../shared/data not beside the checkout)")
    mouth, audio = _mouth_and_audio(video)
    assert mouth.size == 500
    offset, confidence = estimate_offset(mouth, audio)
    assert abs(offset - expected) <= 1, (offset, confidence)
    assert confidence >= MIN_CONFIDENCE
    if expected:
        fixed_offset, _ = estimate_offset(mouth, shift_audio(audio, offset))
        assert fixed_offset == 0
