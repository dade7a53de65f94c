"""The lip-sync metrics that see a muted mouth (DESIGN §4): mouth_amp, the voice-activity rule, closed_in_silence."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from instag.audio.activity import SILENCE_SPAN, frame_levels_db, level_db, silent_frames
from instag.metrics.lips import closed_in_silence, closed_level, mouth_amp

SR, PER_FRAME = 16000, 640


def _speech_with_pauses(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """3 s: speech-band noise bursts with two pauses (frames 20-34 and 55-69), a little background noise."""
    n = 75
    talking = np.ones(n, bool)
    talking[20:35] = talking[55:70] = False
    t = np.arange(n * PER_FRAME) / SR
    voiced = np.repeat(talking, PER_FRAME) * np.sin(2 * np.pi * 600 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
    return (0.3 * voiced + 1e-4 * rng.standard_normal(t.size)).astype(np.float32), talking


def test_silent_frames_find_the_pauses_and_not_the_speech():
    samples, talking = _speech_with_pauses(np.random.default_rng(0))
    silent = silent_frames(samples, len(talking))
    assert not silent[talking].any()
    pause = np.zeros_like(talking)
    pause[20 + SILENCE_SPAN + 1 : 35 - SILENCE_SPAN - 1] = True  # well inside the first pause
    assert silent[pause].all()
    # relative to the speech around each frame: the same audio 20 dB quieter has the same pauses
    np.testing.assert_array_equal(silent_frames(samples * 0.1, len(talking)), silent)
    assert silent_frames(np.zeros(SR, np.float32), 25).all()
    hiss = np.random.default_rng(1).standard_normal(3 * SR) * 10 ** (-60 / 20)  # a -60 dBFS noise floor
    assert silent_frames(hiss, 75).all()
    levels = frame_levels_db(samples, 0, len(talking))  # dB re a full-scale sine: 0.3 of full scale, modulated
    assert -17 < levels.max() < -10 and levels[pause].max() < -60
    relative = level_db(samples, len(talking))
    assert relative.max() == pytest.approx(0.0, abs=1.0) and relative[pause].max() < -30


def test_silent_frames_are_local():
    """A frame's decision depends on the audio from 2 s before it to its look-ahead only: a cut of the recording,
    the cut padded with digital silence and the whole recording agree."""
    from instag.audio.activity import LEVEL_HISTORY, LOOKAHEAD_FRAMES, SilenceTracker

    rng = np.random.default_rng(4)
    samples = np.concatenate([_speech_with_pauses(rng)[0] for _ in range(4)])
    whole = silent_frames(samples, 300)
    cut = samples[100 * PER_FRAME : 250 * PER_FRAME]
    keep = slice(LEVEL_HISTORY, 150 - LOOKAHEAD_FRAMES - SILENCE_SPAN)
    np.testing.assert_array_equal(silent_frames(cut, 150)[keep], whole[100:250][keep])
    padded = np.concatenate([np.zeros(SR), cut, np.zeros(SR)])
    np.testing.assert_array_equal(silent_frames(padded, 200)[25:175][keep], whole[100:250][keep])
    np.testing.assert_array_equal(silent_frames(samples, 40, start=130), whole[130:170])
    tracker = SilenceTracker()
    tracker.push(samples[: 200 * PER_FRAME])
    decided = tracker.decided(300)
    assert decided[: 200 - LOOKAHEAD_FRAMES - 1].tolist() == whole[: 200 - LOOKAHEAD_FRAMES - 1].tolist()


def test_mouth_amp_sees_a_muted_mouth_with_the_right_timing():
    truth = np.abs(np.sin(np.linspace(0, 12, 200))) * 0.1
    assert mouth_amp(truth * 0.5 + 0.01, truth) == pytest.approx(0.5)
    assert mouth_amp(truth, truth) == pytest.approx(1.0)
    with_gaps = truth.copy()
    with_gaps[::7] = np.nan  # frames without a face are left out of both
    assert mouth_amp(with_gaps * 2, truth) == pytest.approx(2.0, rel=0.02)
    assert mouth_amp(truth, np.full(200, 0.05)) == 0.0


def test_closed_in_silence_counts_shut_mouths_in_pauses():
    rng = np.random.default_rng(1)
    openings = np.concatenate([rng.uniform(0.0, 0.01, 100), rng.uniform(0.04, 0.12, 100)])
    level = closed_level(openings)
    assert 0.01 < level < 0.04
    silent = np.zeros(200, bool)
    silent[:50] = True
    assert closed_in_silence(openings, silent, level) == 1.0  # shut in the pauses
    talking_through = openings.copy()
    talking_through[:25] = 0.08
    assert closed_in_silence(talking_through, silent, level) == pytest.approx(0.5)
    assert math.isnan(closed_in_silence(openings, np.zeros(200, bool), level))


VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "r3dp_may_5s.mp4"


@pytest.mark.skipif(not VIDEO.exists(), reason="../shared/data (the shared clips) is absent")
def test_lip_report_of_a_real_talking_video(tmp_path):
    """New-audio report on a real recording: the person's mouth follows their own loudness."""
    pytest.importorskip("mediapipe")
    from instag.metrics.evaluate import lip_report

    result = lip_report(VIDEO, tmp_path, log=lambda *a: None, progress=False)
    assert result["frames"] == 125 and result["frames_without_face"] == 0
    assert result["opening_loudness_corr"] > 0.2, result["opening_loudness_corr"]
    assert result["closed_level_from"] == "the video's own openings" and result["closed_level"] > 0
    assert math.isnan(result["closed_in_silence"]) or 0.0 <= result["closed_in_silence"] <= 1.0
    assert (tmp_path / "r3dp_may_5s_mouth.json").exists() and (tmp_path / "r3dp_may_5s_mouth.png").exists()
