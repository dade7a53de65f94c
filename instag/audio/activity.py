"""Per-frame speech loudness and the voice-activity rule shared by the audio features, synthesis and the metrics.

Loudness: the energy of the speech band (250–3500 Hz) in an 80-ms Hann window centred on each 25-FPS video
frame, in dB relative to a full-scale sine (:func:`frame_levels_db`; digital silence reads :data:`FLOOR_DB`).

Voice activity (:func:`silent_frames`) is **local**: frame ``i`` is judged from the audio of frames
``i - LEVEL_HISTORY .. i + LOOKAHEAD_FRAMES`` alone, never from the rest of the file, so a cut of a recording,
the same cut padded with silence and a stream that has heard only that far all agree. Its reference is the
loudest frame level in that span (``ref``); frame ``i`` is **silent** when it and the :data:`SILENCE_SPAN` frames
on either side (a 200-ms span: pauses, not the brief closures inside words) are all below
``max(ref - 30 dB, -50 dB)``. The relative part follows the speaker whatever the gain; the absolute part makes a
noise floor (a quiet room, a −60 dBFS hiss) silence even far from any speech. Digital silence is always silent.
The same thresholds gate the whisper features' input (:mod:`instag.audio.whisper`), so what this rule calls a
pause is exactly what the features call silence.
"""

from __future__ import annotations

import numpy as np

FPS = 25
SAMPLE_RATE = 16000
SPEECH_BAND = (250.0, 3500.0)
SILENCE_DB = -30.0  # below the loud speech around a frame
ABSOLUTE_SILENCE_DB = -50.0  # below this a frame is quiet whatever is around it (dB re a full-scale sine)
SILENCE_SPAN = 2  # frames on each side that must be quiet too
LEVEL_HISTORY = 50  # frames (2 s) before a frame whose loudest level is its reference
LOOKAHEAD_FRAMES = 3  # frames (120 ms) after it: the rule's look-ahead
FLOOR_DB = -60.0  # level_db floors here (digital silence)
DIGITAL_SILENCE_DB = -100.0  # frame_levels_db of zeros


def centred_windows(samples: np.ndarray, num_frames: int, width: int, sample_rate: int = SAMPLE_RATE,
                    fps: int = FPS) -> np.ndarray:
    """``width`` samples around each video frame's time ``i / fps``: float64 ``[num_frames, width]``, zeros
    where a window reaches past either end of the audio (so any audio length serves any frame count)."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    starts = np.round(np.arange(num_frames) * (sample_rate / fps)).astype(np.int64) - width // 2
    lead = width // 2
    tail = max(0, int(starts[-1]) + width - x.size) if num_frames else 0
    padded = np.concatenate([np.zeros(lead), x, np.zeros(tail)])
    return padded[starts[:, None] + lead + np.arange(width)[None, :]]


def speech_envelope(samples: np.ndarray, num_frames: int, sample_rate: int = SAMPLE_RATE, fps: int = FPS) -> np.ndarray:
    """Log energy (natural log) of the speech band per video frame: [num_frames], frame i centred on time i/fps."""
    hop = sample_rate / fps
    win = int(round(2 * hop))  # 80 ms Hann window, 50 % overlap between frames
    n_fft = 1 << (win - 1).bit_length()
    frames = centred_windows(samples, num_frames, win, sample_rate, fps) * np.hanning(win)[None, :]
    spec = np.abs(np.fft.rfft(frames, n_fft)) ** 2
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    band = (freqs >= SPEECH_BAND[0]) & (freqs <= SPEECH_BAND[1])
    energy = spec[:, band].sum(axis=1)
    floor = max(np.percentile(energy, 99) * 1e-4, 1e-12) if energy.size else 1e-12  # 40 dB below loud speech
    return np.log(energy + floor)


def level_db(samples: np.ndarray, num_frames: int) -> np.ndarray:
    """Speech-band level per frame in dB relative to the clip's loud speech (99th percentile), floored at -60."""
    envelope = speech_envelope(samples, num_frames)
    if envelope.size == 0:
        return envelope
    db = 10.0 * (envelope - np.percentile(envelope, 99)) / np.log(10.0)
    return np.maximum(db, FLOOR_DB)



def _band_energy_of_sine(width: int) -> float:
    """Speech-band energy of a full-scale 1-kHz sine in one Hann window of ``width`` samples (the 0-dB level)."""
    t = np.arange(width) / SAMPLE_RATE
    return float(_band_energy(np.sin(2 * np.pi * 1000.0 * t)[None, :], width)[0])


def _band_energy(windows: np.ndarray, width: int) -> np.ndarray:
    n_fft = 1 << (width - 1).bit_length()
    spec = np.abs(np.fft.rfft(windows * np.hanning(width)[None, :], n_fft)) ** 2
    freqs = np.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE)
    band = (freqs >= SPEECH_BAND[0]) & (freqs <= SPEECH_BAND[1])
    return spec[:, band].sum(axis=1)


