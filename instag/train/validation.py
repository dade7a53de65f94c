"""Validation while adapting: a fixed small set of held-out frames scored on a schedule.

:class:`ValidationSet` holds the frames (the first ``--val_frames`` of the validation split, or the
last ones of the training clip with ``--all_for_train`` or when the clip has no validation split),
rendered at the training resolution through synthesis' own path (:func:`instag.infer.synthesize.
render_frames`: torso and background from the ground truth, as ``instag evaluate`` renders). Each
check (:class:`Validator`, one per stage) computes, against ``gt_imgs``:

- ``psnr``: mean over the frames of the per-frame PSNR, RGB [0,255] (each capped at 100 dB);
- ``lmd``, ``mouth_corr``, ``mouth_amp`` (:mod:`instag.metrics.lips`) from MediaPipe landmarks of the
  renders and of the ground truth (detected once), each frame on its own as in ``instag evaluate``;
- ``aue``, ``aue_lower``, ``aue_upper``: the action-unit error (:mod:`instag.metrics.au`) with both
  sides' intensities from our landmark AU estimator (an OpenFace csv cannot describe renders);
- ``score``, the selection score: **lip sync first, image second**::

      score = mouth_corr - 0.5 * |1 - mouth_amp| + 0.02 * psnr

  (1 dB of PSNR weighs as much as 0.02 of correlation; a frame set where no face is found in the
  renders scores as corr 0, amp 0). A check improves when its score beats every earlier one of the
  stage; ``--early_stop P`` ends the stage after P checks without improvement and keeps the best
  checkpoint as the stage's product (what the next stage, evaluation and synthesis load).

Each check also writes ``<model>/val/<stage>_<iteration>.png``: one row per sample frame (the ground
truth's widest-open, median and most closed mouth; evenly spaced frames when no landmarks are
found), columns ``ground truth | render | mouth`` where the mouth tile holds the ground truth's mouth
crop over the render's. At the end of adaptation ``<model>/val/progress.mp4`` shows the validation
frames after each stage (ground truth | after face | after mouth | after fuse).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from instag.errors import InstagError

if TYPE_CHECKING:
    import torch

    from instag.data.dataset import Clip
    from instag.model.talking_head import TalkingHead
    from instag.train.engine import Trainer

AMP_PENALTY = 0.5  # score lost per unit of |1 - mouth_amp|
PSNR_WEIGHT = 0.02  # score per dB of PSNR
GRID_ROWS = 3
TILE_SIDE = 256  # longer side of one grid tile (frames are never enlarged)
LABEL_MIN_TILE = 96  # smaller tiles carry no labels (the text would cover them)
BEST_PREFIX = "val_best."  # the kept best weights inside the training state
METRIC_KEYS = ("psnr", "lmd", "mouth_corr", "mouth_amp", "aue", "aue_lower", "aue_upper")


def validation_score(metrics: dict) -> float:
    """The selection score of one check: ``mouth_corr - 0.5 |1 - mouth_amp| + 0.02 psnr`` (missing lip
    measurements count as corr 0, amp 0)."""
    corr = metrics.get("mouth_corr") or 0.0
    amp = metrics.get("mouth_amp") or 0.0
    return float(corr - AMP_PENALTY * abs(1.0 - amp) + PSNR_WEIGHT * float(metrics["psnr"]))


def _round(v: float | None, digits: int = 4) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), digits)


class ValidationSet:
    """The frames ``positions`` of ``clip`` with their ground truth [T,H,W,3] (RGB uint8, training size),
    its landmarks [T,478,3] (NaN where no face is found) and AU intensities, ready to render and score."""

    def __init__(self, clip: Clip, positions: list[int], device: torch.device, source: str):
        import torch

        from instag.data.dataset import resize_to
        from instag.infer.synthesize import Backgrounds, Plan

        if not positions:
            raise InstagError(f"{clip.layout.root}: no frames to validate on")
        self.source = source
        self.size = tuple(clip.size)  # (H, W)
        frames = [clip.frames[p] for p in positions]
        aud = [f.aud_id for f in frames]
        # only the audio items the frames' windows reach (frame_windows pads beyond the clip's ends alike)
        lo, hi = max(0, min(aud) - 4), min(len(clip.features), max(aud) + 4)
        self.items = torch.from_numpy(np.asarray(clip.features[lo:hi], np.float32)).to(device)
        self.plan = Plan([f.camera for f in frames], [f.index for f in frames],
                         np.asarray(clip.au_exp[positions], np.float32), [a - lo for a in aud])
        self.backgrounds = Backgrounds(clip.layout, self.size, cache=len(frames))
        gt = []
        for f in frames:
            img = cv2.imread(str(clip.layout.gt_image(f.index)))
            if img is None:
                raise InstagError(f"cannot read ground-truth frame {clip.layout.gt_image(f.index)}; re-run preprocessing")
            gt.append(resize_to(img, self.size)[:, :, ::-1])
        self.gt = np.ascontiguousarray(np.stack(gt))  # [T,H,W,3] RGB
        self.lips_rect = np.asarray(clip.lips_rect[positions])  # [T,4] rows r0,r1 cols c0,c1 at training size
        self.note: str | None = None
        self._detector = self._open_detector()
        self.gt_landmarks = self.landmarks(self.gt)
        self.gt_au = self._au(self.gt_landmarks)
        self.rows = self._sample_rows()

    @classmethod
    def for_adaptation(cls, source_path: str | Path, train_clip: Clip, extractor: str, max_side: int | None, count: int,
                       all_for_train: bool, device: torch.device) -> ValidationSet:
        """The first ``count`` frames of the validation split; the last ``count`` frames of ``train_clip`` with
        ``all_for_train`` or when the clip has no validation split."""
        from instag.data.dataset import load_clip

        why = "--all_for_train"
        if not all_for_train:
            try:
                val = load_clip(source_path, "val", extractor, max_side=max_side)
            except InstagError as err:
                why = f"no usable validation split: {err}"
            else:
                if val.size == train_clip.size:
                    n = min(count, len(val))
                    return cls(val, list(range(n)), device, f"the first {n} frames of the validation split")
                why = f"the validation frames are {val.size[1]}x{val.size[0]}, the training frames {train_clip.size[1]}x{train_clip.size[0]}"
        n = min(count, len(train_clip))
        return cls(train_clip, list(range(len(train_clip) - n, len(train_clip))), device,
                   f"the last {n} training frames ({why}; these frames are trained on)")

    def __len__(self) -> int:
        return len(self.gt)

    # ------------------------------------------------------------------ landmarks
    def _open_detector(self):
        try:
            from instag.preprocess.landmarks import FaceMeshDetector

            return FaceMeshDetector(video=False, max_faces=1)
        except (ImportError, InstagError) as err:
            self.note = f"lip metrics and AU error not computed: {err}"
            return None

    def landmarks(self, frames: np.ndarray) -> np.ndarray:
        """MediaPipe landmarks [T,478,3] in pixels of RGB ``frames`` [T,H,W,3]; NaN where no face is found."""
        out = np.full((len(frames), 478, 3), np.nan)
        if self._detector is not None:
            for k, rgb in enumerate(frames):
                lm = self._detector.detect(np.ascontiguousarray(rgb[:, :, ::-1]))
                if lm is not None:
                    out[k] = lm
        return out

    @staticmethod
    def _au(landmarks: np.ndarray) -> dict:
        from instag.metrics.au import au_from_landmarks

        return au_from_landmarks(landmarks) if np.isfinite(landmarks).all(axis=(1, 2)).any() else {}

    def _sample_rows(self) -> list[int]:
        from instag.metrics.lips import mouth_opening

        n = len(self)
        opening = mouth_opening(self.gt_landmarks)
        ok = np.flatnonzero(np.isfinite(opening))
        if len(ok) >= GRID_ROWS:
            order = ok[np.argsort(-opening[ok], kind="stable")]
            return [int(order[0]), int(order[len(order) // 2]), int(order[-1])]
        return sorted({min(n - 1, (2 * k + 1) * n // (2 * GRID_ROWS)) for k in range(GRID_ROWS)})

    # ------------------------------------------------------------------ render and score
    def render(self, head: TalkingHead, dilate: bool = True, batch: int = 8) -> np.ndarray:
        """The frames rendered by ``head`` (eval mode: running audio statistics left alone): uint8 [T,H,W,3] RGB."""
        from instag.infer.synthesize import render_frames

        was_training = head.training
        head.eval()
        try:
            return np.stack(list(render_frames(head, self.plan, self.items, self.backgrounds, dilate, batch)))
        finally:
            head.train(was_training)

    def score(self, frames: np.ndarray) -> dict:
        """Metrics of rendered ``frames`` [T,H,W,3] against the ground truth (see the module docstring)."""
        from instag.metrics.au import au_error
        from instag.metrics.image import psnr_from_mse
        from instag.metrics.lips import lmd, mouth_amp, mouth_opening, pearson

        mse = [cv2.norm(p, g, cv2.NORM_L2SQR) / p.size for p, g in zip(frames, self.gt)]  # ~100x numpy's speed
        out: dict = {"psnr": float(np.mean([min(psnr_from_mse(m), 100.0) for m in mse]))}
        pred = self.landmarks(frames)
        both = np.isfinite(pred).all(axis=(1, 2)) & np.isfinite(self.gt_landmarks).all(axis=(1, 2))
        out.update(lmd=None, mouth_corr=None, mouth_amp=None, aue=None, aue_lower=None, aue_upper=None)
        out["frames_without_face"] = int((~both).sum())
        if both.sum() >= 2:
            p_open, g_open = mouth_opening(pred), mouth_opening(self.gt_landmarks)
            out["lmd"] = lmd(pred, self.gt_landmarks, self.size[1])
            out["mouth_corr"] = pearson(p_open, g_open)
            out["mouth_amp"] = mouth_amp(p_open, g_open)
            if self.gt_au:
                aue = au_error(self._au(pred), self.gt_au)
                out.update({k: aue[k] for k in ("aue", "aue_lower", "aue_upper")})
        return {k: _round(v) if k in METRIC_KEYS else v for k, v in out.items()}

    # ------------------------------------------------------------------ samples
    def tile_size(self) -> tuple[int, int]:
        """(height, width) of one grid tile."""
        h, w = self.size
        s = min(1.0, TILE_SIDE / max(h, w))
        return max(2, round(h * s)), max(2, round(w * s))

    def mouth_box(self, k: int, aspect: float) -> tuple[int, int, int, int]:
        """A box (r0, r1, c0, c1) of width/height ``aspect`` around the lips of frame ``k``, inside the frame."""
        h, w = self.size
        r0, r1, c0, c1 = (int(v) for v in self.lips_rect[k])
        side = max(r1 - r0, c1 - c0, 8)
        bh = min(h, max(2, int(round(1.5 * side))))
        bw = min(w, max(2, int(round(bh * aspect))))
        top = int(np.clip((r0 + r1) / 2 - bh / 2, 0, h - bh))
        left = int(np.clip((c0 + c1) / 2 - bw / 2, 0, w - bw))
        return top, top + bh, left, left + bw

    def grid(self, frames: np.ndarray, title: str = "render") -> np.ndarray:
        """Sample grid uint8 [rows*th, 3*tw, 3] RGB: per sample row ``ground truth | render | mouth`` (the
        mouth tile: the ground truth's crop above the render's)."""
        from instag.metrics.report import label

        th, tw = self.tile_size()
        top_h = th // 2
        rows = []
        for r, k in enumerate(self.rows):
            r0, r1, c0, c1 = self.mouth_box(k, tw / max(1, top_h))
            mouth = np.concatenate([cv2.resize(np.ascontiguousarray(img[r0:r1, c0:c1]), (tw, h), interpolation=cv2.INTER_LINEAR)
                                    for img, h in ((self.gt[k], top_h), (frames[k], th - top_h))])
            tiles = [cv2.resize(self.gt[k], (tw, th), interpolation=cv2.INTER_AREA),
                     cv2.resize(frames[k], (tw, th), interpolation=cv2.INTER_AREA), mouth]
            if r == 0 and min(th, tw) >= LABEL_MIN_TILE:
                tiles = [label(t, name) for t, name in zip(tiles, ("ground truth", title, "mouth: truth / render"))]
            rows.append(np.concatenate(tiles, axis=1))
        return np.ascontiguousarray(np.concatenate(rows, axis=0))

    def close(self) -> None:
        self.backgrounds.close()
        if self._detector is not None:
            self._detector.close()
            self._detector = None


class Validator:
    """Checks one stage on a :class:`ValidationSet` every ``every`` steps and at its last step, logs the
    metrics (history, TensorBoard scalars and sample grids), tracks the best score and, with
    ``patience`` > 0 (``--early_stop``), keeps the best weights and ends the stage after ``patience``
    checks without improvement."""

    def __init__(self, vset: ValidationSet, stage: str, tag: str, every: int, patience: int, folder: str | Path,
                 dilate: bool = True):
        self.vset = vset
        self.stage = stage
        self.tag = tag
        self.every = every
        self.patience = patience
        self.keep_best = patience > 0
        self.folder = Path(folder) / "val"
        self.dilate = dilate
        self.writer = None
        self.history: list[dict] = []
        self.best_score: float | None = None
        self.best_iteration: int | None = None
        self.bad_checks = 0
        self.stopped = False
        self.best_tensors: dict | None = None
        self.seconds = 0.0  # this piece's checks
        self.checks = 0

    def grid_path(self, it: int) -> Path:
        return self.folder / f"{self.stage}_{it:05d}.png"

    def begin(self, start: int, writer=None) -> None:
        """Start (or resume at ``start``): grids of checks past ``start`` are from a run that did not get to
        save them in its state, and are done again."""
        self.writer = writer
        self.history = [h for h in self.history if h["iteration"] <= start]
        for path in self.folder.glob(f"{self.stage}_*.png"):
            tail = path.stem.rsplit("_", 1)[-1]
            if tail.isdigit() and int(tail) > start:
                path.unlink(missing_ok=True)

    def check(self, trainer: Trainer, it: int) -> bool:
        """Score the model at step ``it``; True when the stage should end here (early stopping)."""
        from tqdm import tqdm

        from instag.io.atomic import write_image

        t0 = time.perf_counter()
        head = trainer.ids[0].head
        frames = self.vset.render(head, self.dilate)
        row = {"iteration": it, **self.vset.score(frames)}
        row["score"] = round(validation_score(row), 5)
        grid = self.vset.grid(frames, f"{self.stage} {it}")
        write_image(self.grid_path(it), grid[:, :, ::-1])
        improved = self.best_score is None or row["score"] > self.best_score
        if improved:
            self.best_score, self.best_iteration, self.bad_checks = row["score"], it, 0
            if self.keep_best:  # a copy: on the CPU state_tensors() shares the live parameters' memory
                self.best_tensors = {k: v.clone() for k, v in head.state_tensors().items()}
        else:
            self.bad_checks += 1
        last = it >= trainer.cfg.iterations
        self.stopped = self.patience > 0 and self.bad_checks >= self.patience and not last
        if self.writer is not None:
            for k in ("score", *METRIC_KEYS):
                if row.get(k) is not None:
                    self.writer.add_scalar(f"{self.tag}/val_{k}", row[k], it)
            self.writer.add_image(f"{self.tag}/val_samples", grid, it, dataformats="HWC")
        row["seconds"] = round(time.perf_counter() - t0, 3)
        self.seconds += row["seconds"]
        self.checks += 1
        self.history.append(row)
        tqdm.write(f"instag: {self.tag} {it}: {describe(row)}; best {self.best_score:.3f} at {self.best_iteration}"
                   + (f"; stopping: no better score in {self.patience} checks" if self.stopped else ""), file=sys.stderr)
        return self.stopped

    def selected_iteration(self, last: int) -> int:
        """The iteration whose weights are the stage's product when it ends at ``last``."""
        return self.best_iteration if self.keep_best and self.best_tensors is not None else last

    # ------------------------------------------------------------------ resumable state
    def state(self) -> dict:
        return {"history": self.history, "best_score": self.best_score, "best_iteration": self.best_iteration,
                "bad_checks": self.bad_checks, "stopped": self.stopped}

    def tensors(self) -> dict:
        """The kept best weights, prefixed for the training state (empty unless ``keep_best``)."""
        if not self.keep_best or self.best_tensors is None:
            return {}
        return {BEST_PREFIX + k: v for k, v in self.best_tensors.items()}

    def restore(self, state: dict | None, tensors: dict) -> None:
        """Continue from a training state's ``validation`` entry and tensors (a state without them: afresh)."""
        if not isinstance(state, dict):
            return
        self.history = list(state.get("history") or [])
        self.best_score = state.get("best_score")
        self.best_iteration = state.get("best_iteration")
        self.bad_checks = int(state.get("bad_checks") or 0)
        self.stopped = bool(state.get("stopped"))
        best = {k[len(BEST_PREFIX):]: v for k, v in tensors.items() if k.startswith(BEST_PREFIX)}
        self.best_tensors = best if self.keep_best and best else None
        if self.keep_best and self.best_tensors is None and self.best_iteration is not None:
            # the state was saved without kept weights (validation without --early_stop): select afresh
            self.best_score = self.best_iteration = None
            self.bad_checks = 0

    def summary(self) -> dict:
        """The stage's validation entries for the training log."""
        return {"validation": self.history, "val_every": self.every,
                "val_seconds": round(sum(h.get("seconds", 0.0) for h in self.history), 2),
                "best_iteration": self.best_iteration, "best_score": self.best_score}


