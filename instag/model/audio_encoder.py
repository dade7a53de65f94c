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


class RunningNorm(nn.Module):
    """Per-channel standardisation by running statistics (batch size 1 is fine).

    In training mode the running mean / variance follow the (detached) inputs with ``momentum``;
    the output is always ``(x - mean) / std`` with the running values, so gradients see a fixed
    affine map. Without it the audio vector is dominated by a constant (the layers' biases): a
    freshly initialised encoder varies by 0.1 % of its magnitude from frame to frame, and a
    trained one by about 1 %, which leaves the motion fields nothing that varies to learn from.
    """

    def __init__(self, dim: int, momentum: float = 0.01, eps: float = 1e-5):
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                flat = x.detach().reshape(-1, x.shape[-1])
                m = flat.mean(0)
                v = ((flat - self.mean) ** 2).mean(0)  # spread about the running mean
                if int(self.count) == 0:
                    self.mean.copy_(m)
                    self.var.copy_(flat.var(0, unbiased=False) if flat.shape[0] > 1 else torch.ones_like(m))
                else:
                    self.mean.lerp_(m, self.momentum)
                    self.var.lerp_(v, self.momentum)
                self.count += 1
        return (x - self.mean) / torch.sqrt(self.var + self.eps)


def init_leaky(module: nn.Module) -> None:
    """He initialisation for the LeakyReLU stacks (variance kept through depth) and zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=_SLOPE, nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class AudioEncoder(nn.Module):
    """Window of items ``[B, 8, C, W]`` -> one audio vector per frame ``[B, 32]``, standardised per channel."""

    def __init__(self, item_shape: tuple[int, int], out_dim: int = AUDIO_DIM):
        super().__init__()
        self.item_shape = (int(item_shape[0]), int(item_shape[1]))
        self.net = item_net(self.item_shape, out_dim)
        self.att = AudioAttNet(out_dim)
        self.norm = RunningNorm(out_dim)
        self.out_dim = out_dim
        init_leaky(self.net)

    def forward(self, window: Tensor) -> Tensor:
        if window.shape[-2:] != self.item_shape:
            from instag.errors import InstagError

            raise InstagError(
                f"audio window items have shape {tuple(window.shape[-2:])} but the model expects {self.item_shape}; "
                "the features come from a different audio extractor than the one the model was trained with"
            )
        return self.norm(self.att(self.net(window)))


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
