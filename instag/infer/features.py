"""Audio features for synthesis, computed so that chunked (streaming) and offline runs agree bit for bit.

For the default ``mel`` extractor the spectrogram is computed in fixed blocks of
:data:`ROWS_PER_BLOCK` rows (one video frame), each from its own fixed-length slice of the
samples (zeros outside the audio, exactly the zero padding the whole-clip STFT uses). Every
block therefore sees the same numbers in the same tensor shapes whether the audio arrived at
once or in 200-ms chunks, and a block is final as soon as its slice has arrived. The values
equal :func:`instag.audio.mel.log_mel_windows` (up to float rounding) for the same level
reference; streaming fixes the reference from its first audio, offline takes the whole clip's.

For ``whisper``, :class:`WhisperFeatureBuilder` computes each frame from its own fixed window of audio as soon as
that window has arrived, with the function offline extraction uses, so streamed and offline items are the same
numbers. Other extractors run over the whole clip (:func:`instag.audio.registry.get_extractor`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from instag.audio import mel as melmod
from instag.errors import InstagError

ROWS_PER_BLOCK = melmod.ROWS_PER_FRAME
# a block's slice starts 2 rows before its first row, so every row's STFT window lies inside it
_LEAD = 2 * melmod.HOP
_SLICE = melmod.HOP * (ROWS_PER_BLOCK + 4)  # 1920 samples >= N_FFT
SAMPLES_PER_FRAME = melmod.SAMPLE_RATE // 25


def block_end_sample(block: int) -> int:
    """Samples needed (from the clip start) before mel block ``block`` is final."""
    last_row = ROWS_PER_BLOCK * block + ROWS_PER_BLOCK - 1
    return melmod.HOP * last_row + melmod.N_FFT // 2


def num_rows(num_samples: int) -> int:
    """Rows of the whole-clip STFT (centre-padded) of ``num_samples``: the real (non-silence) rows."""
    return 1 + max(num_samples, melmod.N_FFT) // melmod.HOP


def mel_block(samples: np.ndarray, block: int) -> torch.Tensor:
    """dB mel rows of block ``block`` [ROWS_PER_BLOCK, 80] from 16 kHz samples [n] (zeros past the end)."""
    start = ROWS_PER_BLOCK * block * melmod.HOP - _LEAD
    seg = np.zeros(_SLICE, np.float32)
    lo, hi = max(start, 0), min(start + _SLICE, samples.shape[0])
    if hi > lo:
        seg[lo - start : hi - start] = samples[lo:hi]
    rows = melmod.mel_power_db(seg)  # row j centred on start + 320 j
    first = _LEAD // melmod.HOP
    return rows[first : first + ROWS_PER_BLOCK]


class AudioStream:
    """Audio that arrives in pieces: ``push(samples)`` appends 16 kHz mono samples, ``finish()`` marks the end.

    The feature builders below add ``ready_frames()`` (frames whose items are final), ``total_frames()`` (once
    finished) and ``items(upto)`` (network-layout items of frames ``0 .. upto-1``).
    """

    def __init__(self):
        self.samples = np.zeros(0, np.float32)
        self.finished = False

    def push(self, samples: np.ndarray) -> None:
        if self.finished:
            raise InstagError("audio pushed after the end of the stream")
        self.samples = np.concatenate([self.samples, np.asarray(samples, np.float32).reshape(-1)])

    def finish(self) -> None:
        self.finished = True


class MelFeatureBuilder(AudioStream):
    """Incremental per-frame mel items [T, 80, 16] (network layout) from audio that arrives in pieces."""

    def __init__(self, reference_db: float | None = None):
        if reference_db is not None and not np.isfinite(reference_db):
            raise InstagError(f"--reference_db {reference_db}: give a finite level in dB (as instag stream prints it), or "
                              "leave it out to measure it on the audio")
        super().__init__()
        self.reference_db = reference_db
        self._blocks: list[torch.Tensor] = []  # dB rows per block

    def total_frames(self) -> int | None:
        """Frames of the whole clip once finished (rounded like the mel extractor), else None."""
        return melmod.frame_count(self.samples.shape[0]) if self.finished else None

    def _final_blocks(self) -> int:
        n = self.samples.shape[0]
        if self.finished:
            return (num_rows(n) + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK
        b = len(self._blocks)
        while block_end_sample(b) <= n:
            b += 1
        return b

    def _compute_blocks(self) -> None:
        for b in range(len(self._blocks), self._final_blocks()):
            self._blocks.append(mel_block(self.samples, b))

    def ready_frames(self) -> int:
        """Frames whose 16 mel rows (2i-8 .. 2i+7) are all final."""
        if self.finished:
            return self.total_frames()
        self._compute_blocks()
        rows_ready = len(self._blocks) * ROWS_PER_BLOCK
        # frame i needs rows up to 2i+7
        return max(0, (rows_ready - 1 - (melmod.HALF - 1)) // melmod.ROWS_PER_FRAME + 1) if rows_ready else 0

    def ensure_reference(self) -> float:
        """The level reference: given, else measured on the audio received so far (then fixed)."""
        if self.reference_db is None:
            self.reference_db = melmod.reference_level(melmod.mel_power_db(self.samples))
        return self.reference_db

    def items(self, upto: int, provisional: bool = False) -> torch.Tensor:
        """Network-layout items [upto, 80, 16] of frames 0..upto-1.

        Items of frames that are not ready yet are silence, or with ``provisional`` computed as if
        the audio ended now (rows past the audio are silence); provisional values of rows that
        are not final may change once more audio arrives.
        """
        self._compute_blocks()
        ref = self.ensure_reference()
        blocks = self._blocks
        real = num_rows(self.samples.shape[0]) if self.finished else len(blocks) * ROWS_PER_BLOCK
        if provisional and not self.finished:
            real = num_rows(self.samples.shape[0])
            last = (real + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK
            blocks = blocks + [mel_block(self.samples, b) for b in range(len(blocks), last)]
        needed = melmod.ROWS_PER_FRAME * upto + melmod.WINDOW
        rows = torch.cat(blocks, 0) if blocks else torch.zeros(0, melmod.N_MELS)
        rows = melmod.normalise(rows[: min(real, needed - melmod.HALF)], ref)
        padded = torch.full((needed, melmod.N_MELS), melmod.SILENCE, dtype=torch.float32)
        padded[melmod.HALF : melmod.HALF + rows.shape[0]] = rows
        return padded.unfold(0, melmod.WINDOW, melmod.ROWS_PER_FRAME)[:upto].contiguous()  # [T, 80, 16]


class WhisperFeatureBuilder(AudioStream):
    """Incremental per-frame whisper items ``[T, C, 2]`` (network layout), the :class:`MelFeatureBuilder` interface.

    A whisper frame's features depend only on the audio of its own window (:mod:`instag.audio.whisper`), so frame
    ``j`` is computed once the audio up to ``extractor.samples_needed(j)`` has arrived, by the same function offline
    extraction uses: streamed items are the offline items. Frames not final yet are computed as if the audio ended
    now (zeros after it), and recomputed once it has arrived.
    """

    def __init__(self, extractor=None):
        from instag.audio.registry import get_extractor

        super().__init__()
        self.extractor = extractor if extractor is not None else get_extractor("whisper")
        self.reference_db = None  # the mel level reference of MelFeatureBuilder: none here
        self._final = np.zeros((0, 2, self.extractor.item_shape[0]), np.float32)  # per frame [2, C]
        self._ready = 0

    def total_frames(self) -> int | None:
        return self.extractor.num_frames(self.samples.shape[0]) if self.finished else None

    def ready_frames(self) -> int:
        if self.finished:
            return self.total_frames()
        while self.extractor.samples_needed(self._ready) <= self.samples.shape[0]:
            self._ready += 1
        return self._ready

    def items(self, upto: int, provisional: bool = False) -> torch.Tensor:
        """Network-layout items ``[upto, C, 2]`` of frames ``0 .. upto-1``. Frames not final yet are always computed
        as if the audio ended now, so ``provisional`` (the :class:`MelFeatureBuilder` interface) changes nothing."""
        final = min(self.ready_frames(), upto)
        have = self._final.shape[0]
        if final > have:
            self._final = np.concatenate([self._final, self.extractor.frames(self.samples, have, final)])
        rows = self._final[:upto]
        if rows.shape[0] < upto:
            rows = np.concatenate([rows, self.extractor.frames(self.samples, rows.shape[0], upto)])
        return torch.from_numpy(np.ascontiguousarray(rows.transpose(0, 2, 1)))


def mel_items(samples: np.ndarray, reference_db: float | None = None) -> tuple[torch.Tensor, float]:
    """Offline mel items [T, 80, 16] of a whole clip, block by block (see the module docstring),
    and the level reference used (the whole clip's unless given)."""
    samples = np.asarray(samples, np.float32).reshape(-1)
    if reference_db is None:
        reference_db = melmod.reference_level(melmod.mel_power_db(samples))
    builder = MelFeatureBuilder(reference_db)
    builder.push(samples)
    builder.finish()
    return builder.items(builder.total_frames()), float(reference_db)


def audio_items(audio: str | Path, extractor: str, reference_db: float | None = None) -> tuple[torch.Tensor, dict]:
    """Per-frame network items [T, C, W] for a wav (extracted now) or a feature .npy (loaded),
    and facts about them (``wav``: the path of the sound to mux, or None; ``reference_db``)."""
    from instag.audio.windows import load_features, speech_beside
    from instag.io.wav import load_audio_16k_mono

    path = Path(audio)
    if not path.is_file():
        raise InstagError(f"audio {path} not found; give a .wav file or a feature .npy")
    if path.suffix.lower() == ".npy":
        feats = torch.from_numpy(load_features(path, extractor, None))
        return feats, {"wav": speech_beside(path), "reference_db": None}
    samples = load_audio_16k_mono(path)
    if samples.size == 0:
        raise InstagError(f"{path} holds no audio samples")
    feats, ref = items_from_samples(samples, extractor, reference_db)
    return feats, {"wav": path, "reference_db": ref, "samples": samples}


_EXTRACTORS: dict[str, object] = {}  # one per name and process: the whisper encoder loads once


def items_from_samples(samples: np.ndarray, extractor: str, reference_db: float | None = None) -> tuple[torch.Tensor, float | None]:
    """Per-frame network items ``[T, C, W]`` of 16 kHz mono samples, as synthesis computes them, and the mel level
    reference used (None for other extractors)."""
    from instag.audio.registry import get_extractor

    if extractor == "mel":
        return mel_items(samples, reference_db)
    if extractor not in _EXTRACTORS:
        _EXTRACTORS[extractor] = get_extractor(extractor)
    raw = _EXTRACTORS[extractor].extract(samples, None)  # upstream file layout [T, W, C]
    return torch.from_numpy(np.ascontiguousarray(np.asarray(raw, np.float32).transpose(0, 2, 1))), None


def silence_items(num_frames: int, extractor: str, num_items: int | None = None) -> torch.Tensor:
    """Items of silence for ``num_frames`` frames (the static baseline): the extractor run on zeros."""
    samples = np.zeros(num_frames * SAMPLES_PER_FRAME, np.float32)
    if extractor == "mel":
        return mel_items(samples)[0]
    from instag.audio.registry import get_extractor

    raw = get_extractor(extractor).extract(samples, num_items or num_frames)
    return torch.from_numpy(np.ascontiguousarray(np.asarray(raw, np.float32).transpose(0, 2, 1)))
