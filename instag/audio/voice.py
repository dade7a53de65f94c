"""Changed voices and rooms with the timing kept: the rows of the new-audio evaluation (DESIGN §4) and the audio
augmentations of training share these.

Each function takes 16 kHz mono float32 samples ``[n]`` and returns ``[n]``: the same words at the same times, so a
ground truth recorded with the original sound still holds.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000


def gain(samples: np.ndarray, db: float) -> np.ndarray:
    """The recording ``db`` decibels louder (negative: quieter)."""
    return (np.asarray(samples, np.float32) * np.float32(10 ** (db / 20))).astype(np.float32)


def add_noise(samples: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """White noise at ``snr_db`` below the speech's power (measured over the frames louder than -40 dB of the
    loudest, so pauses do not lower the speech level)."""
    x = np.asarray(samples, np.float64)
    frames = x[: x.size // 640 * 640].reshape(-1, 640)
    power = (frames**2).mean(axis=1) if frames.size else np.array([0.0])
    loud = power[power > power.max() * 1e-4] if power.max() > 0 else power
    speech_power = float(loud.mean()) if loud.size else 0.0
    noise = np.random.default_rng(seed).standard_normal(x.size) * np.sqrt(speech_power / 10 ** (snr_db / 10))
    return (x + noise).astype(np.float32)


def band_limit(samples: np.ndarray, low_hz: float = 300.0, high_hz: float = 3400.0) -> np.ndarray:
    """A telephone line: only ``low_hz .. high_hz`` passes (a zero-phase FFT mask with 50-Hz cosine edges)."""
    x = np.asarray(samples, np.float64)
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(x.size, 1.0 / SAMPLE_RATE)
    edge = 50.0
    rise = np.clip((f - (low_hz - edge)) / edge, 0, 1)
    fall = np.clip(((high_hz + edge) - f) / edge, 0, 1)
    mask = 0.5 - 0.5 * np.cos(np.pi * np.minimum(rise, fall))
    return np.fft.irfft(spec * mask, x.size).astype(np.float32)


def _stretch(x: np.ndarray, rate: float, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """Phase-vocoder time stretch: ``rate`` > 1 shortens. Identity phase locking is not needed at these ratios."""
    window = np.hanning(n_fft)
    pad = np.concatenate([np.zeros(n_fft), x, np.zeros(n_fft)])
    count = 1 + (pad.size - n_fft) // hop
    frames = np.stack([pad[i * hop : i * hop + n_fft] * window for i in range(count)])
    spec = np.fft.rfft(frames, axis=1)  # [count, bins]
    steps = np.arange(0, count - 1, rate)
    expected = 2 * np.pi * hop * np.arange(spec.shape[1]) / n_fft
    phase = np.angle(spec[0])
    out = np.zeros(len(steps) * hop + n_fft)
    norm = np.zeros_like(out)
    for k, t in enumerate(steps):
        i = int(t)
        frac = t - i
        mag = (1 - frac) * np.abs(spec[i]) + frac * np.abs(spec[i + 1])
        frame = np.fft.irfft(mag * np.exp(1j * phase), n_fft) * window
        out[k * hop : k * hop + n_fft] += frame
        norm[k * hop : k * hop + n_fft] += window**2
        delta = np.angle(spec[i + 1]) - np.angle(spec[i]) - expected
        delta -= 2 * np.pi * np.round(delta / (2 * np.pi))
        phase = phase + expected + delta
    out /= np.maximum(norm, 1e-3)
    return out[n_fft:]


def pitch_shift(samples: np.ndarray, semitones: float) -> np.ndarray:
    """The voice ``semitones`` higher (negative: lower) with its timing kept: stretch the time by the pitch ratio
    with a phase vocoder, then resample back to the original length."""
    x = np.asarray(samples, np.float64)
    if x.size == 0 or semitones == 0:
        return x.astype(np.float32)
    ratio = 2 ** (semitones / 12)
    stretched = _stretch(x, 1.0 / ratio)  # ratio times longer, same pitch
    positions = np.arange(x.size) * ratio
    return np.interp(positions, np.arange(stretched.size), stretched).astype(np.float32)


# The changed-voice rows of the new-audio evaluation: name -> function of the samples.
VOICE_CHANGES = {
    "pitch +3 st": lambda x: pitch_shift(x, 3.0),
    "pitch -3 st": lambda x: pitch_shift(x, -3.0),
    "-12 dB": lambda x: gain(x, -12.0),
    "noise 20 dB SNR": lambda x: add_noise(x, 20.0),
    "telephone 300-3400 Hz": band_limit,
}
