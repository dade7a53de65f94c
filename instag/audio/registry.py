"""One registry of audio feature extractors: a name maps to a class with one interface.

Every extractor has ``.name``, ``.file_name`` (upstream's file name under ``data/<ID>/``),
``.item_shape`` ``(C, W)`` (the per-frame item fed to the network, after the loader's
permute), ``.file_item_shape`` (the same item as stored on disk, ``(W, C)``) and
``.extract(samples_16k_mono [n], num_frames=None) -> float32 [T, *file_item_shape]``.
Constructing an extractor never loads weights (so ``item_shape`` is free); ``extract``
loads them on first use and raises :class:`InstagError` saying where to put missing ones.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

from instag.errors import InstagError

# name -> (module, class); imported on demand so optional dependencies stay optional
EXTRACTORS: dict[str, tuple[str, str]] = {
    "whisper": ("instag.audio.whisper", "WhisperExtractor"),
    "mel": ("instag.audio.mel", "MelExtractor"),
    "deepspeech": ("instag.audio.deepspeech", "DeepSpeechExtractor"),
    "esperanto": ("instag.audio.wav2vec", "EsperantoExtractor"),
    "hubert": ("instag.audio.hubert", "HubertExtractor"),
    "ave": ("instag.audio.ave", "AveExtractor"),
}

# per-frame item fed to the network (C, W), and as stored in the file (W, C)
ITEM_SHAPES: dict[str, tuple[int, int]] = {
    "whisper": (512, 2),
    "mel": (80, 16),
    "deepspeech": (29, 16),
    "esperanto": (44, 16),
    "hubert": (1024, 2),
    "ave": (1, 512),
}
FILE_ITEM_SHAPES: dict[str, tuple[int, int]] = {name: (w, c) for name, (c, w) in ITEM_SHAPES.items()}


class AudioExtractor(Protocol):
    name: str
    file_name: str
    item_shape: tuple[int, int]
    file_item_shape: tuple[int, int]

    def extract(self, samples: np.ndarray, num_frames: int | None = None) -> np.ndarray: ...


def feature_definition(name: str) -> str | None:
    """The definition id of ``name``'s features (recorded beside feature files and in checkpoints), or None for
    extractors whose numbers have never changed meaning."""
    if name == "whisper":
        from instag.audio.whisper import FEATURE_DEFINITION

        return FEATURE_DEFINITION
    return None


def check_feature_meta(meta: dict, path, rerun: str) -> None:
    """Refuse a checkpoint (its ``meta``, read from ``path``) trained on features of another definition than its
    extractor computes now; ``rerun`` says what to run again."""
    name = meta.get("audio_extractor")
    wanted = feature_definition(name) if name in EXTRACTORS else None
    got = meta.get("audio_features")
    if wanted is not None and got != wanted:
        made = f"definition {got}" if got else "an older definition"
        raise InstagError(f"{path} was trained on {name} features of {made}, not {wanted}; {rerun}")


def check_name(name: str) -> str:
    if name not in EXTRACTORS:
        raise InstagError(f"unknown audio extractor {name!r}; choose one of {', '.join(EXTRACTORS)}")
    return name


def get_extractor(name: str, **weights_kw) -> AudioExtractor:
    """Build extractor ``name``; ``weights_kw``: ``weights`` (a path or model id) and ``device``."""
    module_name, class_name = EXTRACTORS[check_name(name)]
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**weights_kw)


def fit_length(features: np.ndarray, num_frames: int | None) -> np.ndarray:
    """Trim to ``num_frames`` rows or repeat the last row (features [T, ...])."""
    if num_frames is None or features.shape[0] == num_frames:
        return features
    if features.shape[0] > num_frames:
        return features[:num_frames]
    if features.shape[0] == 0:
        return np.zeros((num_frames,) + features.shape[1:], dtype=features.dtype)
    extra = np.repeat(features[-1:], num_frames - features.shape[0], axis=0)
    return np.concatenate([features, extra], axis=0)
