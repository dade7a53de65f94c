"""Per-frame speech loudness and the voice-activity rule that the lip-sync metrics and synthesis share.

Loudness: the energy of the speech band (250–3500 Hz) in an 80-ms Hann window centred on each 25-FPS video
frame, in dB relative to the clip's loud speech (its 99th-percentile frame). Voice activity: a frame is
**silent** when it and the two frames on either side (a 200-ms span) are all more than
:data:`SILENCE_DB` below that loud level: pauses, not the brief closures inside words. The rule is relative
to the clip, so it does not depend on the recording level, and it needs no weights.
"""

from __future__ import annotations

import numpy as np

FPS = 25
SAMPLE_RATE = 16000
SPEECH_BAND = (250.0, 3500.0)
SILENCE_DB = -30.0  # below the clip's loud speech
SILENCE_SPAN = 2  # frames on each side that must be quiet too
FLOOR_DB = -60.0  # levels are floored here (digital silence)


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


def silent_frames(samples: np.ndarray, num_frames: int) -> np.ndarray:
    """Boolean [num_frames]: the frames in a pause (see the module docstring). All silent for digital silence."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if num_frames == 0:
        return np.zeros(0, bool)
    if not np.any(np.abs(x) > 1e-6):
        return np.ones(num_frames, bool)
    quiet = level_db(x, num_frames) < SILENCE_DB
    padded = np.concatenate([np.ones(SILENCE_SPAN, bool), quiet, np.ones(SILENCE_SPAN, bool)])
    span = 2 * SILENCE_SPAN + 1
    return np.lib.stride_tricks.sliding_window_view(padded, span).all(axis=1)


class SilenceTracker:
    """:func:`silent_frames` for audio that arrives in pieces (streaming synthesis).

    A frame is decided once the audio of its own window and of the :data:`SILENCE_SPAN` frames on either side has
    arrived, against the loud-speech level of the audio heard by then (the whole clip's is not known yet), and is
    never changed afterwards. Each frame's speech-band energy is computed once.
    """

    def __init__(self):
        self.samples = np.zeros(0, np.float64)
        self.finished = False
        self._energy: list[float] = []
        self._flags: list[bool] = []
        self._heard = False  # any sample above digital silence so far

    def push(self, samples: np.ndarray) -> None:
        x = np.asarray(samples, dtype=np.float64).reshape(-1)
        self._heard = self._heard or bool(np.any(np.abs(x) > 1e-6))
        self.samples = np.concatenate([self.samples, x])

    def finish(self) -> None:
        self.finished = True

    def _energies(self, upto: int) -> np.ndarray:
        """Band energies of the frames whose window has arrived (once finished: of frames up to ``upto`` + the span,
        zeros past the end, as :func:`silent_frames` pads)."""
        hop = SAMPLE_RATE / FPS
        win = int(round(2 * hop))
        n_fft = 1 << (win - 1).bit_length()
        freqs = np.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE)
        band = (freqs >= SPEECH_BAND[0]) & (freqs <= SPEECH_BAND[1])
        while True:
            start = int(round(len(self._energy) * hop)) - win // 2
            if (len(self._energy) >= upto + SILENCE_SPAN) if self.finished else start + win > self.samples.size:
                break
            piece = np.zeros(win)
            lo, hi = max(start, 0), min(start + win, self.samples.size)
            if hi > lo:
                piece[lo - start : hi - start] = self.samples[lo:hi]
            spec = np.abs(np.fft.rfft(piece * np.hanning(win), n_fft)) ** 2
            self._energy.append(float(spec[band].sum()))
        return np.asarray(self._energy)

    def decided(self, upto: int) -> np.ndarray:
        """Boolean [upto]: the decided frames' flags, False for frames not decided yet."""
        energy = self._energies(upto)
        last = upto if self.finished else energy.size - SILENCE_SPAN  # frames whose whole span has arrived
        if last > len(self._flags):
            if not self._heard:
                quiet = np.ones(energy.size, bool)
            else:
                floor = max(np.percentile(energy, 99) * 1e-4, 1e-12)
                envelope = np.log(energy + floor)
                quiet = 10.0 * (envelope - np.percentile(envelope, 99)) / np.log(10.0) < SILENCE_DB
            padded = np.concatenate([np.ones(SILENCE_SPAN, bool), quiet, np.ones(SILENCE_SPAN, bool)])
            for j in range(len(self._flags), last):
                self._flags.append(bool(padded[j : j + 2 * SILENCE_SPAN + 1].all()))
        out = np.zeros(upto, bool)
        take = min(upto, len(self._flags))
        out[:take] = self._flags[:take]
        return out
