"""Audio features behind one registry (:mod:`instag.audio.registry`) and per-frame windowing.

``mel`` (the default) needs no weights; ``deepspeech``, ``esperanto``, ``hubert`` and
``ave`` load the user's local copies of upstream's models and write upstream's files.
"""

from instag.audio.registry import EXTRACTORS, FILE_ITEM_SHAPES, ITEM_SHAPES, get_extractor
from instag.audio.windows import frame_window, frame_windows, load_features

__all__ = [
    "EXTRACTORS",
    "FILE_ITEM_SHAPES",
    "ITEM_SHAPES",
    "frame_window",
    "frame_windows",
    "get_extractor",
    "load_features",
]
