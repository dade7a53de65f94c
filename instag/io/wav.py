"""WAV reading and writing without third-party audio libraries.

Python's ``wave`` module rejects WAVE_FORMAT_EXTENSIBLE headers, 24-bit PCM and float
samples, which many recorders and ffmpeg produce. :func:`read_wav` parses the RIFF
chunks itself and returns float32 samples in [-1, 1]; :func:`write_wav` writes 16-bit PCM
atomically; :func:`resample` is a windowed-sinc (Kaiser) resampler for any pair of rates.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np

from instag.errors import InstagError
from instag.io.atomic import atomic_path

_PCM = 0x0001
_IEEE_FLOAT = 0x0003
_EXTENSIBLE = 0xFFFE
# What a real WAV header can hold; anything else is a damaged header, refused before any work (a rate of 1 Hz made
# the resampler run for minutes). 8 kHz telephone speech to 384 kHz studio masters; up to 64 channels (7th-order
# ambisonics); 8- to 64-bit samples.
MIN_RATE, MAX_RATE = 1000, 384_000
MAX_CHANNELS = 64
MAX_BITS = 64
# data sizes that streaming writers leave when they cannot seek back (0xFFFFFFFF, 0x7FFFFFFF): "as long as it goes"
_UNKNOWN_SIZE = 0x7FFF0000


def _parse_fmt(body: bytes, path: Path) -> tuple[int, int, int, int, int]:
    """Return (format tag, channels, sample rate, block align, bits per sample)."""
    if len(body) < 16:
        raise InstagError(f"{path}: the WAV 'fmt ' chunk is truncated ({len(body)} bytes); re-export the audio as WAV")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == _EXTENSIBLE:
        if len(body) < 40:
            raise InstagError(f"{path}: WAVE_FORMAT_EXTENSIBLE header is truncated; re-export the audio as WAV")
        # The sub-format GUID starts with the real format tag. Samples fill their container
        # (e.g. 20 valid bits left-aligned in 24), so scaling by the container width is right.
        tag = struct.unpack("<H", body[24:26])[0]
    return tag, channels, rate, block_align, bits


def _check_header(path: Path, channels: int, rate: int, block_align: int, bits: int) -> None:
    """Refuse header values no recording has (see :data:`MIN_RATE` and the limits beside it)."""
    damaged = "the WAV header is damaged; re-export the audio (ffmpeg -i in.wav -ar 16000 -ac 1 out.wav)"
    if not MIN_RATE <= rate <= MAX_RATE:
        raise InstagError(f"{path}: the WAV header gives a sample rate of {rate} Hz, outside {MIN_RATE}-{MAX_RATE} Hz; "
                          f"{damaged}")
    if not 1 <= channels <= MAX_CHANNELS:
        raise InstagError(f"{path}: the WAV header gives {channels} channels (1-{MAX_CHANNELS} are possible); {damaged}")
    if not 1 <= bits <= MAX_BITS:
        raise InstagError(f"{path}: the WAV header gives {bits} bits per sample (1-{MAX_BITS} are possible); {damaged}")
    width = block_align // channels if block_align else -(-bits // 8)
    if width * 8 < bits or width > MAX_BITS // 8 or (block_align and block_align % channels):
        raise InstagError(f"{path}: the WAV header's block size of {block_align} bytes does not hold {channels} "
                          f"samples of {bits} bits; {damaged}")


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a WAV file.

    Supports PCM 8 (unsigned), 16, 24 and 32-bit, IEEE float 32/64, plain or
    WAVE_FORMAT_EXTENSIBLE headers, odd-sized chunks and a ``data`` chunk whose size field
    is wrong (streamed files). Returns ``(samples, sample_rate)``: float32 ``[n]`` for
    mono, ``[n, channels]`` otherwise, scaled to [-1, 1].
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InstagError(f"cannot read audio {path}: {err.strerror or err}") from err
    if len(raw) < 12 or raw[:4] not in (b"RIFF", b"RIFX") or raw[8:12] != b"WAVE":
        raise InstagError(f"{path} is not a RIFF/WAVE file; convert it to WAV (e.g. ffmpeg -i in -ar 16000 out.wav)")
    if raw[:4] == b"RIFX":
        raise InstagError(f"{path} is a big-endian RIFX file; convert it to a standard little-endian WAV")
    fmt = None
    data = None
    pos = 12
    while pos + 8 <= len(raw):
        chunk_id = raw[pos : pos + 4]
        size = struct.unpack("<I", raw[pos + 4 : pos + 8])[0]
        start = pos + 8
        end = min(start + size, len(raw))
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(raw[start:end], path)
        elif chunk_id == b"data":
            data = raw[start:end]
            if start + size > len(raw):  # streamed writers leave a placeholder size
                if size < _UNKNOWN_SIZE:
                    raise InstagError(f"{path}: the WAV header says its audio is {size} bytes but the file holds "
                                      f"{len(raw) - start}; the file is truncated or its header damaged; copy or "
                                      "re-export the audio")
                break
        pos = start + size + (size & 1)  # chunks are word aligned
    if fmt is None:
        raise InstagError(f"{path}: no 'fmt ' chunk; the WAV header is damaged, re-export the audio")
    if data is None:
        raise InstagError(f"{path}: no 'data' chunk; the WAV file holds no audio")
    tag, channels, rate, block_align, bits = fmt
    _check_header(path, channels, rate, block_align, bits)
    width = bits // 8
    if bits % 8 or width * channels != block_align:
        width = block_align // channels if block_align else width
    frames = len(data) // (width * channels)
    buf = np.frombuffer(data, dtype=np.uint8, count=frames * width * channels)
    if tag == _PCM:
        if width == 1:
            samples = (buf.astype(np.float32) - 128.0) / 128.0
        elif width == 2:
            samples = buf.view("<i2").astype(np.float32) / 32768.0
        elif width == 3:
            b = buf.reshape(-1, 3).astype(np.int32)
            ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
            ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
            samples = ints.astype(np.float32) / float(1 << 23)
        elif width == 4:
            samples = (buf.view("<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
        else:
            raise InstagError(f"{path}: {bits}-bit PCM is not supported; convert to 16-bit PCM WAV")
    elif tag == _IEEE_FLOAT:
        if width == 4:
            samples = buf.view("<f4").astype(np.float32)
        elif width == 8:
            samples = buf.view("<f8").astype(np.float32)
        else:
            raise InstagError(f"{path}: {bits}-bit float WAV is not supported; convert to 16-bit PCM WAV")
        bad = ~np.isfinite(samples)
        if bad.any():
            first = int(np.argmax(bad)) // channels
            raise InstagError(f"{path}: {int(bad.sum())} samples are NaN or infinite (the first at {first / rate:.3f} s); "
                              "the file is damaged or was written from a failed computation; re-export the audio")
    else:
        raise InstagError(
            f"{path}: WAV format tag 0x{tag:04x} (compressed audio) is not supported; convert to PCM WAV "
            "(ffmpeg -i in.wav -acodec pcm_s16le out.wav)"
        )
    samples = samples.reshape(frames, channels)
    if channels == 1:
        samples = samples[:, 0]
    return np.ascontiguousarray(samples, dtype=np.float32), int(rate)


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int) -> None:
    """Write float samples ([n] or [n, channels], in [-1, 1]) as 16-bit PCM, atomically."""
    arr = np.asarray(samples, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise InstagError(f"cannot write {path}: expected samples [n] or [n, channels], got shape {tuple(arr.shape)}")
    channels = arr.shape[1]
    pcm = np.clip(np.round(np.nan_to_num(arr) * 32767.0), -32768, 32767).astype("<i2").tobytes()
    header = (
        b"WAVE"
        + b"fmt "
        + struct.pack(
            "<IHHIIHH", 16, _PCM, channels, int(sample_rate), int(sample_rate) * channels * 2, channels * 2, 16
        )
    )
    header += b"data" + struct.pack("<I", len(pcm))
    body = b"RIFF" + struct.pack("<I", len(header) + len(pcm) + (len(pcm) & 1)) + header + pcm
    if len(pcm) & 1:
        body += b"\x00"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(body)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels of ``[n, channels]`` samples; ``[n]`` passes through. Returns float32 [n]."""
    arr = np.asarray(samples, dtype=np.float32)
    if arr.ndim == 1:
        return arr
    if arr.ndim != 2:
        raise InstagError(f"expected audio samples [n] or [n, channels], got shape {tuple(arr.shape)}")
    return arr.mean(axis=1, dtype=np.float64).astype(np.float32)


