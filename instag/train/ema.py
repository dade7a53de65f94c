"""Exponential moving average of a module's parameters, kept as explicit tensors (saved as such)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EMA:
    """``shadow ← decay·shadow + (1 − decay)·param`` after every step; buffers are copied."""

    def __init__(self, module: nn.Module, decay: float = 0.995):
        self.module = module
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, steps: int = 1) -> None:
        """One update standing for ``steps`` optimiser steps (data-parallel rounds train several frames at once)."""
        weight = 1.0 - self.decay**steps
        for k, v in self.module.state_dict().items():
            s = self.shadow[k]
            if v.dtype.is_floating_point:
                s.lerp_(v.detach(), weight)
            else:
                s.copy_(v)

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for k, v in state.items():
            if k in self.shadow:
                self.shadow[k].copy_(v)
