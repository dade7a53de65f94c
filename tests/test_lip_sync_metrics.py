"""The lip-sync metrics that see a muted mouth (DESIGN §4): mouth_amp, the voice-activity rule, closed_in_silence."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from instag.audio.activity import SILENCE_SPAN, level_db, silent_frames
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
    # relative to the clip: the same audio 40 dB quieter has the same pauses
    np.testing.assert_array_equal(silent_frames(samples * 0.01, len(talking)), silent)
    assert silent_frames(np.zeros(SR, np.float32), 25).all()
    levels = level_db(samples, len(talking))
    assert levels.max() == pytest.approx(0.0, abs=1.0) and levels[pause].max() < -30


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
