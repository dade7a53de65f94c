"""HuBERT hidden states (``hubert``): upstream's ``aud_hu.npy``.

``facebook/hubert-large-ls960-ft``'s last hidden state (1024-d) at 50 Hz: its CNN front-end
is one 400-sample kernel with stride 320, so the expected length is ``(n - 80) // 320``
steps. Long audio runs in clips of 1000 steps (as upstream does, to bound memory) that
overlap by the 80 samples the kernel needs, so the steps of the clips line up with one
pass. The steps are trimmed to an even count and paired: ``[M/2, 2, 1024]``, one pair per
video frame (no wider context). Weights come from a local
directory or the Hugging Face cache; ``transformers`` is the ``hubert`` extra.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from instag.audio.registry import fit_length
from instag.audio.wav2vec import load_pretrained, normalise_input, pick_device
from instag.data.format import AUDIO_FEATURE_FILES

DEFAULT_MODEL = "facebook/hubert-large-ls960-ft"
KERNEL, STRIDE = 400, 320
CLIP_STEPS = 1000
HIDDEN = 1024


class HubertExtractor:
    name = "hubert"
    file_name = AUDIO_FEATURE_FILES["hubert"]
    item_shape = (HIDDEN, 2)
    file_item_shape = (2, HIDDEN)

    def __init__(self, weights: str | os.PathLike | None = None, device: str | None = None):
        self.weights = weights
        self.device = pick_device(device)
        self._model = None
        self._normalize = True

    @torch.no_grad()
    def hidden_states(self, samples: np.ndarray) -> np.ndarray:
        """16 kHz mono [n] -> last hidden state [(n - 80) // 320, D]."""
        if self._model is None:
            model, self._normalize = load_pretrained("HubertModel", self.weights, DEFAULT_MODEL, self.name)
            self._model = model.to(self.device)
        x = normalise_input(np.asarray(samples, dtype=np.float32).reshape(-1), self._normalize)
        expected = max((x.size - (KERNEL - STRIDE)) // STRIDE, 0)
        if x.size < KERNEL:  # shorter than one step: pad so the network returns one
            x = np.concatenate([x, np.zeros(KERNEL - x.size, dtype=np.float32)])
            expected = 1
        out = []
        clip = STRIDE * CLIP_STEPS
        for start in range(0, x.size, clip):
            piece = x[start : start + clip + KERNEL - STRIDE]
            if piece.size < KERNEL:
                break
            inputs = torch.from_numpy(np.ascontiguousarray(piece))[None].to(self.device)
            out.append(self._model(inputs).last_hidden_state[0].float().cpu().numpy())
        states = np.concatenate(out) if out else np.zeros((0, self._model.config.hidden_size), np.float32)
        return fit_length(states, expected)

    def extract(self, samples: np.ndarray, num_frames: int | None = None) -> np.ndarray:
        """16 kHz mono float32 [n] -> float32 [T, 2, D] (D = 1024 for hubert-large)."""
        states = self.hidden_states(samples)
        even = states.shape[0] // 2 * 2
        pairs = states[:even].reshape(-1, 2, states.shape[1])
        return fit_length(pairs.astype(np.float32), num_frames)
