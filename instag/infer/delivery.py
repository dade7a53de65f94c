"""Delivery controls chosen at inference time, and a bandit that tunes them per model from the interaction logs.

Three controls (:class:`Controls`), each neutral at its default so that output is unchanged unless asked:

- ``mouth_scale``: each frame's audio window ``[8,C,W]`` is moved away from (``> 1``) or toward (``< 1``) the
  window of silence, ``silence + s × (window − silence)``, before the model sees it. It acts on the input
  only (the model is untouched) and per frame, so the same frame gets the same window offline and streaming.
  Hard limit: besides the fixed range of :data:`LIMITS`, each frame's scale is cut back toward 1 until the
  model's predicted lip gap (the FM hook's gap, :meth:`instag.model.talking_head.TalkingHead.render_frames`)
  stays within the largest gap it predicts on its own training footage (the training clip's audio), or within
  the unscaled frame's gap where that is already larger. The scale is tried in :data:`CAP_STEPS` steps from 1
  and the last step whose gap (and every gap before it) is inside the limit is kept.
- ``smoothing``: a causal exponential moving average over the audio items, ``y_t = (1 − a)·x_t + a·y_{t−1}``
  with ``a = smoothing``; causal so that streaming and offline agree, at a mean lag of ``a / (1 − a)`` frames
  (under 1.5 frames = 60 ms at the limit 0.6).
- ``expression_intensity``: a multiplier on every requested expression's amount (``--expression`` and the
  performance's expression/aus events); the training AUs and blinks are not touched.

The bandit (:func:`choose`, UCB1) picks one of :data:`ARMS` per session. Its reward for a logged session that
used an arm is :func:`session_reward`: the weighted mean of the sync score mapped to [0, 1],
``(1 + opening–loudness correlation) / 2`` with weight :data:`SYNC_WEIGHT`, and the last thumbs given on the
session (up = 1, down = 0) with weight :data:`FEEDBACK_WEIGHT`; either part is left out when it is missing.
Rewards are recomputed from ``logs/sessions.jsonl`` at each choice (feedback arrives after the session), and
the statistics and the choice are written to ``logs/delivery.json`` for people to read.
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from instag.errors import InstagError

if TYPE_CHECKING:
    import torch

STATE_FILE = "delivery.json"
LIMITS = {"mouth_scale": (0.6, 1.5), "smoothing": (0.0, 0.6), "expression_intensity": (0.0, 1.5)}
CAP_STEPS = 4  # steps of the mouth scale from 1 to the requested value checked against the footage's gap
SYNC_WEIGHT = 0.4
FEEDBACK_WEIGHT = 0.6
DELIVERY_MODES = ("auto", "off")


@dataclass(frozen=True)
class Controls:
    """Inference-time delivery controls (module docstring); the defaults reproduce the plain output."""

    mouth_scale: float = 1.0
    smoothing: float = 0.0
    expression_intensity: float = 1.0

    def clamped(self) -> Controls:
        """These controls inside :data:`LIMITS`."""
        return Controls(**{k: float(np.clip(v, *LIMITS[k])) for k, v in asdict(self).items()})

    @property
    def neutral(self) -> bool:
        return self == Controls()


ARMS: tuple[Controls, ...] = tuple(
    Controls(m, s, i) for m in (1.0, 0.85, 1.2) for s in (0.0, 0.3) for i in (1.0, 1.3)
)  # the neutral arm first: it is tried first


# ---------------------------------------------------------------------------------------- applying the controls
def smooth_items(items: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Causal EMA over frames of audio items ``[T,C,W]`` with weight ``smoothing`` on the past (0: ``items``)."""
    if smoothing <= 0:
        return items
    out = items.clone()
    for t in range(1, items.shape[0]):
        out[t] = (1 - smoothing) * items[t] + smoothing * out[t - 1]
    return out


def predicted_gap(model, windows: torch.Tensor) -> torch.Tensor:
    """The model's lip gap ``[B]`` (FM hook) for audio windows ``[B,8,C,W]``, without rendering."""
    import torch

    with torch.no_grad():
        windows = windows.to(model.device, torch.float32)
        return model.hook(model.face_field.audio(windows), model.align)[:, 2]


def footage_gap(model, clip, batch: int = 256) -> float:
    """The largest lip gap the model predicts on its training clip's own audio (``clip``:
    :func:`instag.data.dataset.load_clip`): the mouth-scale limit."""
    import torch

    from instag.audio.windows import frame_windows

    ids = torch.tensor([f.aud_id for f in clip.frames])
    feats = torch.as_tensor(clip.features, dtype=torch.float32)
    gaps = [predicted_gap(model, frame_windows(feats, ids[s : s + batch])) for s in range(0, len(ids), batch)]
    return float(torch.cat(gaps).max()) if gaps else math.inf


class MouthScaler:
    """Scales audio windows ``[B,8,C,W]`` around ``silence_window`` ``[8,C,W]`` by ``scale``, cut back per frame
    so that the predicted lip gap stays within ``limit_gap`` (module docstring)."""

    def __init__(self, model, scale: float, limit_gap: float, silence_window: torch.Tensor):
        import torch

        self.model = model
        self.scale = float(scale)
        self.limit_gap = float(limit_gap)
        self.silence = silence_window.to(model.device, torch.float32)
        self.applied: list[float] = []  # per frame: the scale used

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        import torch

        windows = windows.to(self.model.device, torch.float32)
        moved = windows - self.silence[None]
        steps = [1.0 + (self.scale - 1.0) * k / CAP_STEPS for k in range(CAP_STEPS + 1)]
        gap1 = predicted_gap(self.model, windows)
        limit = torch.clamp(gap1, min=self.limit_gap)
        chosen = torch.ones(windows.shape[0], device=windows.device)
        inside = torch.ones(windows.shape[0], dtype=torch.bool, device=windows.device)
        for s in steps[1:]:
            inside &= predicted_gap(self.model, self.silence[None] + s * moved) <= limit
            chosen = torch.where(inside, torch.full_like(chosen, s), chosen)
        self.applied.extend(chosen.tolist())
        return self.silence[None] + chosen[:, None, None, None] * moved