def resample(
    samples: np.ndarray, sr_in: int, sr_out: int, zero_crossings: int = 32, rolloff: float = 0.945, beta: float = 8.6
) -> np.ndarray:
    """Band-limited resampling with a Kaiser-windowed sinc kernel.

    Output sample ``m`` sits at input time ``m * sr_in / sr_out`` (exact integer arithmetic,
    so long files do not drift). When downsampling the kernel is stretched so that its
    cut-off, ``rolloff`` x the output Nyquist frequency, removes what would alias.
    ``samples``: [n] or [n, channels]; returns float32 with ``ceil(n * sr_out / sr_in)`` rows.
    """
    sr_in, sr_out = int(sr_in), int(sr_out)
    if sr_in <= 0 or sr_out <= 0:
        raise InstagError(f"cannot resample from {sr_in} Hz to {sr_out} Hz")
    x = np.asarray(samples, dtype=np.float64)
    if sr_in == sr_out:
        return x.astype(np.float32)
    g = math.gcd(sr_in, sr_out)
    up, down = sr_out // g, sr_in // g
    n = x.shape[0]
    n_out = -(-n * up // down)
    cutoff = min(1.0, up / down) * rolloff  # in units of the input Nyquist frequency
    half = int(math.ceil(zero_crossings / cutoff))
    taps = np.arange(-half + 1, half + 1)  # [2*half]
    pad = np.zeros((half + 1,) + x.shape[1:], dtype=np.float64)
    xp = np.concatenate([pad, x, pad], axis=0)
    out = np.empty((n_out,) + x.shape[1:], dtype=np.float32)

    def kernel(frac: np.ndarray) -> np.ndarray:  # [M] fractional positions -> [M, taps] weights
        offset = taps[None, :] - frac[:, None]  # distance in input samples
        arg = np.clip(offset / half, -1.0, 1.0)
        return cutoff * np.sinc(cutoff * offset) * np.i0(beta * np.sqrt(1.0 - arg * arg)) / np.i0(beta)

    if up <= 4096:
        # Polyphase: outputs m = p + up*j share one kernel and step through the input by `down`.
        windows = np.lib.stride_tricks.sliding_window_view(xp, len(taps), axis=0)  # [L, (ch,) taps]
        table = kernel(np.arange(up) / up)  # row k: the kernel for fractional position k / up
        for p in range(min(up, n_out)):
            first = (p * down) // up + 2  # xp index of tap -half+1 for j = 0 (xp = half+1 zeros, then x)
            frac_index = (p * down) % up
            rows = windows[first : first + down * ((n_out - 1 - p) // up) + 1 : down]
            out[p::up] = rows @ table[frac_index]
        return out
    chunk = max(1, 4_000_000 // (2 * half))
    for s in range(0, n_out, chunk):
        m = np.arange(s, min(n_out, s + chunk), dtype=np.int64)
        base = (m * down) // up
        w = kernel(((m * down) % up) / up)
        gathered = xp[base[:, None] + taps[None, :] + half + 1]  # [M, taps] or [M, taps, ch]
        if x.ndim == 1:
            out[s : s + len(m)] = np.einsum("mt,mt->m", w, gathered)
        else:
            out[s : s + len(m)] = np.einsum("mt,mtc->mc", w, gathered)
    return out


def load_audio_16k_mono(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Read a WAV, down-mix to mono and resample to ``sample_rate``; float32 [n]."""
    samples, rate = read_wav(path)
    mono = to_mono(samples)
    if rate != sample_rate:
        mono = resample(mono, rate, sample_rate)
    return mono
