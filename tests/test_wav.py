"""WAV reader/writer and resampler: generated files of every format, and a real 24-bit file."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from instag.errors import InstagError
from instag.io.wav import load_audio_16k_mono, read_wav, resample, to_mono, write_wav

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


def _riff(fmt_body: bytes, data: bytes, extra_chunks: bytes = b"", data_size: int | None = None) -> bytes:
    size = len(data) if data_size is None else data_size
    body = b"WAVE" + extra_chunks + b"fmt " + struct.pack("<I", len(fmt_body)) + fmt_body
    body += b"data" + struct.pack("<I", size) + data + (b"\x00" if len(data) & 1 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _fmt(tag: int, channels: int, rate: int, bits: int, extensible: bool = False) -> bytes:
    align = channels * bits // 8
    head = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, channels, rate, rate * align, align, bits)
    if not extensible:
        return head
    return head + struct.pack("<HHI", 22, bits, 0x3 if channels == 2 else 0x4) + struct.pack("<H", tag) + GUID_TAIL


def _signal(n: int, channels: int) -> np.ndarray:
    t = np.arange(n) / 1000.0
    sig = np.stack([0.5 * np.sin(2 * np.pi * 3 * t + c) for c in range(channels)], axis=1)
    return sig[:, 0] if channels == 1 else sig


def _encode(sig: np.ndarray, kind: str) -> bytes:
    if kind == "u8":
        return np.round(sig * 127 + 128).astype(np.uint8).tobytes()
    if kind == "i16":
        return np.round(sig * 32767).astype("<i2").tobytes()
    if kind == "i24":
        ints = np.round(sig * (2**23 - 1)).astype(np.int64).reshape(-1)
        b = np.stack([(ints >> s) & 0xFF for s in (0, 8, 16)], axis=1).astype(np.uint8)
        return b.tobytes()
    if kind == "i32":
        return np.round(sig * (2**31 - 1)).astype("<i4").tobytes()
    if kind == "f32":
        return sig.astype("<f4").tobytes()
    return sig.astype("<f8").tobytes()


FORMATS = [  # (kind, tag, bits, tolerance)
    ("u8", 1, 8, 1 / 100),
    ("i16", 1, 16, 1e-4),
    ("i24", 1, 24, 1e-6),
    ("i32", 1, 32, 1e-6),
    ("f32", 3, 32, 1e-7),
    ("f64", 3, 64, 1e-7),
]


@pytest.mark.parametrize("kind,tag,bits,tol", FORMATS)
@pytest.mark.parametrize("channels,extensible", [(1, False), (2, False), (2, True)])
def test_read_generated_formats(tmp_path, kind, tag, bits, tol, channels, extensible):
    sig = _signal(999, channels)
    path = tmp_path / f"{kind}.wav"
    path.write_bytes(_riff(_fmt(tag, channels, 22050, bits, extensible), _encode(sig, kind)))
    samples, rate = read_wav(path)
    assert rate == 22050 and samples.dtype == np.float32
    assert samples.shape == sig.shape
    np.testing.assert_allclose(samples, sig, atol=tol)


def test_extensible_24bit_stereo_48k_with_odd_chunk_and_streamed_size(tmp_path):
    sig = _signal(4801, 2)
    odd_chunk = b"LIST" + struct.pack("<I", 5) + b"abcde" + b"\x00"  # odd size, padded to even
    raw = _riff(
        _fmt(1, 2, 48000, 24, extensible=True), _encode(sig, "i24"), extra_chunks=odd_chunk, data_size=0xFFFFFFFF
    )  # placeholder size written by streaming encoders
    path = tmp_path / "ext24.wav"
    path.write_bytes(raw)
    samples, rate = read_wav(path)
    assert rate == 48000 and samples.shape == (4801, 2)
    np.testing.assert_allclose(samples, sig, atol=1e-6)


def test_bad_files_give_one_line_errors(tmp_path):
    not_wav = tmp_path / "x.wav"
    not_wav.write_bytes(b"ID3\x03 not a wav at all")
    with pytest.raises(InstagError, match="not a RIFF/WAVE"):
        read_wav(not_wav)
    mp3_in_wav = tmp_path / "mp3.wav"
    mp3_in_wav.write_bytes(_riff(_fmt(0x55, 1, 16000, 16), b"\x00" * 100))
    with pytest.raises(InstagError, match="0x0055") as err:
        read_wav(mp3_in_wav)
    assert "\n" not in str(err.value) and str(mp3_in_wav) in str(err.value)
    no_data = tmp_path / "nodata.wav"
    fmt = _fmt(1, 1, 16000, 16)
    no_data.write_bytes(
        b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt)) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    )
    with pytest.raises(InstagError, match="no 'data' chunk"):
        read_wav(no_data)
    with pytest.raises(InstagError, match="cannot read audio"):
        read_wav(tmp_path / "missing.wav")


def _header(tag: int, channels: int, rate: int, block_align: int, bits: int) -> bytes:
    return struct.pack("<HHIIHH", tag, channels, rate, rate * block_align, block_align, bits)


@pytest.mark.parametrize("fmt, data_size, words", [
    (_header(1, 1, 1, 2, 16), None, "sample rate of 1 Hz, outside 1000-384000 Hz"),
    (_header(1, 1, 999, 2, 16), None, "sample rate of 999 Hz"),
    (_header(1, 1, 2_000_000, 2, 16), None, "sample rate of 2000000 Hz"),
    (_header(1, 0, 16000, 0, 16), None, "gives 0 channels (1-64 are possible)"),
    (_header(1, 300, 16000, 600, 16), None, "gives 300 channels"),
    (_header(1, 1, 16000, 2, 0), None, "gives 0 bits per sample (1-64 are possible)"),
    (_header(1, 1, 16000, 2, 4000), None, "gives 4000 bits per sample"),
    (_header(1, 2, 16000, 2, 24), None, "block size of 2 bytes does not hold 2 samples of 24 bits"),
    (_header(1, 1, 16000, 2, 16), 50_000, "says its audio is 50000 bytes but the file holds 1000"),
])
def test_impossible_header_values_are_refused_at_once(tmp_path, fmt, data_size, words):
    """A header claiming 1 Hz made features and synthesize resample for minutes; each impossible value is refused
    when the file is read, in one line naming the file and the value."""
    import time

    path = tmp_path / "damaged.wav"
    path.write_bytes(_riff(fmt, b"\x01\x00" * 500, data_size=data_size))
    t0 = time.perf_counter()
    for read in (read_wav, load_audio_16k_mono):
        with pytest.raises(InstagError) as err:
            read(path)
        assert words in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    assert time.perf_counter() - t0 < 1.0


def test_limits_keep_real_recordings(tmp_path):
    for rate, channels, bits, kind in ((8000, 1, 8, "u8"), (384_000, 2, 32, "f32"), (16000, 6, 16, "i16")):
        path = tmp_path / f"{rate}_{channels}.wav"
        path.write_bytes(_riff(_fmt(3 if kind == "f32" else 1, channels, rate, bits), _encode(_signal(100, channels), kind)))
        samples, got = read_wav(path)
        assert got == rate and samples.shape == ((100,) if channels == 1 else (100, channels))
    streamed = tmp_path / "streamed.wav"  # a writer that could not seek back: "as long as it goes"
    streamed.write_bytes(_riff(_fmt(1, 1, 16000, 16), _encode(_signal(100, 1), "i16"), data_size=0x7FFFFFFF))
    assert read_wav(streamed)[0].shape == (100,)


def test_features_refuses_a_one_hertz_header_at_once(tmp_path):
    from badinputs import one_line_error, run_cli

    path = tmp_path / "user.wav"
    path.write_bytes(_riff(_header(1, 1, 1, 2, 16), b"\x01\x00" * 16000))
    one_line_error(run_cli("features", "--wav", str(path), "--extractor", "mel", timeout=60), str(path),
                   "sample rate of 1 Hz")
    assert [p.name for p in tmp_path.iterdir()] == ["user.wav"]


def test_write_read_roundtrip_and_mono(tmp_path):
    sig = _signal(1601, 2).astype(np.float32)
    path = tmp_path / "sub dir" / "out é.wav"
    write_wav(path, sig, 16000)
    back, rate = read_wav(path)
    assert rate == 16000 and back.shape == sig.shape
    np.testing.assert_allclose(back, sig, atol=1 / 32767)
    assert not list(path.parent.glob(".*"))  # no temporary left behind
    mono = to_mono(back)
    assert mono.shape == (1601,)
    np.testing.assert_allclose(mono, sig.mean(axis=1), atol=1e-4)
    write_wav(tmp_path / "m.wav", np.array([2.0, -2.0, 0.0], np.float32), 8000)  # clipped, not wrapped
    np.testing.assert_allclose(read_wav(tmp_path / "m.wav")[0], [32767 / 32768, -1.0, 0.0])


@pytest.mark.parametrize(
    "sr_in,sr_out", [(48000, 16000), (44100, 16000), (22050, 16000), (16000, 48000), (16001, 16000)]
)
def test_resample_is_accurate_and_band_limited(sr_in, sr_out):
    t = np.arange(sr_in) / sr_in  # one second
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    out = resample(tone, sr_in, sr_out)
    assert out.shape == (-(-sr_in * sr_out // sr_in),)
    mid = slice(len(out) // 4, 3 * len(out) // 4)
    expect = np.sin(2 * np.pi * 1000 * np.arange(len(out)) / sr_out)
    assert np.abs(out[mid] - expect[mid]).max() < 1e-3
    if sr_in > 2 * 10000 and sr_out == 16000:  # 10 kHz would alias to 6 kHz: must be removed
        alias = resample(np.sin(2 * np.pi * 10000 * t).astype(np.float32), sr_in, sr_out)
        assert np.sqrt(np.mean(alias[mid] ** 2)) < 1e-3
    stereo = resample(np.stack([tone, -tone], axis=1), sr_in, sr_out)
    np.testing.assert_allclose(stereo[:, 0], out, atol=1e-6)
    np.testing.assert_allclose(stereo[:, 1], -out, atol=1e-6)


def test_real_24bit_extensible_file_matches_ffmpeg():
    path = DATA / "audio" / "sadtalker_deyu_de.wav"
    if not path.exists():
        pytest.skip(f"{path} absent (../shared/data not beside the checkout)")
    samples, rate = read_wav(path)
    assert rate == 48000 and samples.ndim == 2 and samples.shape[1] == 2
    assert 9.0 < samples.shape[0] / rate < 9.6
    assert 0.1 < np.abs(samples).max() <= 1.0
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    raw = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "s32le", "-"],
        capture_output=True,
        check=True,
    ).stdout
    ref = np.frombuffer(raw, "<i4").reshape(-1, 2) / 2.0**31
    assert ref.shape == samples.shape
    np.testing.assert_allclose(samples, ref, atol=1e-6)
    mono16k = load_audio_16k_mono(path)
    assert abs(mono16k.shape[0] - samples.shape[0] / 3) <= 1
