"""SyncNet lip-sync scores (Sync-C confidence, Sync-E distance), only with local weights.

The network is the public SyncNet v2 evaluation model (``syncnet_v2.model``, a plain state dict),
written here in plain torch and loaded strictly, so a file of another layout is refused rather
than giving a number. The scoring follows the common evaluation protocol: 13 MFCCs at 100 Hz
(20 per 5-frame video window), 224×224 face crops, embeddings compared at offsets −15..15 frames;
Sync-E = the smallest mean distance, Sync-C = median − smallest, and the offset at the minimum.

The weights are looked up at ``$INSTAG_SYNCNET`` or ``~/.cache/instag/syncnet_v2.model``.
Face crops come from our MediaPipe landmarks (a square box around the face, extended towards
the chin), not from the S3FD detector of the reference pipeline; scores are comparable between
our runs, and close to but not identical with published ones.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from instag.errors import InstagError

VSHIFT = 15
CROP_SIZE = 224


def default_weight_path() -> Path | None:
    env = os.environ.get("INSTAG_SYNCNET")
    path = Path(env) if env else Path.home() / ".cache" / "instag" / "syncnet_v2.model"
    return path if path.is_file() else None


def missing_note() -> str | None:
    if default_weight_path() is not None:
        return None
    return "Sync-C/Sync-E not computed: syncnet_v2.model not found (put it at ~/.cache/instag/ or set INSTAG_SYNCNET)"


def _conv_bn(conv: nn.Module, bn: nn.Module) -> list[nn.Module]:
    return [conv, bn, nn.ReLU(inplace=True)]


class SyncNet(nn.Module):
    """Audio branch (MFCC [B,1,13,20]) and lip branch (RGB clip [B,3,5,224,224]) -> 1024-d embeddings."""

    def __init__(self):
        super().__init__()
        c2, c3 = nn.Conv2d, nn.Conv3d
        self.netcnnaud = nn.Sequential(
            *_conv_bn(c2(1, 64, 3, padding=1), nn.BatchNorm2d(64)),
            nn.MaxPool2d(kernel_size=1, stride=1),
            *_conv_bn(c2(64, 192, 3, padding=1), nn.BatchNorm2d(192)),
            nn.MaxPool2d(kernel_size=3, stride=(1, 2)),
            *_conv_bn(c2(192, 384, 3, padding=1), nn.BatchNorm2d(384)),
            *_conv_bn(c2(384, 256, 3, padding=1), nn.BatchNorm2d(256)),
            *_conv_bn(c2(256, 256, 3, padding=1), nn.BatchNorm2d(256)),
            nn.MaxPool2d(kernel_size=3, stride=2),
            *_conv_bn(c2(256, 512, (5, 4)), nn.BatchNorm2d(512)),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, 1024))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, 1024))
        self.netcnnlip = nn.Sequential(
            *_conv_bn(c3(3, 96, (5, 7, 7), stride=(1, 2, 2)), nn.BatchNorm3d(96)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn(c3(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            *_conv_bn(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_bn(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_bn(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn(c3(256, 512, (1, 6, 6)), nn.BatchNorm3d(512)),
        )
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path: str | Path) -> SyncNet:
        net = cls()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
        except Exception as err:
            raise InstagError(f"cannot load SyncNet weights {path}: {' '.join(str(err).split())[:300]}") from err
        return net.eval()

    def forward_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        """mfcc [B,1,13,20] -> [B,1024]"""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, clip: torch.Tensor) -> torch.Tensor:
        """clip [B,3,5,224,224] (0..255, BGR as the reference reads frames with OpenCV) -> [B,1024]"""
        return self.netfclip(self.netcnnlip(clip).flatten(1))


def mfcc(samples: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """13 MFCCs at 100 Hz [T,13]: 25 ms rectangular frames every 10 ms, pre-emphasis 0.97, 512-point
    power spectrum, 26 mel filters over 0..sr/2, log, orthonormal DCT-II, lifter 22, c0 = log energy."""
    x = np.asarray(samples, dtype=np.float64)
    x = np.append(x[:1], x[1:] - 0.97 * x[:-1])
    win, hop, nfft, nfilt = int(round(0.025 * sample_rate)), int(round(0.01 * sample_rate)), 512, 26
    n = 1 if len(x) <= win else 1 + int(math.ceil((len(x) - win) / hop))
    x = np.concatenate([x, np.zeros((n - 1) * hop + win - len(x))])
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    power = np.abs(np.fft.rfft(x[idx], nfft)) ** 2 / nfft  # [n, 257]
    eps = np.finfo(np.float64).eps
    energy = power.sum(1)
    energy = np.where(energy == 0, eps, energy)

    def hz2mel(hz):
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def mel2hz(mel):
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    mels = np.linspace(hz2mel(0.0), hz2mel(sample_rate / 2), nfilt + 2)
    bins = np.floor((nfft + 1) * mel2hz(mels) / sample_rate).astype(int)
    bank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        for i in range(lo, mid):
            bank[j, i] = (i - lo) / (mid - lo)
        for i in range(mid, hi):
            bank[j, i] = (hi - i) / (hi - mid)
    feat = power @ bank.T
    feat = np.log(np.where(feat == 0, eps, feat))
    k = np.arange(nfilt)
    dct = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * nfilt)) * np.sqrt(2.0 / nfilt)
    dct[0] /= np.sqrt(2.0)
    ceps = (feat @ dct.T)[:, :13]
    ceps *= 1 + 11.0 * np.sin(np.pi * np.arange(13) / 22.0)
    ceps[:, 0] = np.log(energy)
    return ceps.astype(np.float32)


def face_crop(frame_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """224×224 crop around the face landmarks [478,≥2]: a square of side 1.8× the face height,
    centred a little below the face centre (the reference crops wider and lower than the face box)."""
    import cv2

    pts = np.asarray(landmarks, dtype=np.float64)[:, :2]
    lo, hi = pts.min(0), pts.max(0)
    half = 0.9 * max(hi - lo)
    cx, cy = (lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2 + 0.1 * (hi[1] - lo[1])
    pad = int(math.ceil(half)) + 1
    padded = cv2.copyMakeBorder(frame_bgr, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(110, 110, 110))
    x0, y0 = int(round(cx - half)) + pad, int(round(cy - half)) + pad
    side = int(round(2 * half))
    return cv2.resize(padded[y0:y0 + side, x0:x0 + side], (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_LINEAR)


@torch.no_grad()
def sync_scores(net: SyncNet, crops_bgr: list[np.ndarray], samples_16k: np.ndarray, batch: int = 32,
                device: str = "cpu") -> dict:
    """Sync-C, Sync-E and the best offset (frames) of face crops [224,224,3] at 25 FPS and their audio
    (float samples in [-1,1] at 16 kHz; MFCCs are taken on the int16 scale, as the reference reads wavs)."""
    n = min(len(crops_bgr), len(samples_16k) // 640)
    if n < 6:
        raise InstagError(f"SyncNet needs at least 6 frames with audio, got {n}")
    cc = torch.from_numpy(mfcc(np.asarray(samples_16k, dtype=np.float64) * 32768.0)).T[None, None].to(device)  # [1,1,13,T]
    video = torch.from_numpy(np.stack(crops_bgr[:n]).astype(np.float32)).permute(3, 0, 1, 2)[None].to(device)
    net = net.to(device)
    lip_feats, aud_feats = [], []
    last = n - 5
    for start in range(0, last, batch):
        idx = range(start, min(last, start + batch))
        lip_feats.append(net.forward_lip(torch.cat([video[:, :, i:i + 5] for i in idx])))
        aud_feats.append(net.forward_audio(torch.cat([cc[:, :, :, 4 * i:4 * i + 20] for i in idx])))
    lip, aud = torch.cat(lip_feats), torch.cat(aud_feats)
    aud_padded = F.pad(aud, (0, 0, VSHIFT, VSHIFT))
    dists = torch.stack([
        F.pairwise_distance(lip[i:i + 1].expand(2 * VSHIFT + 1, -1), aud_padded[i:i + 2 * VSHIFT + 1])
        for i in range(lip.shape[0])
    ])
    mean = dists.mean(0)
    minval, minidx = mean.min(0)
    return {
        "sync_c": float(mean.median() - minval),
        "sync_e": float(minval),
        "sync_offset": int(VSHIFT - int(minidx)),
    }
