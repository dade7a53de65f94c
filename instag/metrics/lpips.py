"""LPIPS (AlexNet variant, v0.1) in plain torch, only when its weights exist locally.

Two files are needed, neither is downloaded here (``bash scripts/prepare.sh`` reports them, and
``--fetch lpips_alex alexnet`` downloads them; :mod:`instag.preprocess.weights` says where they go):

- ``lpips_alex``: the linear heads ``alex.pth`` of the pip ``lpips`` package
  (``lpips/weights/v0.1/alex.pth``), keys ``lin{k}.model.1.weight`` [1,C_k,1,1];
- ``alexnet``: torchvision's ImageNet AlexNet ``alexnet-owt-7be5be79.pth`` (the ``features.*``
  tensors), looked up in the torch hub cache (``$TORCH_HOME/hub/checkpoints``).

``INSTAG_LPIPS_LIN`` and ``INSTAG_ALEXNET`` override the two paths. Inputs are RGB in [0,1]
(``lpips(normalize=True)`` in upstream's metrics.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from instag.errors import InstagError

# (in, out, kernel, stride, padding) of AlexNet's five convolutions; LPIPS taps each ReLU
ALEX_CONVS = ((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1))
ALEX_FEATURE_INDEX = (0, 3, 6, 8, 10)  # index of each conv in torchvision's ``features`` Sequential
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def default_weight_paths() -> tuple[Path | None, Path | None]:
    """(alex.pth of the lpips package, torchvision AlexNet) where they exist locally, else None each."""
    from instag.preprocess.weights import resolve

    return resolve("lpips_alex", os.environ.get("INSTAG_LPIPS_LIN")), resolve("alexnet", os.environ.get("INSTAG_ALEXNET"))


def missing_note() -> str | None:
    """None when LPIPS can run, else one line saying which weights are missing and how to get them."""
    from instag.preprocess.weights import REGISTRY

    names = [name for name, path in zip(("lpips_alex", "alexnet"), default_weight_paths()) if path is None]
    if not names:
        return None
    return (f"LPIPS not computed: missing {' and '.join(REGISTRY[n].path for n in names)} "
            f"(`bash scripts/prepare.sh --fetch {' '.join(names)}` downloads them; its report says more)")


class LPIPS(nn.Module):
    """LPIPS distance with AlexNet features; build, then :meth:`load` real weights."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, stride=s, padding=p) for i, o, k, s, p in ALEX_CONVS)
        self.lins = nn.ModuleList(nn.Conv2d(c[1], 1, 1, bias=False) for c in ALEX_CONVS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def load(self, lin_path: str | Path, alexnet_path: str | Path) -> LPIPS:
        """Copy the tensors of the two weight files in; refuses files of another layout."""
        try:
            lin = torch.load(lin_path, map_location="cpu", weights_only=True)
            alex = torch.load(alexnet_path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise InstagError(f"cannot read LPIPS weights {lin_path} / {alexnet_path}: {err}") from err
        try:
            for k, (conv, idx) in enumerate(zip(self.convs, ALEX_FEATURE_INDEX)):
                conv.weight.copy_(alex[f"features.{idx}.weight"])
                conv.bias.copy_(alex[f"features.{idx}.bias"])
                self.lins[k].weight.copy_(lin[f"lin{k}.model.1.weight"])
        except (KeyError, RuntimeError) as err:
            raise InstagError(f"LPIPS weights {lin_path} / {alexnet_path} do not match AlexNet-LPIPS v0.1: {err}") from err
        return self

    @classmethod
    def from_local(cls) -> LPIPS | None:
        """The model with locally present weights, or None when they are missing (see :func:`missing_note`)."""
        lin, alex = default_weight_paths()
        if lin is None or alex is None:
            return None
        return cls().load(lin, alex)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for k, conv in enumerate(self.convs):
            if k in (1, 2):  # max-pool before conv2 and conv3, as in AlexNet
                x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = F.relu(conv(x))
            feats.append(x)
        return feats

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """pred, gt: [B,3,H,W] RGB in [0,1] -> [B] distances."""
        a = (pred * 2 - 1 - self.shift) / self.scale
        b = (gt * 2 - 1 - self.shift) / self.scale
        total = torch.zeros(pred.shape[0], device=pred.device, dtype=pred.dtype)
        for lin, fa, fb in zip(self.lins, self.features(a), self.features(b)):
            fa = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((fa - fb) ** 2).mean(dim=(1, 2, 3))
        return total
