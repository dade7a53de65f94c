"""Randomly constructed AlexNet-LPIPS weight files in the layout of the real ones (tests only)."""

from __future__ import annotations

from pathlib import Path

import torch


def write_lpips_weights(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """(lin path, alexnet path) of constructed weights under ``folder``."""
    from instag.metrics.lpips import ALEX_CONVS, ALEX_FEATURE_INDEX

    gen = torch.Generator().manual_seed(seed)
    alex = {}
    for (cin, cout, k, _, _), idx in zip(ALEX_CONVS, ALEX_FEATURE_INDEX):
        alex[f"features.{idx}.weight"] = torch.randn(cout, cin, k, k, generator=gen) * 0.05
        alex[f"features.{idx}.bias"] = torch.zeros(cout)
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c[1], 1, 1, generator=gen) for k, c in enumerate(ALEX_CONVS)}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(alex, folder / "alexnet.pth")
    torch.save(lin, folder / "alex.pth")
    return folder / "alex.pth", folder / "alexnet.pth"