_LEVEL_WIDTH = 2 * SAMPLE_RATE // FPS  # 80 ms
_SINE_ENERGY = _band_energy_of_sine(_LEVEL_WIDTH)


def frame_levels_db(samples: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Speech-band level of video frames ``start .. stop-1`` (any integers, negative too) in dB re a full-scale
    sine: float64 ``[stop - start]``; the audio is zeros outside ``samples``, and zeros read
    :data:`DIGITAL_SILENCE_DB`."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    count = max(0, stop - start)
    if count == 0:
        return np.zeros(0)
    hop = SAMPLE_RATE // FPS
    first = start * hop - _LEVEL_WIDTH // 2
    idx = first + np.arange(count)[:, None] * hop + np.arange(_LEVEL_WIDTH)[None, :]
    inside = (idx >= 0) & (idx < x.size)
    windows = np.where(inside, x[np.clip(idx, 0, max(x.size - 1, 0))] if x.size else 0.0, 0.0)
    energy = _band_energy(windows, _LEVEL_WIDTH)
    return np.maximum(10.0 * np.log10(np.maximum(energy, 1e-30) / _SINE_ENERGY), DIGITAL_SILENCE_DB)


def reference_levels(levels: np.ndarray) -> np.ndarray:
    """Each frame's reference: the loudest level of frames ``i - LEVEL_HISTORY .. i + LOOKAHEAD_FRAMES``,
    ``levels`` [n + LEVEL_HISTORY + LOOKAHEAD_FRAMES] -> [n] (dB)."""
    return np.lib.stride_tricks.sliding_window_view(levels, LEVEL_HISTORY + LOOKAHEAD_FRAMES + 1).max(axis=1)


def silence_thresholds(reference: np.ndarray) -> np.ndarray:
    """Quiet thresholds (dB) from :func:`reference_levels`: ``max(reference - 30 dB, -50 dB)``."""
    return np.maximum(reference + SILENCE_DB, ABSOLUTE_SILENCE_DB)


def silent_frames(samples: np.ndarray, num_frames: int, start: int = 0) -> np.ndarray:
    """Boolean ``[num_frames]``: whether frames ``start .. start+num_frames-1`` are in a pause (the module's rule).

    Depends only on the audio from ``LEVEL_HISTORY`` frames before each frame to ``LOOKAHEAD_FRAMES`` after it
    (zeros outside ``samples``): all silent for digital silence or a low noise floor."""
    if num_frames <= 0:
        return np.zeros(0, bool)
    levels = frame_levels_db(samples, start - LEVEL_HISTORY, start + num_frames + LOOKAHEAD_FRAMES)
    return silent_from_levels(levels, reference_levels(levels))


def silent_from_levels(levels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The rule on levels already measured: ``levels`` of frames ``i - LEVEL_HISTORY .. i + LOOKAHEAD_FRAMES`` for
    ``n`` frames (:func:`frame_levels_db`) and their :func:`reference_levels` ``[n]`` -> Boolean ``[n]``."""
    n = reference.shape[0]
    own = levels[LEVEL_HISTORY - SILENCE_SPAN : LEVEL_HISTORY + n + SILENCE_SPAN]
    span = np.lib.stride_tricks.sliding_window_view(own, 2 * SILENCE_SPAN + 1)
    return (span < silence_thresholds(reference)[:, None]).all(axis=1)


def samples_needed(frame: int) -> int:
    """Samples from the start of the audio that decide frame ``frame``'s voice activity (its look-ahead included)."""
    return (frame + LOOKAHEAD_FRAMES) * (SAMPLE_RATE // FPS) + _LEVEL_WIDTH // 2


class SilenceTracker:
    """:func:`silent_frames` for audio that arrives in pieces (streaming synthesis): a frame is decided once the
    audio up to its look-ahead has arrived (or the stream has finished), with exactly the offline rule's result,
    and never changed afterwards."""

    def __init__(self):
        self.samples = np.zeros(0, np.float64)
        self.finished = False
        self._flags = np.zeros(0, bool)

    def push(self, samples: np.ndarray) -> None:
        self.samples = np.concatenate([self.samples, np.asarray(samples, dtype=np.float64).reshape(-1)])

    def finish(self) -> None:
        self.finished = True

    def decided(self, upto: int) -> np.ndarray:
        """Boolean [upto]: the decided frames' flags, False for frames not decided yet."""
        have = len(self._flags)
        ready = upto
        if not self.finished:
            ready = have
            while ready < upto and samples_needed(ready) <= self.samples.size:
                ready += 1
        if ready > have:
            self._flags = np.concatenate([self._flags, silent_frames(self.samples, ready - have, start=have)])
        out = np.zeros(upto, bool)
        take = min(upto, len(self._flags))
        out[:take] = self._flags[:take]
        return out
