"""wav2vec 2.0 CTC logits (``esperanto``): upstream's ``aud_eo.npy``.

Upstream runs ``cpierse/wav2vec2-large-xlsr-53-esperanto`` as a streaming recogniser over
20 ms chunks, each call seeing 10 chunks of left context, 50 new chunks and 10 chunks of
right context, and keeps the 44 logits of the 50 new chunks (50 Hz). The logits are cut
into windows of 16 with stride 2, zero padded by 8 (``unfold``): ``[M/2+1, 16, 44]``, one
window centred on each video frame. Weights come from a local directory or the Hugging
Face cache (never downloaded here); ``transformers`` is the ``esperanto`` extra.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from instag.audio.registry import fit_length
from instag.data.format import AUDIO_FEATURE_FILES
from instag.errors import InstagError

DEFAULT_MODEL = "cpierse/wav2vec2-large-xlsr-53-esperanto"
CHUNK = 320  # samples per 20 ms at 16 kHz
LEFT, CONTEXT, RIGHT = 10, 50, 10
WINDOW, STRIDE = 16, 2
NUM_LOGITS = 44


def pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pretrained(model_class: str, weights: str | os.PathLike | None, default_id: str, extractor: str):
    """Load ``transformers.<model_class>`` from a local directory or the HF cache (offline).

    Returns ``(model, do_normalize)``; a missing model raises a one-line InstagError saying
    where to put it.
    """
    try:
        import transformers
    except ImportError as err:
        raise InstagError(f"{extractor} features need transformers: pip install 'instag[{extractor}]'") from err
    source = str(weights) if weights else default_id
    is_dir = Path(source).is_dir()
    try:
        model = getattr(transformers, model_class).from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as err:
        raise InstagError(
            f"{extractor} weights {source!r} not found locally: put the model in the Hugging Face cache "
            f"(huggingface-cli download {default_id}) or pass --weights DIR (a save_pretrained directory)"
        ) from err
    do_normalize = True
    config_file = Path(source) / "preprocessor_config.json" if is_dir else None
    if config_file is not None and config_file.is_file():
        do_normalize = bool(json.loads(config_file.read_text()).get("do_normalize", True))
    return model.eval(), do_normalize


def normalise_input(x: np.ndarray, do_normalize: bool) -> np.ndarray:
    """What the models' feature extractor does: zero mean, unit variance per call."""
    x = np.asarray(x, dtype=np.float32)
    if not do_normalize:
        return x
    return (x - x.mean()) / np.sqrt(x.var() + 1e-7)


def unfold_windows(steps: np.ndarray, window: int = WINDOW, stride: int = STRIDE) -> np.ndarray:
    """Per-step features [M, C] -> windows [M//stride + 1, window, C], zero padded by window/2."""
    pad = np.zeros((window // 2, steps.shape[1]), dtype=np.float32)
    padded = np.concatenate([pad, steps.astype(np.float32), pad])
    starts = np.arange(0, padded.shape[0] - window + 1, stride)
    return padded[starts[:, None] + np.arange(window)[None, :]]


class EsperantoExtractor:
    name = "esperanto"
    file_name = AUDIO_FEATURE_FILES["esperanto"]
    item_shape = (NUM_LOGITS, WINDOW)
    file_item_shape = (WINDOW, NUM_LOGITS)

    def __init__(self, weights: str | os.PathLike | None = None, device: str | None = None):
        self.weights = weights
        self.device = pick_device(device)
        self._model = None
        self._normalize = True

    @torch.no_grad()
    def logits(self, samples: np.ndarray) -> np.ndarray:
        """16 kHz mono [n] -> CTC logits [ceil(n/320), C] at 50 Hz, computed chunk-wise as upstream streams them."""
        if self._model is None:
            model, self._normalize = load_pretrained("Wav2Vec2ForCTC", self.weights, DEFAULT_MODEL, self.name)
            self._model = model.to(self.device)
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        steps = -(-samples.size // CHUNK)
        padded = np.zeros((LEFT + steps + CONTEXT + RIGHT) * CHUNK, dtype=np.float32)
        padded[LEFT * CHUNK : LEFT * CHUNK + samples.size] = samples
        out = []
        for start in range(0, max(steps, 1), CONTEXT):
            segment = padded[start * CHUNK : (start + LEFT + CONTEXT + RIGHT) * CHUNK]
            inputs = torch.from_numpy(normalise_input(segment, self._normalize))[None].to(self.device)
            logits = self._model(inputs).logits[0].float().cpu().numpy()  # [~69, C]
            kept = logits[LEFT : LEFT + CONTEXT]
            if kept.shape[0] < CONTEXT:  # the conv front-end drops the last partial step
                kept = np.concatenate([kept, np.repeat(kept[-1:], CONTEXT - kept.shape[0], axis=0)])
            out.append(kept)
        return np.concatenate(out)[: max(steps, 1)]

    def extract(self, samples: np.ndarray, num_frames: int | None = None) -> np.ndarray:
        """16 kHz mono float32 [n] -> float32 [T, 16, C] (C = 44 for the Esperanto model)."""
        windows = unfold_windows(self.logits(samples))
        return fit_length(windows, num_frames)
