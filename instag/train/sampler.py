"""Curriculum frame sampling that always terminates.

Upstream re-draws random frames until one satisfies a window condition, forever if none does.
Here a window selects the eligible frames directly; when none is eligible the frame whose value
is nearest to the window is taken. The sampler counts the items it yields, which are the
training iterations (one frame per iteration), so it can run ahead in a DataLoader.
"""

from __future__ import annotations

import numpy as np
import torch

from instag.data.dataset import Clip
from instag.train.config import StageConfig


def pick_in_window(values: np.ndarray, lo: float, hi: float, rng: np.random.Generator) -> int:
    """A random index with ``lo <= values <= hi``; the value nearest the window when none is inside."""
    inside = np.flatnonzero((values >= lo) & (values <= hi))
    if inside.size:
        return int(rng.choice(inside))
    dist = np.maximum(lo - values, values - hi)
    best = np.flatnonzero(dist <= dist.min() + 1e-12)
    return int(rng.choice(best))


MIN_MOUTH_PIXELS = 20.0


def mouth_eligible(cfg: StageConfig, clip: Clip, it: int) -> np.ndarray | None:
    """Positions the mouth stage may draw at iteration ``it`` (None = all): between the end of the
    warm-up and the curriculum end, frames with at least 20 mouth pixels (METHOD §3.3, §3.5).
    Closed-mouth frames there teach the mouth field to move the whole cloud out of view."""
    if cfg.stage != "mouth" or it <= cfg.warmup or it > cfg.curriculum_end or clip.mouth_px is None:
        return None
    ok = np.flatnonzero(np.asarray(clip.mouth_px) >= MIN_MOUTH_PIXELS)
    return ok if ok.size else None


def curriculum_window(cfg: StageConfig, clip: Clip, it: int, turn: int | None = None) -> tuple[np.ndarray, float, float] | None:
    """(values, lo, hi) of the curriculum condition at iteration ``it``, or None (uniform). ``turn``: which
    draw of this sampler ``it`` is (default ``it``); the curriculum applies to one draw in ``select_interval``."""
    if cfg.stage == "fuse" or (it if turn is None else turn) % cfg.select_interval != 0:
        return None
    p = min(1.0, it / max(1, cfg.curriculum_end))
    warm = it <= cfg.warmup
    s = clip.stats
    if cfg.stage == "face":
        if warm:
            lo_, hi_ = s["open_lo"], s["open_hi"]
            span = hi_ - lo_
            lower = lo_ + 0.2 * span
            width = (0.2 if cfg.mode == "pretrain" else 0.5) * (hi_ - lower)
            centre = lower + p * (hi_ - lower)
            return clip.opening, centre - width, centre + width
        if it > cfg.curriculum_end:
            return None
        below, above = (0.15, 0.3) if cfg.mode == "pretrain" else (0.6, 0.4)
        return clip.blink, p - below, p + above
    upper = s["au25_max"] if cfg.mode == "pretrain" else s["au25_p75"]
    lower = s["au25_p25"]
    if warm:
        return clip.au25, upper, np.inf
    if it > cfg.curriculum_end:
        return None
    return clip.au25, upper - p * (upper - lower), upper


class CurriculumSampler(torch.utils.data.Sampler):
    """Yields ``(clip, position)`` for iterations ``start+1, start+2, ...``: a uniform clip, then a
    frame by the stage's curriculum. Infinite; the engine stops after its last iteration.

    One of ``stride`` data-parallel processes draws for every ``stride``-th iteration from
    ``start+1+offset`` on (its own identities' ``clips``)."""

    def __init__(self, clips: list[Clip], cfg: StageConfig, start: int = 0, seed: int = 0, offset: int = 0, stride: int = 1):
        self.clips = clips
        self.cfg = cfg
        self.start = start
        self.seed = seed
        self.offset = offset
        self.stride = stride

    def __iter__(self):
        rng = np.random.default_rng(self.seed + 7919 * self.start + 104_729 * self.offset)
        it = self.start + 1 + self.offset
        while True:
            yield self.draw(it, rng, (it - 1) // self.stride + 1)
            it += self.stride

    def draw(self, it: int, rng: np.random.Generator, turn: int | None = None) -> tuple[int, int]:
        c = int(rng.integers(len(self.clips)))
        clip = self.clips[c]
        window = curriculum_window(self.cfg, clip, it, turn)
        allowed = mouth_eligible(self.cfg, clip, it)
        if window is None:
            return c, int(rng.integers(len(clip)) if allowed is None else rng.choice(allowed))
        values, lo, hi = window
        if allowed is None:
            return c, pick_in_window(values, lo, hi, rng)
        return c, int(allowed[pick_in_window(np.asarray(values)[allowed], lo, hi, rng)])
