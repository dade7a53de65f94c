"""SyncTalk's audio-visual encoder (``ave``): upstream's ``aud_ave.npy``.

The encoder is a stack of 13 conv blocks (Conv2d + BatchNorm2d, ReLU, some residual) that
maps a log-mel patch [1, 80 mels, 16 rows] to a 512-d embedding. Its state dict, as
SyncTalk saves it (``audio_visual_encoder.pth``), has keys ``<block>.conv_block.0.*`` (conv)
and ``<block>.conv_block.1.*`` (batch norm); :class:`AudioVisualEncoder` has that layout, so
the file loads with ``torch.load(weights_only=True)``.

Mel front-end (Wav2Lip's): pre-emphasis 0.97, |STFT| (n_fft 800, hop 200, Hann, centred,
zero padded), 80 Slaney mel bands 55-7600 Hz, ``20 log10(max(1e-5, m)) - 20`` dB, then
``clip(8 (dB + 100) / 100 - 4, -4, 4)``; 80 rows per second. Frame ``i`` reads the 16 rows
from ``int(3.2 i)`` (the last window is pulled back inside the spectrogram). Embeddings are
padded with two copies of the first and the last one: row ``i`` of the file goes with video
frame ``i`` (its window starts 80 ms earlier). File layout: float32 ``[T+4, 512, 1]``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from instag.audio.mel import mel_filterbank
from instag.audio.registry import fit_length
from instag.audio.wav2vec import pick_device
from instag.data.format import AUDIO_FEATURE_FILES
from instag.errors import InstagError

WEIGHTS_NAME = "audio_visual_encoder.pth"
N_FFT, HOP = 800, 200
N_MELS, FMIN, FMAX = 80, 55.0, 7600.0
MEL_STEP = 16
MEL_RATE = 80.0
EMBED = 512


def default_weight_paths() -> list[Path]:
    # upstream's adaptation loader and prepare.sh use data_utils/, its pre-training loader data/
    return [Path("data_utils") / WEIGHTS_NAME, Path("data") / WEIGHTS_NAME]


class ConvBlock(nn.Module):
    """Conv2d + BatchNorm2d (as ``conv_block.0`` / ``conv_block.1``), optional residual, then ReLU."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int | tuple[int, int], padding: int, residual: bool = False
    ):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        return torch.relu(out + x if self.residual else out)


# (cin, cout, kernel, stride, padding, residual): 80x16 -> 27x16 -> 9x6 -> 3x3 -> 1x1
_LAYOUT = [
    (1, 32, 3, 1, 1, False),
    (32, 32, 3, 1, 1, True),
    (32, 32, 3, 1, 1, True),
    (32, 64, 3, (3, 1), 1, False),
    (64, 64, 3, 1, 1, True),
    (64, 64, 3, 1, 1, True),
    (64, 128, 3, 3, 1, False),
    (128, 128, 3, 1, 1, True),
    (128, 128, 3, 1, 1, True),
    (128, 256, 3, (3, 2), 1, False),
    (256, 256, 3, 1, 1, True),
    (256, 512, 3, 1, 0, False),
    (512, 512, 1, 1, 0, False),
]


class AudioVisualEncoder(nn.Sequential):
    """mel patches [B, 1, 80, 16] -> embeddings [B, 512]."""

    def __init__(self):
        super().__init__(*(ConvBlock(*spec) for spec in _LAYOUT))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return super().forward(mel).flatten(1)


