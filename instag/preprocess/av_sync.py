"""Audio-video offset check: does the sound line up with the lips?

A few frames of offset between a clip's audio and its video silently ruin lip sync in
training. The check cross-correlates how the mouth opens (from landmarks, one value per
frame) with how loud the speech is (the energy envelope of the 16 kHz audio in the speech
band, one value per 25-FPS frame) over lags of ±15 frames. Both series are reduced to
their changes (first differences after light smoothing), because onsets of speech and
openings of the mouth line up more sharply than the levels do; the levels (with slow drift
removed) are correlated too, and the two scores are added.

Sign convention: a positive offset means the **audio lags the video** (a sound is heard
``offset`` frames after the mouth makes it); :func:`shift_audio` with that offset moves
the audio earlier so that the two line up.
"""

from __future__ import annotations

import numpy as np

from instag.audio.activity import speech_envelope
from instag.errors import InstagError

FPS = 25
SAMPLE_RATE = 16000
MAX_LAG = 15
LAG_PENALTY = 0.01
# Below this confidence the estimate is a guess (short or noisy clips); report, don't correct.
MIN_CONFIDENCE = 3.0


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """MediaPipe landmarks [N, 478, 2+] -> inner-lip gap (13-14) over eye-corner distance (33-263), [N].

    Frames without a face (all-NaN landmarks) give NaN.
    """
    lms = np.asarray(landmarks, dtype=np.float64)[..., :2]
    gap = np.linalg.norm(lms[:, 13] - lms[:, 14], axis=-1)
    eyes = np.linalg.norm(lms[:, 33] - lms[:, 263], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(eyes > 0, gap / eyes, np.nan)


def _fill_gaps(values: np.ndarray) -> np.ndarray:
    """Linearly interpolate NaN entries (frames without a face)."""
    v = np.asarray(values, dtype=np.float64).copy()
    bad = ~np.isfinite(v)
    if bad.all():
        return np.zeros_like(v)
    if bad.any():
        idx = np.arange(v.size)
        v[bad] = np.interp(idx[bad], idx[~bad], v[~bad])
    return v


def _smooth(series: np.ndarray, width: int) -> np.ndarray:
    """Hann-weighted moving average over ``width`` frames (edges use the available frames)."""
    w = np.hanning(width + 2)[1:-1]
    num = np.convolve(series, w, mode="same")
    den = np.convolve(np.ones_like(series), w, mode="same")
    return num / den


def _standardise(x: np.ndarray) -> np.ndarray:
    std = x.std()
    return (x - x.mean()) / std if std > 0 else x * 0.0


def _views(series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two views of a per-frame series: its changes (first difference) and its level minus
    a one-second moving average (slow drifts such as head pose or loudness removed)."""
    s = _smooth(series, 3)
    changes = np.diff(s, prepend=s[0])
    level = s - _smooth(s, FPS)
    return _standardise(changes), _standardise(level)


def _pearson_at_lags(a: np.ndarray, b: np.ndarray, max_lag: int) -> np.ndarray:
    """corr(a[t], b[t + lag]) for lag = -max_lag..max_lag: [2*max_lag+1]."""
    n = a.size
    out = np.zeros(2 * max_lag + 1)
    for k, lag in enumerate(range(-max_lag, max_lag + 1)):
        x, y = (a[: n - lag], b[lag:]) if lag >= 0 else (a[-lag:], b[: n + lag])
        if x.size >= 10 and x.std() > 0 and y.std() > 0:
            out[k] = float(np.corrcoef(x, y)[0, 1])
    return out


def lag_scores(mouth: np.ndarray, energy: np.ndarray, max_lag: int = MAX_LAG) -> np.ndarray:
    """Score of each lag -max_lag..max_lag: the correlation of mouth and speech changes plus
    that of their levels, minus a small penalty of 0.01 per frame of lag (speech is
    quasi-periodic, so on short clips a far lag can match by chance): [2*max_lag+1]."""
    mouth_changes, mouth_level = _views(mouth)
    energy_changes, energy_level = _views(energy)
    scores = _pearson_at_lags(mouth_changes, energy_changes, max_lag) + _pearson_at_lags(
        mouth_level, energy_level, max_lag
    )
    return scores - LAG_PENALTY * np.abs(np.arange(-max_lag, max_lag + 1))


def estimate_offset(
    mouth_opening: np.ndarray,
    samples: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    fps: int = FPS,
    max_lag: int = MAX_LAG,
) -> tuple[int, float]:
    """Audio-video offset of a clip, in frames, and a confidence.

    ``mouth_opening`` [N] (one value per video frame; NaN where no face was found);
    ``samples`` [n] mono audio at ``sample_rate``. Returns ``(offset_frames, confidence)``:
    positive offset = audio lags video. The confidence is how far the correlation peak
    stands above the other lags, in standard deviations of those lags: at or above
    ``MIN_CONFIDENCE`` (3) the peak is clear; below it (short, silent or noisy clips) report
    the estimate but do not correct the audio with it. Silent audio or a still mouth gives
    ``(0, 0.0)``.
    """
    mouth = np.asarray(mouth_opening, dtype=np.float64).reshape(-1)
    num_frames = mouth.size
    if num_frames < 2 * max_lag + 10:
        raise InstagError(f"audio-video offset check needs at least {2 * max_lag + 10} frames, got {num_frames}")
    if np.isfinite(mouth).sum() < num_frames // 2:
        raise InstagError("audio-video offset check: fewer than half of the frames have a face")
    energy = speech_envelope(samples, num_frames, sample_rate, fps)
    mouth = _fill_gaps(mouth)
    if np.ptp(energy) == 0 or np.ptp(mouth) == 0:
        return 0, 0.0
    scores = lag_scores(mouth, energy, max_lag)
    best = int(np.argmax(scores))
    others = np.delete(scores, [k for k in (best - 1, best, best + 1) if 0 <= k < scores.size])
    spread = others.std() if others.size > 1 else 0.0
    confidence = float((scores[best] - others.mean()) / spread) if spread > 0 else 0.0
    return best - max_lag, confidence


def shift_audio(samples: np.ndarray, offset_frames: int, sample_rate: int = SAMPLE_RATE, fps: int = FPS) -> np.ndarray:
    """Undo an offset found by :func:`estimate_offset`; the length is kept.

    Positive offset (audio late): drop its first ``offset`` frames of audio and pad silence
    at the end. Negative (audio early): pad silence at the start and trim the end.
    ``samples``: [n] or [n, channels].
    """
    x = np.asarray(samples)
    shift = int(round(offset_frames * sample_rate / fps))
    if shift == 0 or x.shape[0] == 0:
        return x.copy()
    out = np.zeros_like(x)
    if shift > 0:
        if shift < x.shape[0]:
            out[: x.shape[0] - shift] = x[shift:]
    else:
        if -shift < x.shape[0]:
            out[-shift:] = x[: x.shape[0] + shift]
    return out
