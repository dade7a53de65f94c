"""The default audio features: log-mel windows computed with torch, no weights.

Where upstream feeds a pre-trained speech recogniser's outputs to the motion fields, the
default here feeds a log-mel spectrogram and lets the audio encoder learn in pre-training.
The spectrogram runs at 50 Hz (hop 320 samples at 16 kHz, 40 ms Hann window, 80 mel bands
55-7600 Hz); frame ``i`` (25 FPS, time ``i/25`` s = mel row ``2i``) gets the 16 mel rows
``2i-8 .. 2i+7`` (-160..+140 ms), the same window DeepSpeech features use upstream.

File ``aud_mel.npy``: float32 ``[T, 16, 80]`` (window taps, mel bands); per-frame item fed
to the network after the loader's permute: ``[80, 16]``.

Normalisation is robust to recording level: decibels are taken relative to the clip's
95th percentile of per-row peak level (floored, so silence stays silence), then mapped as
``clip(dB_rel, -80, 20) / 40 + 1``: loud speech sits near 1, silence at -1.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from instag.data.format import AUDIO_FEATURE_FILES, AUDIO_SAMPLE_RATE

SAMPLE_RATE = AUDIO_SAMPLE_RATE
HOP = 320  # 20 ms: two mel rows per video frame at 25 FPS
WIN = 640  # 40 ms
N_FFT = 1024
N_MELS = 80
FMIN, FMAX = 55.0, 7600.0
WINDOW = 16  # mel rows per video frame
HALF = WINDOW // 2
ROWS_PER_FRAME = 2
# An absolute level floor for the reference (dB of the power mel spectrum of samples in
# [-1, 1]); speech at ordinary levels has its reference tens of dB above it.
REFERENCE_FLOOR_DB = -10.0
SILENCE = -1.0


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, hz / f_sp)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), mel * f_sp)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular filters on Slaney's mel scale with area normalisation: float32 [n_mels, n_fft//2+1]."""
    fft_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    rising = (fft_hz[None, :] - edges[:-2, None]) / widths[:-1, None]
    falling = (edges[2:, None] - fft_hz[None, :]) / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


def mel_power_db(samples: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Mel power spectrogram in dB at 50 Hz: float32 [rows, 80]; row k is centred on sample 320k."""
    x = torch.as_tensor(np.asarray(samples, dtype=np.float32)).reshape(-1)
    if x.numel() < N_FFT:
        x = torch.nn.functional.pad(x, (0, N_FFT - x.numel()))
    spec = torch.stft(
        x,
        n_fft=N_FFT,
        hop_length=HOP,
        win_length=WIN,
        window=torch.hann_window(WIN),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    power = spec.real.square() + spec.imag.square()  # [freq, rows]
    fb = torch.from_numpy(mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS, FMIN, FMAX))
    mel = fb @ power
    return (10.0 * torch.log10(mel.clamp_min(1e-10))).T.contiguous()


def reference_level(mel_db: torch.Tensor) -> float:
    """The clip's level reference: 95th percentile of per-row peak dB, floored."""
    if mel_db.numel() == 0:
        return REFERENCE_FLOOR_DB
    peaks = mel_db.max(dim=1).values
    return max(float(torch.quantile(peaks, 0.95)), REFERENCE_FLOOR_DB)


def normalise(mel_db: torch.Tensor, reference_db: float) -> torch.Tensor:
    """Map dB to the network range: ``clip(dB - reference, -80, 20) / 40 + 1``."""
    return (mel_db - reference_db).clamp(-80.0, 20.0) / 40.0 + 1.0


def frame_count(num_samples: int) -> int:
    """Video frames (25 FPS) covered by ``num_samples`` at 16 kHz, rounded to nearest."""
    return int(round(num_samples / (SAMPLE_RATE / 25)))


def log_mel_windows(
    samples: np.ndarray, num_frames: int | None = None, reference_db: float | None = None
) -> np.ndarray:
    """Per-frame log-mel windows of 16 kHz mono ``samples`` [n]: float32 [T, 16, 80].

    ``num_frames`` fixes T (audio past the end counts as silence); ``reference_db`` fixes
    the level reference (streaming passes the one measured on the first chunk).
    """
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    if num_frames is None:
        num_frames = frame_count(samples.size)
    mel_db = mel_power_db(samples)
    ref = reference_level(mel_db) if reference_db is None else float(reference_db)
    rows = normalise(mel_db, ref)  # [R, 80]
    needed = ROWS_PER_FRAME * num_frames + WINDOW  # rows -8 .. 2T+7
    padded = torch.full((needed, N_MELS), SILENCE, dtype=torch.float32)
    take = min(rows.shape[0], needed - HALF)
    padded[HALF : HALF + take] = rows[:take]
    windows = padded.unfold(0, WINDOW, ROWS_PER_FRAME)[:num_frames]  # [T, 80, 16]
    return windows.permute(0, 2, 1).contiguous().numpy()


class MelExtractor:
    """Log-mel windows (no weights); see the module docstring for the exact layout."""

    name = "mel"
    file_name = AUDIO_FEATURE_FILES["mel"]
    item_shape = (N_MELS, WINDOW)
    file_item_shape = (WINDOW, N_MELS)

    def __init__(self, weights: str | None = None, device: str | None = None):
        del weights, device  # nothing to load; accepted so every extractor takes the same arguments

    def extract(self, samples: np.ndarray, num_frames: int | None = None) -> np.ndarray:
        """16 kHz mono float32 [n] -> float32 [T, 16, 80]."""
        return log_mel_windows(samples, num_frames)