def load_encoder(path: Path) -> AudioVisualEncoder:
    """Load SyncTalk's state dict (keys with or without the ``audio_encoder.`` prefix)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise InstagError(f"cannot load {path} as a PyTorch state dict ({err}); download {WEIGHTS_NAME} again") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InstagError(f"{path} does not hold a state dict; expected SyncTalk's {WEIGHTS_NAME}")
    state = {k.removeprefix("audio_encoder."): v for k, v in state.items()}
    model = AudioVisualEncoder()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InstagError(
            f"{path} does not match SyncTalk's audio-visual encoder ({len(missing)} missing keys, e.g. "
            f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    return model.eval()


def wav2lip_mel(samples: np.ndarray) -> torch.Tensor:
    """16 kHz mono [n] -> normalised log-mel rows [R, 80] at 80 Hz (R = n // 200 + 1)."""
    x = torch.as_tensor(np.asarray(samples, dtype=np.float32)).reshape(-1).double()
    if x.numel() == 0:
        x = torch.zeros(1, dtype=torch.float64)
    emphasised = torch.cat([x[:1], x[1:] - 0.97 * x[:-1]])
    spec = torch.stft(
        emphasised,
        n_fft=N_FFT,
        hop_length=HOP,
        win_length=N_FFT,
        window=torch.hann_window(N_FFT, dtype=torch.float64),
        center=True,
        pad_mode="constant",
        return_complex=True,
    ).abs()
    fb = torch.from_numpy(mel_filterbank(16000, N_FFT, N_MELS, FMIN, FMAX)).double()
    db = 20.0 * torch.log10((fb @ spec).clamp_min(1e-5)) - 20.0
    return ((8.0 * (db + 100.0) / 100.0 - 4.0).clamp(-4.0, 4.0)).T.float().contiguous()


def mel_patches(mel: torch.Tensor) -> torch.Tensor:
    """Rows [R, 80] -> one patch per 25-FPS step [T, 1, 80, 16], T = int((R - 16) / 80 * 25) + 2."""
    rows = mel.shape[0]
    if rows < MEL_STEP:
        mel = torch.cat([mel, torch.full((MEL_STEP - rows, mel.shape[1]), -4.0)])
        rows = MEL_STEP
    count = int((rows - MEL_STEP) / MEL_RATE * 25) + 2
    starts = torch.tensor([min(int(MEL_RATE * (i / 25.0)), rows - MEL_STEP) for i in range(count)])
    patches = mel[starts[:, None] + torch.arange(MEL_STEP)[None, :]]  # [T, 16, 80]
    return patches.permute(0, 2, 1).unsqueeze(1).contiguous()


class AveExtractor:
    name = "ave"
    file_name = AUDIO_FEATURE_FILES["ave"]
    item_shape = (1, EMBED)
    file_item_shape = (EMBED, 1)

    def __init__(self, weights: str | os.PathLike | None = None, device: str | None = None, batch_size: int = 256):
        self.weights = Path(weights) if weights else None
        self.device = pick_device(device)
        self.batch_size = batch_size
        self._model: AudioVisualEncoder | None = None

    def weights_path(self) -> Path:
        candidates = [self.weights] if self.weights else default_weight_paths()
        for path in candidates:
            if path.is_file():
                return path
        where = " or ".join(str(p) for p in candidates)
        raise InstagError(
            f"AVE weights {WEIGHTS_NAME} (SyncTalk) not found: put it at {where} (or pass --weights PATH)"
        )

    @torch.no_grad()
    def embeddings(self, samples: np.ndarray) -> np.ndarray:
        """16 kHz mono [n] -> [T, 512] embeddings, one per mel window."""
        if self._model is None:
            self._model = load_encoder(self.weights_path()).to(self.device)
        patches = mel_patches(wav2lip_mel(samples))
        out = [
            self._model(patches[s : s + self.batch_size].to(self.device)).float().cpu()
            for s in range(0, patches.shape[0], self.batch_size)
        ]
        return torch.cat(out).numpy()

    def extract(self, samples: np.ndarray, num_frames: int | None = None) -> np.ndarray:
        """16 kHz mono float32 [n] -> float32 [T+4, 512, 1] (or exactly ``num_frames`` rows)."""
        emb = self.embeddings(samples)
        padded = np.concatenate([emb[:1], emb[:1], emb, emb[-1:], emb[-1:]])[:, :, None]
        return fit_length(padded.astype(np.float32), num_frames)