def mouth_scaler(model, clip, controls: Controls) -> MouthScaler | None:
    """The scaler for ``controls`` on ``model`` trained on ``clip`` (None at the neutral scale)."""
    if controls.mouth_scale == 1.0:
        return None
    from instag.infer.features import silence_items

    return MouthScaler(model, controls.mouth_scale, footage_gap(model, clip), silence_items(8, model.audio_extractor))


# ---------------------------------------------------------------------------------------- the bandit
def state_path(model_path: str | Path) -> Path:
    from instag.infer.sessionlog import LOG_DIR

    return Path(model_path) / LOG_DIR / STATE_FILE


def session_reward(session: dict, rating: str | None) -> float | None:
    """Reward in [0, 1] of one logged session (module docstring), None when it has neither a score nor feedback."""
    parts = []
    score = (session.get("sync") or {}).get("score")
    if score is not None and math.isfinite(score):
        parts.append((SYNC_WEIGHT, float(np.clip((1.0 + score) / 2.0, 0.0, 1.0))))
    if rating in ("up", "down"):
        parts.append((FEEDBACK_WEIGHT, 1.0 if rating == "up" else 0.0))
    if not parts:
        return None
    return sum(w * r for w, r in parts) / sum(w for w, _ in parts)


def arm_statistics(records: list[dict], arms: tuple[Controls, ...] = ARMS) -> tuple[np.ndarray, np.ndarray]:
    """(count, reward sum) per arm ``[len(arms)]`` over the logged sessions that recorded an arm."""
    ratings = {r.get("session"): r.get("rating") for r in records if r.get("type") == "feedback"}  # the last wins
    counts, sums = np.zeros(len(arms)), np.zeros(len(arms))
    for rec in records:
        arm = ((rec.get("settings") or {}).get("delivery") or {}).get("arm")
        if rec.get("type") != "session" or not isinstance(arm, int) or not 0 <= arm < len(arms):
            continue
        reward = session_reward(rec, ratings.get(rec.get("id")))
        if reward is not None:
            counts[arm] += 1
            sums[arm] += reward
    return counts, sums


def ucb1(counts: np.ndarray, sums: np.ndarray) -> int:
    """UCB1's arm: the first untried one, else the largest ``mean + sqrt(2 ln N / n)``."""
    untried = np.flatnonzero(counts == 0)
    if untried.size:
        return int(untried[0])
    bound = sums / counts + np.sqrt(2.0 * math.log(counts.sum()) / counts)
    return int(np.argmax(bound))


def choose(model_path: str | Path, arms: tuple[Controls, ...] = ARMS) -> tuple[int, Controls]:
    """The policy's arm for the next session of the model at ``model_path``; writes ``logs/delivery.json``."""
    from instag.infer.sessionlog import read_records

    records, _ = read_records(model_path)
    counts, sums = arm_statistics(records, arms)
    arm = ucb1(counts, sums)
    means = np.divide(sums, counts, out=np.full_like(sums, np.nan), where=counts > 0)
    state = {
        "policy": "UCB1", "reward": f"{SYNC_WEIGHT} x (1 + sync score) / 2 and {FEEDBACK_WEIGHT} x thumbs (up 1, down 0), "
                                    "weighted mean of those present",
        "limits": LIMITS, "chosen": arm,
        "arms": [{**asdict(a), "sessions": int(n), "mean_reward": None if not n else float(m)}
                 for a, n, m in zip(arms, counts, means, strict=True)],
    }
    path = state_path(model_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")  # served answers choose at once
    staged.write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    os.replace(staged, path)
    return arm, arms[arm].clamped()


def resolve(model_path: str | Path, delivery: str | None, controls: Controls, log=print) -> tuple[int | None, Controls]:
    """(arm or None, controls) for a session: the policy's choice with ``delivery`` ``auto``, else ``controls``
    clamped to :data:`LIMITS` (a note when that changed them)."""
    if delivery not in (None, *DELIVERY_MODES):
        raise InstagError(f"--delivery {delivery!r}: expected one of {', '.join(DELIVERY_MODES)}")
    if delivery == "auto":
        arm, chosen = choose(model_path)
        log(f"instag: delivery arm {arm}: mouth_scale {chosen.mouth_scale}, smoothing {chosen.smoothing}, "
            f"expression_intensity {chosen.expression_intensity}")
        return arm, chosen
    clamped = controls.clamped()
    if clamped != controls:
        log(f"instag: delivery controls clamped to their limits {LIMITS}: {asdict(clamped)}")
    return None, clamped


def settings_entry(arm: int | None, controls: Controls, scaler: MouthScaler | None) -> dict:
    """What a session log records of its delivery (``settings.delivery``): the arm, the controls and the mouth
    scale actually applied (mean and smallest over frames, after the footage limit)."""
    entry = {"arm": arm, **asdict(controls)}
    if scaler is not None and scaler.applied:
        entry.update(mouth_scale_applied_mean=float(np.mean(scaler.applied)),
                     mouth_scale_applied_min=float(np.min(scaler.applied)))
    return entry
