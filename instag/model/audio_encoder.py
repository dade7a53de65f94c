"""Audio branch shared by every motion field: per-item encoder + temporal attention.

A frame's audio condition is a window of 8 per-frame items ``[8, C, W]`` (see
:mod:`instag.audio.windows`). :class:`AudioNet` encodes items shaped like spectrogram
slices or feature-vector sequences (mel, deepspeech ``[29,16]``, esperanto ``[44,16]``,
hubert ``[1024,2]``); :class:`AudioNetAve` encodes the AVE embedding ``[1,512]``.
:class:`AudioAttNet` turns the 8 encoded items into one vector with learned softmax
weights over time. :class:`AudioEncoder` chains both: ``[B,8,C,W] -> [B,32]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

AUDIO_DIM = 32
_SLOPE = 0.02


class AudioNet(nn.Module):
    """Conv1d stack over the time axis of one item: ``[..., C, W] -> [..., 32]``.

    The time axis is cropped to its central 16 taps, then halved by four stride-2 convs
    (16 -> 1). Shorter items (hubert's 2 taps) pass through the same layers; any time
    left after the convs is averaged.
    """

    def __init__(self, in_channels: int, out_dim: int = AUDIO_DIM, taps: int = 16):
        super().__init__()
        self.taps = taps
        wide = 128 if in_channels >= 128 else 32
        chans = [in_channels, wide, wide, 64, 64]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv1d(c_in, c_out, kernel_size=3, stride=2, padding=1), nn.LeakyReLU(_SLOPE)]
        self.convs = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(64, 64), nn.LeakyReLU(_SLOPE), nn.Linear(64, out_dim))

    def forward(self, items: Tensor) -> Tensor:
        """items ``[..., C, W]`` -> ``[..., out_dim]``."""
        lead = items.shape[:-2]
        x = items.reshape(-1, *items.shape[-2:])
        width = x.shape[-1]
        if width > self.taps:
            start = (width - self.taps) // 2
            x = x[..., start : start + self.taps]
        x = self.convs(x).mean(dim=-1)
        return self.head(x).reshape(*lead, -1)


class AudioNetAve(nn.Module):
    """MLP for AVE embeddings: ``[..., 1, 512] -> [..., 32]``."""

    def __init__(self, in_features: int = 512, out_dim: int = AUDIO_DIM):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_features, 256),
            nn.LeakyReLU(_SLOPE),
            nn.Linear(256, 128),
            nn.LeakyReLU(_SLOPE),
            nn.Linear(128, out_dim),
        )

    def forward(self, items: Tensor) -> Tensor:
        return self.mlp(items.flatten(-2))


class AudioAttNet(nn.Module):
    """Softmax attention over the window: ``[..., 8, D] -> [..., D]``."""

    def __init__(self, dim: int = AUDIO_DIM, window: int = 8):
        super().__init__()
        chans = [dim, 16, 8, 4, 2, 1]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv1d(c_in, c_out, kernel_size=3, padding=1), nn.LeakyReLU(_SLOPE)]
        self.convs = nn.Sequential(*layers)
        self.score = nn.Linear(window, window)

    def forward(self, seq: Tensor) -> Tensor:
        lead = seq.shape[:-2]
        x = seq.reshape(-1, *seq.shape[-2:])  # [B, 8, D]
        scores = self.convs(x.transpose(1, 2)).squeeze(1)  # [B, 8]
        weights = torch.softmax(self.score(scores), dim=-1)
        out = (weights.unsqueeze(-1) * x).sum(dim=1)
        return out.reshape(*lead, -1)


def item_net(item_shape: tuple[int, int], out_dim: int = AUDIO_DIM) -> nn.Module:
    """The per-item encoder for an extractor's item shape ``(C, W)``."""
    channels, width = item_shape
    if channels == 1:
        return AudioNetAve(width, out_dim)
    return AudioNet(channels, out_dim)


class AudioEncoder(nn.Module):
    """Window of items ``[B, 8, C, W]`` -> one audio vector per frame ``[B, 32]``."""

    def __init__(self, item_shape: tuple[int, int], out_dim: int = AUDIO_DIM):
        super().__init__()
        self.item_shape = (int(item_shape[0]), int(item_shape[1]))
        self.net = item_net(self.item_shape, out_dim)
        self.att = AudioAttNet(out_dim)
        self.out_dim = out_dim

    def forward(self, window: Tensor) -> Tensor:
        if window.shape[-2:] != self.item_shape:
            from instag.errors import InstagError

            raise InstagError(
                f"audio window items have shape {tuple(window.shape[-2:])} but the model expects {self.item_shape}; "
                "the features come from a different audio extractor than the one the model was trained with"
            )
        return self.att(self.net(window))


class LipHead(nn.Module):
    """Auxiliary pre-training head: audio vector ``[B,32]`` -> lip-landmark offsets ``[B, out_dim]``.

    It gives the audio encoder a direct signal (where the lips are for this sound) besides
    the photometric loss; it is not used for rendering.
    """

    def __init__(self, out_dim: int, in_dim: int = AUDIO_DIM, hidden: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.LeakyReLU(_SLOPE), nn.Linear(hidden, hidden), nn.LeakyReLU(_SLOPE), nn.Linear(hidden, out_dim)
        )

    def forward(self, audio: Tensor) -> Tensor:
        return self.mlp(audio)