def describe(row: dict) -> str:
    """One line of a check's metrics."""
    parts = [f"val PSNR {row['psnr']:.2f} dB"]
    for key, name, fmt in (("mouth_corr", "mouth corr", ".2f"), ("mouth_amp", "amp", ".2f"), ("lmd", "LMD", ".2f"),
                           ("aue_lower", "AUE lower", ".3f"), ("aue_upper", "upper", ".3f")):
        if row.get(key) is not None:
            parts.append(f"{name} {row[key]:{fmt}}")
    parts.append(f"score {row['score']:.3f}")
    return ", ".join(parts)


def progress_video(vset: ValidationSet, model_dir: str | Path, stages: list[str], device: torch.device,
                   dilate: bool = True) -> Path | None:
    """``<model_dir>/val/progress.mp4``: the validation frames as ground truth | after each of ``stages`` (their
    products, ``chkpnt_<stage>_latest``); None when no stage product exists."""
    import json

    from instag.io.encode import VideoWriter
    from instag.metrics.report import side_by_side
    from instag.model.talking_head import TalkingHead

    model_dir = Path(model_dir)
    columns, names = [vset.gt], ["ground truth"]
    for stage in stages:
        stem = f"chkpnt_{stage}_latest"
        if not (model_dir / f"{stem}.safetensors").exists():
            continue
        meta = json.loads((model_dir / f"{stem}.json").read_text(encoding="utf-8"))
        head = TalkingHead.load(model_dir, device=device, name=stem)
        columns.append(vset.render(head, dilate))
        names.append(f"after {stage} ({meta.get('selected_iteration', meta.get('iteration'))})")
    if len(columns) == 1:
        return None
    path = model_dir / "val" / "progress.mp4"
    with VideoWriter(path) as video:
        for k in range(len(vset)):
            video.write(side_by_side([c[k] for c in columns], names))
    return path
