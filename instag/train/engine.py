"""The one training engine: face, mouth and fuse stages, in pre-training and adaptation.

A :class:`Trainer` holds one or more identities (a clip and its :class:`TalkingHead`; several
share the universal fields in pre-training) and runs ``StageConfig.iterations`` steps of one
stage. What differs between stages is data (which cloud renders, what the chroma-keyed target
keeps, which regularisers apply) and is decided per step from the config, not by separate loops.

Per step: draw (identity, frame) by the curriculum; render the stage's cloud(s); loss; backward;
densification statistics; optimiser steps; EMA; densify / prune / reset on schedule. A loss that
is not finite stops the run naming the step and the last good checkpoint.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from instag.data.cameras import scene_extent
from instag.data.dataset import FACE, HAIR, MOUTH, Clip, FrameDataset
from instag.errors import InstagError
from instag.model.audio_encoder import LipHead
from instag.model.motion import Motion
from instag.model.talking_head import Deformed, TalkingHead
from instag.train import losses as L
from instag.train.config import StageConfig
from instag.train.distributed import SINGLE, World
from instag.train.ema import EMA
from instag.train.sampler import CurriculumSampler

GREEN_FACE = (30 / 255, 225 / 255, 30 / 255)
GREEN_MOUTH_STRICT = (20 / 255, 235 / 255, 20 / 255)
GREEN_MOUTH_LOOSE = (100 / 255, 180 / 255, 100 / 255)
NAN_CHECK_EVERY = 10


@dataclass
class Identity:
    """One clip being trained and its head (clouds, personalized fields; universal fields shared)."""

    clip: Clip
    head: TalkingHead
    extent: float = 0.0
    seen: int = 0
    gauss_opt: torch.optim.Optimizer | None = None
    personal_opt: torch.optim.Optimizer | None = None
    lip_anchor: Tensor | None = None  # the clip's tracked lip landmarks on the training device

    def __post_init__(self):
        if not self.extent:
            self.extent = scene_extent(self.clip.frames)


class StopSignals:
    """While active (in the main thread), SIGINT and SIGTERM only ask the training loop to stop: it finishes its
    step, saves a resumable state and returns (:meth:`Trainer.run`). A second signal stops at once, as before."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def _record(self, signum, frame) -> None:
        if self.signum is not None:
            raise stop_exception(signum)
        self.signum = signum
        print(f"\ninstag: {signal.Signals(signum).name}: saving a resumable checkpoint after this step (again to stop "
              "at once, losing the steps since the last one)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def stop_exception(signum: int, note: str = "") -> KeyboardInterrupt:
    """What a stop by ``signum`` raises: KeyboardInterrupt for Ctrl-C, the CLI's Terminated for SIGTERM, with
    ``note`` (what was saved, how to resume) for the CLI's last line."""
    from instag.cli import Terminated

    return (Terminated if signum == signal.SIGTERM else KeyboardInterrupt)(*([note] if note else []))


def _ignore_stop_signals(worker_id: int) -> None:
    """Data loader workers leave Ctrl-C (SIGINT reaches the whole process group) to the training process, which
    stops them when it stops. SIGTERM keeps its default: it is how the training process's exit ends them
    (multiprocessing terminates daemonic children), and a worker that ignored it would hang that exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class StepLog:
    iteration: int
    loss: float
    parts: dict[str, float] = field(default_factory=dict)


def _greenish(rgb: Tensor, thr: tuple[float, float, float]) -> Tensor:
    return (rgb[:, 0] < thr[0]) & (rgb[:, 1] > thr[1]) & (rgb[:, 2] < thr[2])


def _dc_rgb(cloud) -> Tensor:
    return (cloud.features_dc[:, 0, :] * 0.28209479177387814 + 0.5).detach()


def _param_groups_by_prefix(module: nn.Module, rules: list[tuple[str, float, float]], default: tuple[float, float], params=None):
    """Optimizer groups of ``module``'s parameters: the first rule whose prefix starts a name sets (lr, weight decay)."""
    allowed = None if params is None else {id(p) for p in params}
    groups: dict[tuple[float, float], list] = {}
    for name, p in module.named_parameters():
        if allowed is not None and id(p) not in allowed:
            continue
        lr, wd = default
        for prefix, r_lr, r_wd in rules:
            if name.startswith(prefix):
                lr, wd = r_lr, r_wd
                break
        groups.setdefault((lr, wd), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd, "initial_lr": lr} for (lr, wd), ps in groups.items()]


class Trainer:
    """Runs one stage over ``identities``. ``universal`` is the stage's universal field (trained unless
    ``cfg.train_universal`` is False); ``lip_head`` the auxiliary audio->lips head (pre-training).

    Among several processes (``world``, :mod:`instag.train.distributed`) it trains the identities of its
    shard (``ids``; ``id_index`` their places in ``identities``) and keeps the others as ``peers``."""

    def __init__(
        self,
        cfg: StageConfig,
        identities: list[Identity],
        device: torch.device,
        lip_head: LipHead | None = None,
        num_workers: int = 0,
        cache_bytes: int = 512 << 20,
        seed: int = 0,
        log: Callable[[StepLog], None] | None = None,
        world: World = SINGLE,
    ):
        self.cfg = cfg
        self.world = world
        self.all_ids = identities
        self.id_index = world.shard(len(identities))
        if not self.id_index:
            raise InstagError(f"{world.size} training processes for {len(identities)} identities: start at most "
                              f"{len(identities)} (torchrun --nproc_per_node {len(identities)})")
        self.ids = [identities[g] for g in self.id_index]
        self.peers = [i for g, i in enumerate(identities) if not world.owns(g)]
        self.device = device
        self.stage = cfg.stage
        self.lip_head = lip_head.to(device) if lip_head is not None and cfg.lip_aux > 0 else None
        self.num_workers = num_workers
        self.cache_bytes = cache_bytes
        self.seed = seed
        self.log = log
        self.iteration = 0
        self.log_every = max(1, min(100, cfg.iterations // 25))
        self.green = torch.tensor([0.0, 1.0, 0.0], device=device)
        self.black = torch.zeros(3, device=device)
        head0 = identities[0].head
        self.universal: nn.Module | None = {"face": head0.face_field, "mouth": head0.mouth_field}.get(self.stage)
        self.ema = EMA(self.universal, cfg.ema_decay) if (cfg.ema_decay > 0 and self.universal is not None) else None
        world.broadcast_([*(self.universal.parameters() if self.universal is not None else ()),
                          *(self.lip_head.parameters() if self.lip_head is not None else ())])
        self.with_priors = cfg.stage == "face" and cfg.mode == "adapt" and cfg.priors_from < cfg.iterations
        self._setup_trainable()
        self.build_optimizers()
        self.losses_window: list[Tensor] = []
        self.notes: list[str] = []  # what this stage left out, for the training log
        self.lpips = self._load_lpips() if cfg.lpips > 0 else None
        self._logged: dict[str, tuple[Tensor, int]] = {}  # sum and count since the last StepLog (kept on the device)
        self.skipped_steps = 0  # steps with nothing in view (no gradient), see step()
        self.stop_signal: int | None = None  # the signal that ended run() (see StopSignals)
        self.history: list[StepLog] = []

    # ------------------------------------------------------------------ setup
    def _load_lpips(self) -> nn.Module | None:
        """The LPIPS model when its weights are on disk (never downloaded); None otherwise, noted in the log."""
        from instag.metrics import lpips as lp

        model = lp.LPIPS.from_local()
        if model is None:
            self.notes.append(f"trained without its LPIPS term: {lp.missing_note()}")
            return None
        return model.to(self.device)

    def _with_lpips(self, loss: Tensor, parts: dict, render: Tensor, target: Tensor, it: int) -> Tensor:
        """``loss`` plus ``cfg.lpips`` × patch LPIPS from ``cfg.lpips_from`` on, when the weights are present
        (recorded in ``parts``)."""
        cfg = self.cfg
        if self.lpips is None or it < cfg.lpips_from:
            return loss
        lo, hi = cfg.lpips_patch
        patch = int(np.random.default_rng(self.seed * 7_919 + it).integers(lo, hi + 1))
        term = cfg.lpips * L.patch_lpips(self.lpips, render, target, patch)
        parts["lpips"] = term.detach()
        return loss + term

    def _setup_trainable(self) -> None:
        cfg = self.cfg
        for ident in self.ids:
            h = ident.head
            h.requires_grad_(False)
            if self.stage == "face":
                h.face.requires_grad_(True)
                h.face_personal.requires_grad_(True)
            elif self.stage == "mouth":
                h.mouth.requires_grad_(True)
                h.mouth_personal.requires_grad_(True)
            else:
                for cloud, names in ((h.face, ("features_dc", "features_rest", "opacity_raw")), (h.mouth, ("features_dc", "features_rest"))):
                    for n in names:
                        getattr(cloud, n).requires_grad_(True)
                h.face_personal.requires_grad_(True)
                h.mouth_personal.requires_grad_(True)
        if self.universal is not None:
            self.universal.requires_grad_(cfg.train_universal)
            if cfg.mode == "adapt" and self.stage == "face":  # adaptation keeps the AU responses pre-training learned
                self.universal.expression.requires_grad_(False)

    def _gauss_lrs(self, extent: float) -> dict[str, float]:
        cfg = self.cfg
        return {
            "xyz": cfg.position_lr_init * extent,
            "features_dc": cfg.feature_lr,
            "features_rest": cfg.feature_lr / 20.0,
            "opacity_raw": cfg.opacity_lr,
            "scale_raw": cfg.scaling_lr,
            "rotation_raw": cfg.rotation_lr,
        }

    def _gauss_groups(self, ident: Identity) -> list[dict]:
        h = ident.head
        lrs = self._gauss_lrs(ident.extent)
        if self.stage == "face":
            return h.face.optimizer_groups(lrs)
        if self.stage == "mouth":
            return h.mouth.optimizer_groups(lrs)
        groups = []
        for prefix, cloud, names in (("face.", h.face, ("features_dc", "features_rest", "opacity_raw")), ("mouth.", h.mouth, ("features_dc", "features_rest"))):
            for g in cloud.optimizer_groups(lrs):
                if g["name"] in names:
                    groups.append({**g, "name": prefix + g["name"]})
        return groups

    def _personal_groups(self, ident: Identity) -> list[dict]:
        cfg = self.cfg
        fields = {"face": [ident.head.face_personal], "mouth": [ident.head.mouth_personal]}.get(
            self.stage, [ident.head.face_personal, ident.head.mouth_personal]
        )
        rules = [
            ("encoder.", cfg.personal_grid_lr, 0.0),
            ("align_net.", cfg.personal_align_lr, 0.0),
            ("audio.att.", cfg.personal_att_lr, 1e-4),
        ]
        groups = []
        for f in fields:
            groups += _param_groups_by_prefix(f, rules, (cfg.personal_mlp_lr, 0.0), f.own_parameters())
        return groups

    def build_optimizers(self) -> None:
        cfg = self.cfg
        for ident in self.ids:
            ident.gauss_opt = torch.optim.Adam(self._gauss_groups(ident), lr=0.0, eps=1e-15)
            ident.personal_opt = torch.optim.Adam(self._personal_groups(ident), lr=0.0)
        self.universal_opt = None
        self.scheduler = None
        if self.universal is not None and cfg.train_universal:
            rules = [("encoder.", cfg.grid_lr, cfg.grid_weight_decay), ("audio.att.", cfg.att_lr, 1e-4)]
            groups = _param_groups_by_prefix(self.universal, rules, (cfg.mlp_lr, 0.0))
            if self.lip_head is not None:
                groups.append({"params": list(self.lip_head.parameters()), "lr": 1e-3, "weight_decay": 0.0, "initial_lr": 1e-3})
            self.universal_opt = torch.optim.AdamW(groups, betas=(0.9, 0.99), eps=1e-8)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.universal_opt, self._scaled_universal_lr)

    def _scaled_universal_lr(self, it: int) -> float:
        """The universal fields' LR factor, times the frames each of their steps trains on: among N processes
        one step stands for N (linear scaling; with the one-process LR, the fields trained on half as many
        steps fell behind: photometric loss 0.099 against 0.062 for 2 processes on the CPU, 0.058 scaled)."""
        return self.universal_lr_factor(it) * self.world.size

    def universal_lr_factor(self, it: int) -> float:
        cfg = self.cfg
        if cfg.mode == "pretrain":
            if it < cfg.curriculum_end:
                return 0.5 ** (it / max(1, cfg.curriculum_end))
            return 0.1 ** (it / max(1, cfg.iterations))
        if it <= cfg.warmup:
            return 0.1
        return (0.1 if cfg.long else 0.5) ** (it / max(1, cfg.iterations))

    def _update_position_lr(self, ident: Identity, it: int) -> None:
        cfg = self.cfg
        t = min(1.0, it / max(1, cfg.position_lr_steps))
        lr = math.exp((1 - t) * math.log(cfg.position_lr_init) + t * math.log(cfg.position_lr_final)) * ident.extent
        for g in ident.gauss_opt.param_groups:
            if g.get("name") == "xyz":
                g["lr"] = lr

    # ------------------------------------------------------------------ data
    def loader(self, start: int):
        dataset = FrameDataset(
            [i.clip for i in self.ids], cache_bytes=self.cache_bytes // max(1, self.num_workers), with_priors=self.with_priors
        )
        sampler = CurriculumSampler([i.clip for i in self.ids], self.cfg, start=start, seed=self.seed,
                                    offset=self.world.rank, stride=self.world.size)
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if self.num_workers > 0 else None,
            worker_init_fn=_ignore_stop_signals if self.num_workers > 0 else None,
        )

    def _to_device(self, sample: dict) -> dict:
        dev = self.device
        out = dict(sample)
        for k in ("image", "background"):
            out[k] = sample[k].to(dev, non_blocking=True).float() / 255.0
        out["masks"] = sample["masks"].to(dev, non_blocking=True)
        for k in ("audio", "au", "lip_target", "lip_flow", "depth", "normal"):
            if k in sample:
                out[k] = sample[k].to(dev, non_blocking=True).float()
        return out

    # ------------------------------------------------------------------ one step
    def _audio(self, module: nn.Module, window: Tensor, grad: bool) -> Tensor:
        if grad:
            return module(window)
        with torch.no_grad():
            return module(window)

    def _face_step(self, ident: Identity, s: dict, it: int, cam) -> tuple[Tensor, dict]:
        cfg, h = self.cfg, ident.head
        warm = it <= cfg.warmup
        static = warm and cfg.static_warmup
        window, au = s["audio"][None], s["au"][None]
        face_audio = self._audio(h.face_field.audio, window, cfg.train_universal)
        personal_audio = None
        if cfg.mode == "pretrain" and not static:
            personal_audio = face_audio if h.share_audio else h.face_personal.audio(window)
        align = cfg.mode == "adapt" and it > cfg.align_from
        if static:
            d = _static(h.face)
        else:
            d = h.deform_face(face_audio, au, align=align, personal_audio=personal_audio)
        priors = self.with_priors and it >= cfg.priors_from
        out = h.render_cloud(d, 0, cam, background=self.green, compute_normals=priors)
        masks = s["masks"]
        face, hair, mouth = (masks & FACE) > 0, (masks & HAIR) > 0, (masks & MOUTH) > 0
        if it >= cfg.late_from:
            mouth = L.erode(mouth, 2)
        head_mask = face | hair
        keep = head_mask & ~mouth
        hair_iter = (not warm) and cfg.hair_from <= it <= cfg.hair_until and self._turn(it) % cfg.hair_every != 0
        if hair_iter:
            keep = keep & ~hair
        render = out.color
        if hair_iter:
            render = L.key_out(render, ~hair)
        target = L.key_out(s["image"], keep)
        H, W = target.shape[1:]
        lips = L.rect_mask(s["lips_rect"], H, W, self.device)
        if it >= cfg.late_from:
            render = L.key_out(render, ~lips)
            target = L.key_out(target, ~lips)
        loss = L.photometric(render, target, cfg.lambda_dssim)
        parts = {"photo": loss.detach()}
        loss = self._with_lpips(loss, parts, render, target, it)
        if not static:
            reg = cfg.motion_reg * L.motion_l1(d.motion.deltas())
            if d.personal is not None:
                reg = reg + cfg.motion_reg * L.motion_l1(d.personal.deltas())
            if d.align_offset is not None:
                reg = reg + cfg.align_reg * d.align_offset.abs().mean()
            alpha = cfg.alpha_reg * L.alpha_loss(out.alpha, head_mask)
            pts = out.means2d.detach()
            in_lips = L.points_in_mask(pts, lips) & out.visible
            att = cfg.lips_att_reg * L.point_attention_loss(d.motion.att_eye, in_lips)
            if d.personal is not None:
                att = att + cfg.lips_att_reg * L.point_attention_loss(d.personal.att_eye, in_lips)
            if not hair_iter and cfg.hair_att_reg > 0:
                in_hair = L.points_in_mask(pts, hair) & out.visible
                att = att + cfg.hair_att_reg * (
                    L.point_attention_loss(d.motion.att_eye, in_hair) + L.point_attention_loss(d.motion.att_audio, in_hair)
                )
            loss = loss + reg + alpha + att
            parts.update(reg=reg.detach(), alpha=alpha.detach(), att=att.detach())
            if cfg.mode == "pretrain" and cfg.contrast > 0 and d.personal is not None:
                con = cfg.contrast * self._contrast(ident, d.personal, window, au, "face")
                loss = loss + con
                parts["contrast"] = con.detach()
        if priors:
            geo = face & ~mouth
            n_loss = L.normal_prior_loss(out.normal, s["normal"], head_mask & ~mouth)
            loss = loss + cfg.normal_prior * n_loss
            parts["normal"] = n_loss.detach()
            reset = cfg.opacity_reset_interval
            if not reset or it % reset > max(1, reset // 30):
                d_loss = L.depth_prior_loss(out.depth, s["depth"], geo, out.alpha)
                loss = loss + cfg.depth_prior * d_loss
                parts["depth"] = d_loss.detach()
        if self.lip_head is not None and s["lip_valid"]:
            lip = ((self.lip_head(face_audio)[0] - s["lip_target"]) ** 2).mean()
            loss = loss + cfg.lip_aux * lip
            parts["lip"] = lip.detach()
        if cfg.lip_motion > 0 and not static and s["lip_valid"] and "lip_flow" in s:
            # the universal field's own motion is what must follow the lips (a personalized residual,
            # pre-training only, would otherwise absorb it and leave nothing to transfer)
            d_xyz = d.motion.d_xyz[0] if d.personal is None else d.motion.d_xyz[0] - d.personal.d_xyz[0]
            xyz = h.face.xyz.detach()
            lm = L.lip_motion_loss(xyz, xyz + d_xyz, cam, self._lip_anchor(ident), s["lip_flow"], cfg.lip_motion_radius)
            loss = loss + cfg.lip_motion * lm
            parts["lip_motion"] = lm.detach()
        return loss, {"out": out, "parts": parts, "cloud": h.face}

    def _lip_anchor(self, ident: Identity) -> Tensor:
        if ident.lip_anchor is None:
            ident.lip_anchor = torch.from_numpy(ident.clip.lip_anchor).to(self.device)
        return ident.lip_anchor

    def _mouth_step(self, ident: Identity, s: dict, it: int, cam) -> tuple[Tensor, dict]:
        cfg, h = self.cfg, ident.head
        warm = it <= cfg.warmup
        static = warm and cfg.static_warmup
        frozen = it > cfg.freeze_from
        window = s["audio"][None]
        align = cfg.mode == "adapt" and it > cfg.align_from
        with torch.no_grad():
            face_audio = h.face_field.audio(window)
            hook = h.hook(face_audio, cfg.mode == "adapt")
        mouth_audio = self._audio(h.mouth_field.audio, window, cfg.train_universal and not frozen)
        personal_audio = None
        if cfg.mode == "pretrain" and not static:
            personal_audio = mouth_audio if h.share_audio else h.mouth_personal.audio(window)
        d = _static(h.mouth) if static else h.deform_mouth(mouth_audio, hook, align=align, personal_audio=personal_audio)
        bg = self.black if frozen else self.green
        out = h.render_cloud(d, 0, cam, background=bg, compute_normals=False)
        masks = s["masks"]
        mouth = (masks & MOUTH) > 0
        H, W = mouth.shape
        lips = L.rect_mask(s["lips_rect"], H, W, self.device)
        bg_img = bg.view(3, 1, 1).expand(3, H, W)
        target = torch.where(mouth[None], s["image"], bg_img)
        render = torch.where((lips & ~mouth)[None], bg_img, out.color)
        loss = L.photometric(render, target, cfg.lambda_dssim)
        parts = {"photo": loss.detach()}
        loss = self._with_lpips(loss, parts, render, target, it)
        if not static:
            reg = cfg.motion_reg * L.motion_l1([d.motion.d_xyz, d.motion.d_rot] if cfg.mode == "pretrain" else [])
            if d.personal is not None:
                reg = reg + cfg.motion_reg * L.motion_l1([d.personal.d_xyz])
            if d.align_offset is not None:
                reg = reg + cfg.align_reg * d.align_offset.abs().mean()
            alpha = cfg.alpha_reg * L.alpha_loss(out.alpha, lips)
            loss = loss + reg + alpha
            parts.update(reg=reg.detach(), alpha=alpha.detach())
            if cfg.mode == "pretrain" and cfg.contrast > 0 and d.personal is not None:
                con = cfg.contrast * self._contrast(ident, d.personal, window, None, "mouth")
                loss = loss + con
                parts["contrast"] = con.detach()
        if self.lip_head is not None and s["lip_valid"]:
            lip = ((self.lip_head(mouth_audio)[0] - s["lip_target"]) ** 2).mean()
            loss = loss + cfg.lip_aux * lip
            parts["lip"] = lip.detach()
        return loss, {"out": out, "parts": parts, "cloud": h.mouth}

    def _fuse_step(self, ident: Identity, s: dict, it: int, cam) -> tuple[Tensor, dict]:
        cfg, h = self.cfg, ident.head
        window, au = s["audio"][None], s["au"][None]
        with torch.no_grad():
            face_audio = h.face_field.audio(window)
            mouth_audio = h.mouth_field.audio(window)
            hook = h.hook(face_audio, True)
        df = h.deform_face(face_audio, au, align=True)
        dm = h.deform_mouth(mouth_audio, hook, align=True)
        rf = h.render_cloud(df, 0, cam, compute_normals=False)
        rm = h.render_cloud(dm, 0, cam, compute_normals=False)
        mouth_img = rm.color + (1 - rm.alpha) * s["background"]
        image = rf.color + (1 - rf.alpha) * mouth_img
        loss = L.photometric(image, s["image"], cfg.lambda_dssim)
        parts = {"photo": loss.detach()}
        loss = self._with_lpips(loss, parts, image, s["image"], it)
        return loss, {"out": None, "parts": parts, "cloud": None}

    def _contrast(self, ident: Identity, own: Motion, window: Tensor, au: Tensor | None, kind: str) -> Tensor:
        others = [i for i in self.all_ids if i is not ident]
        if not others:
            return own.d_xyz.new_zeros(())
        rng = np.random.default_rng(self.seed * 1_000_003 + self.iteration)
        chosen = rng.choice(len(others), size=min(self.cfg.contrast_others, len(others)), replace=False)
        xyz = (ident.head.face if kind == "face" else ident.head.mouth).xyz.detach()
        outs = []
        with torch.no_grad():
            for k in chosen:
                field_k = others[int(k)].head.face_personal if kind == "face" else others[int(k)].head.mouth_personal
                audio_k = field_k.audio(window)
                outs.append(field_k(xyz, audio_k, au).d_xyz)
        return L.contrast_loss(own.d_xyz, outs)

    # ------------------------------------------------------------------ schedule
    def _maintain(self, ident: Identity, it_id: int, info: dict) -> None:
        """Densification, pruning, resets, SH degree (per identity, on its own step count ``it_id``)."""
        cfg = self.cfg
        cloud = info["cloud"]
        out = info["out"]
        if cloud is None:
            return
        if it_id % cfg.sh_up_interval == 0:
            cloud.one_up_sh_degree()
        densifying = cfg.densify_from <= it_id <= cfg.densify_until
        if densifying and out is not None and out.means2d is not None and out.means2d.grad is not None:
            h, w = ident.clip.size
            cloud.add_densify_stats(out.means2d.grad, out.visible, out.radii, image_size=(w, h))
        opt = ident.gauss_opt
        if densifying and it_id > cfg.densify_from and it_id % cfg.densify_interval == 0:
            big = it_id > cfg.prune_big_from
            min_opacity = 0.05 + 0.25 * it_id / max(1, cfg.densify_until)
            # safety net: one densification step never prunes more than half of the cloud by opacity
            min_opacity = min(min_opacity, float(cloud.opacities.detach().median()))
            cloud.densify_and_prune(
                opt,
                cfg.densify_grad_threshold,
                min_opacity,
                ident.extent,
                max_screen_size=max(10.0, 20 * cloud_scale(ident)) if big else None,
                max_world_scale=0.1 * ident.extent if big else None,
            )
            if self.stage == "mouth":
                thr = GREEN_MOUTH_STRICT if (cfg.mode == "pretrain" or it_id <= cfg.green_reset_from) else GREEN_MOUTH_LOOSE
                mask = _greenish(_dc_rgb(cloud), thr)
                if mask.any():
                    cloud.reset_params(mask, opt, opacity=0.1, scale_factor=0.1)
        if self.stage == "face" and it_id > cfg.densify_from and it_id % cfg.densify_interval == 0:
            prune = torch.zeros(cloud.xyz.shape[0], dtype=torch.bool, device=cloud.xyz.device)
            if cfg.green_prune:
                prune |= _greenish(_dc_rgb(cloud), GREEN_FACE)
            if cfg.z_prune:
                prune |= cloud.xyz.detach()[:, 2] < cfg.z_prune_below
            if prune.any() and not prune.all():
                cloud.prune(prune, opt)
        if cloud.num_points == 0:
            raise InstagError(
                f"{cfg.mode} {cfg.stage}: every Gaussian of {ident.clip.name} was pruned at step {it_id}; the clip's masks may be "
                "empty or the recipe too short for densification (raise --iterations)"
            )
        if cfg.resets_opacity(it_id):
            cloud.reset_opacity(opt, 0.01)

    def _freeze_geometry(self, ident: Identity) -> None:
        """Adaptation mouth, late phase: only colours keep training (params without grad are skipped by Adam)."""
        cloud = ident.head.mouth
        for name in ("xyz", "opacity_raw", "scale_raw", "rotation_raw"):
            getattr(cloud, name).requires_grad_(False)
        if self.universal is not None:
            self.universal.requires_grad_(False)

    # ------------------------------------------------------------------ run
    def step(self, it: int, sample: dict) -> Tensor:
        cfg = self.cfg
        self.iteration = it
        ident = self.ids[int(sample["clip"])]
        ident.seen += 1
        it_id = it if len(self.all_ids) == 1 else ident.seen
        s = self._to_device(sample)
        cam = ident.clip.frames[int(sample["pos"])].camera.to(self.device)
        self._update_position_lr(ident, it_id)
        if it == cfg.freeze_from + 1:
            self._freeze_geometry(ident)
        fn = {"face": self._face_step, "mouth": self._mouth_step, "fuse": self._fuse_step}[self.stage]
        loss, info = fn(ident, s, it, cam)
        out = info["out"]
        if out is not None and out.means2d is not None and out.means2d.requires_grad:
            out.means2d.retain_grad()
        if not loss.requires_grad:
            # Nothing trainable reached the image this step (e.g. every Gaussian moved out of view):
            # there is no gradient to apply, so skip the update instead of failing the run.
            self.skipped_steps += 1
            self.losses_window.append(loss.detach())
            if self.world.size > 1:
                self.step_universal(False)  # the round's exchange needs every process
            return loss.detach()
        loss.backward()
        with torch.no_grad():
            ident.gauss_opt.step()
            ident.gauss_opt.zero_grad(set_to_none=True)
            ident.personal_opt.step()
            ident.personal_opt.zero_grad(set_to_none=True)
        self.step_universal(True)
        self._maintain(ident, it_id, info)
        self.losses_window.append(loss.detach())
        if self.log is not None:
            self._log_step(it, loss.detach(), info["parts"])
        return loss.detach()

    @torch.no_grad()
    def step_universal(self, had_grad: bool) -> None:
        """The universal fields' optimiser step, LR schedule and EMA for this round's frames: this step's alone,
        or among several processes one per process, their gradients averaged (``had_grad``: this process's
        step has one). A process past the last iteration calls it with False to join the round."""
        frames = int(had_grad)
        if self.world.size > 1:
            params = [p for g in self.universal_opt.param_groups for p in g["params"]] if self.universal_opt else []
            frames = self.world.average_gradients(params, had_grad)
            self._sync_peers()
        if not frames:
            return
        if self.universal_opt is not None:
            self.universal_opt.step()
            self.universal_opt.zero_grad(set_to_none=True)
            for _ in range(frames):  # the schedule counts frames, as in one process
                self.scheduler.step()
        if self.ema is not None:
            self.ema.update(frames)

    def _sync_peers(self) -> None:
        """Copy the other processes' identities' personalized fields of this stage (the contrast loss reads them)."""
        cfg = self.cfg
        if not self.peers or cfg.mode != "pretrain" or cfg.contrast <= 0 or self.stage not in ("face", "mouth"):
            return

        def params(ident: Identity) -> list[nn.Parameter]:
            return (ident.head.face_personal if self.stage == "face" else ident.head.mouth_personal).own_parameters()

        rows = torch.stack([nn.utils.parameters_to_vector(params(i)) for i in self.ids])
        every = self.world.gather_rows(rows, len(self.all_ids))
        for g, ident in enumerate(self.all_ids):
            if not self.world.owns(g):
                nn.utils.vector_to_parameters(every[g], params(ident))

    def _turn(self, it: int) -> int:
        """The count of this process's steps that iteration ``it`` is (``it`` itself in one process): rules
        "one iteration in k" count these, so that each process applies them one step in k."""
        return (it - 1) // self.world.size + 1

    def _log_step(self, it: int, loss: Tensor, parts: dict) -> None:
        """Sum this step's loss and parts; every ``log_every`` steps emit their means since the last log
        (one sampled frame's loss alone swings with the frame, e.g. with how wide its mouth is open)."""
        for k, v in (("loss", loss), *parts.items()):
            total, n = self._logged.get(k, (0.0, 0))
            self._logged[k] = (v + total, n + 1)
        size = self.world.size  # each process logs at its first iteration past every log point
        if it // self.log_every != (it - size) // self.log_every or it + size > self.cfg.iterations:
            means = {k: float(total) / n for k, (total, n) in self._logged.items()}
            self._logged = {}
            self.log(StepLog(it, means.pop("loss"), means))

    def run(
        self,
        start: int = 0,
        save: Callable[[int], str] | None = None,
        save_every: int = 0,
        save_seconds: float = 300.0,
        stop_after_seconds: float | None = None,
        progress: bool = True,
        validate: Callable[[int], bool] | None = None,
        validate_every: int = 0,
        stop_on_signal: bool = False,
    ) -> int:
        """Train from iteration ``start`` to ``cfg.iterations``; returns the last iteration done.

        ``save(it)`` writes a checkpoint and returns its name; called every ``save_every`` steps,
        every ``save_seconds`` and at the end or when ``stop_after_seconds`` have passed.
        ``validate(it)`` scores the model every ``validate_every`` steps and at the last one, after the
        loss check and before that step's save; it returns True to end the stage there (early stopping),
        which saves and returns ``it``. With ``stop_on_signal`` (and ``save``) a SIGINT or SIGTERM ends the step
        under way, saves and returns it, with :attr:`stop_signal` set (:class:`StopSignals`).

        Among N processes each loop turn is a round of N iterations (this process trains iteration
        ``end - N + 1 + rank``); ``it`` is then the round's last iteration, and the loss check, saving and
        stopping are agreed by all processes.
        """
        self.time_data = self.time_step = 0.0
        self.stop_signal = None
        if start >= self.cfg.iterations:
            return start
        with StopSignals(stop_on_signal and save is not None) as signals:
            last = self._loop(start, save, save_every, save_seconds, stop_after_seconds, progress, validate,
                              validate_every, signals)
        if self.stop_signal is None and self.world.any(signals.signum is not None)[0]:
            self.stop_signal = signals.signum or signal.SIGTERM  # came after the last step's check: its save is done
        return last

    def _loop(self, start: int, save, save_every: int, save_seconds: float, stop_after_seconds: float | None,
              progress: bool, validate, validate_every: int, signals: StopSignals) -> int:
        from tqdm import tqdm

        cfg = self.cfg
        last_good = "none (no checkpoint was written yet)"
        t0 = time.time()
        last_save_t = t0
        for ident in self.ids:
            ident.head.train()
        loader = iter(self.loader(start))
        size = self.world.size
        bar = tqdm(range(start + size, cfg.iterations + size, size), desc=f"{cfg.mode} {cfg.stage}",
                   disable=not progress or not self.world.is_main, file=sys.stderr, mininterval=2.0)
        it = start
        window_start = start + 1
        for end in bar:
            it = min(end, cfg.iterations)
            own = end - size + 1 + self.world.rank
            t_a = time.perf_counter()
            sample = next(loader) if own <= cfg.iterations else None
            t_b = time.perf_counter()
            if sample is None:
                self.step_universal(False)  # past the last iteration: only join the round
            else:
                self.step(own, sample)
            self.time_data += t_b - t_a
            self.time_step += time.perf_counter() - t_b
            done = it == cfg.iterations
            validating = validate is not None and validate_every > 0 and (it % validate_every == 0 or done)
            asked = signals.signum is not None and size == 1  # among several processes: agreed at the next check
            if len(self.losses_window) >= NAN_CHECK_EVERY or done or validating or asked:
                vals = torch.stack(self.losses_window).cpu() if self.losses_window else torch.zeros(0)
                self.losses_window.clear()
                bad = (~torch.isfinite(vals)).nonzero()
                elsewhere = size > 1 and self.world.any(len(bad) > 0)[0] and not len(bad)
                if elsewhere:
                    raise InstagError(
                        f"{cfg.mode} {cfg.stage}: the loss became non-finite in another training process between steps "
                        f"{window_start} and {it}; training stopped. Last good checkpoint: {last_good}. Resume from it "
                        "with --resume (a lower learning rate or a different --seed may avoid the failure)"
                    )
                if len(bad):
                    step = window_start + self.world.rank + size * int(bad[0, 0])
                    raise InstagError(
                        f"{cfg.mode} {cfg.stage}: the loss became {float(vals[bad[0, 0]])} at step {step}; "
                        f"training stopped. Last good checkpoint: {last_good}. Resume from it with --resume "
                        "(a lower learning rate or a different --seed may avoid the failure)"
                    )
                if progress and len(vals):
                    bar.set_postfix(loss=f"{float(vals[-1]):.4f}", refresh=False)
                window_start = it + 1
                halt = validating and validate(it)
                now = time.time()
                stop = halt or (stop_after_seconds is not None and now - t0 >= stop_after_seconds)
                periodic = (save_every and it % save_every == 0) or now - last_save_t >= save_seconds
                signalled = signals.signum is not None
                if size > 1:  # the clocks differ: every process saves and stops when one would
                    stop, periodic, signalled = self.world.any(stop, periodic, signalled)
                if signalled:  # a process that was not signalled itself stops as the others were (torchrun: SIGTERM)
                    self.stop_signal = signals.signum or signal.SIGTERM
                    stop = True
                if save is not None and (done or stop or periodic):
                    last_good = save(it)
                    last_save_t = now
                if stop and not done:
                    bar.close()
                    return it
        bar.close()
        return it


def cloud_scale(ident: Identity) -> float:
    """Screen-size pruning threshold factor: upstream's 20 px are for ~512-px frames."""
    h, w = ident.clip.size
    return max(h, w) / 512.0


def _static(cloud) -> Deformed:
    """A cloud without motion, as one frame."""
    zero = Motion(torch.zeros_like(cloud.xyz)[None])
    return Deformed(
        cloud.xyz[None], cloud.rotations[None], cloud.scales[None], cloud.opacities, cloud.sh, cloud.active_sh_degree, zero
    )


# ---------------------------------------------------------------------- resumable state
def trainer_tensors(trainer: Trainer) -> dict[str, Tensor]:
    """Every tensor a resumed run needs (clouds and fields of all identities, universal fields, EMA, lip head);
    among several processes, of this process's identities (keyed by their index among all)."""
    out: dict[str, Tensor] = {}
    for k, ident in zip(trainer.id_index, trainer.ids):
        h = ident.head
        for name, cloud in (("face", h.face), ("mouth", h.mouth)):
            out.update({f"id{k}.{name}.{n}": v for n, v in cloud.state_tensors().items()})
        for name, module in (("face_personal", h.face_personal), ("mouth_personal", h.mouth_personal)):
            out.update({f"id{k}.{name}.{n}": v for n, v in module.state_dict().items()})
    h0 = trainer.ids[0].head
    out.update({f"face_field.{n}": v for n, v in h0.face_field.state_dict().items()})
    out.update({f"mouth_field.{n}": v for n, v in h0.mouth_field.state_dict().items()})
    if trainer.ema is not None:
        out.update({f"ema.{n}": v for n, v in trainer.ema.state_dict().items()})
    if trainer.lip_head is not None:
        out.update({f"lip_head.{n}": v for n, v in trainer.lip_head.state_dict().items()})
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def trainer_optim_state(trainer: Trainer) -> dict:
    state = {"seen": [i.seen for i in trainer.all_ids]}  # the peers' counts are their owners' to give
    for k, ident in zip(trainer.id_index, trainer.ids):
        state[f"gauss{k}"] = ident.gauss_opt.state_dict()
        state[f"personal{k}"] = ident.personal_opt.state_dict()
    if trainer.universal_opt is not None:
        state["universal"] = trainer.universal_opt.state_dict()
        state["scheduler"] = trainer.scheduler.state_dict()
    return state


def restore_models(identities: list[Identity], tensors: dict[str, Tensor], device: torch.device, lip_head: nn.Module | None = None) -> dict | None:
    """Load model tensors written by :func:`trainer_tensors` into ``identities`` (clouds are rebuilt,
    so call before creating the :class:`Trainer`). Returns the EMA state, if any."""
    from instag.model.gaussians import GaussianCloud

    def sub(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    if len(sub(f"id{len(identities)}.")) or not sub(f"id{len(identities) - 1}."):
        raise InstagError("the checkpoint was written for a different set of identities; delete it or pass the same clips")
    for k, ident in enumerate(identities):
        h = ident.head
        h.face = GaussianCloud.from_state_tensors(sub(f"id{k}.face.")).to(device)
        h.mouth = GaussianCloud.from_state_tensors(sub(f"id{k}.mouth.")).to(device)
        h.face_personal.load_state_dict(sub(f"id{k}.face_personal."))
        h.mouth_personal.load_state_dict(sub(f"id{k}.mouth_personal."))
    h0 = identities[0].head
    h0.face_field.load_state_dict(sub("face_field."))
    h0.mouth_field.load_state_dict(sub("mouth_field."))
    if lip_head is not None and sub("lip_head."):
        lip_head.load_state_dict(sub("lip_head."))
    ema = sub("ema.")
    return ema or None


def load_optim_state(trainer: Trainer, state: dict, ema: dict | None) -> None:
    for k, ident in zip(trainer.id_index, trainer.ids):
        ident.gauss_opt.load_state_dict(state[f"gauss{k}"])
        ident.personal_opt.load_state_dict(state[f"personal{k}"])
        ident.seen = int(state["seen"][k])
    if trainer.universal_opt is not None and "universal" in state:
        trainer.universal_opt.load_state_dict(state["universal"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        sched = trainer.scheduler  # this run's rates: a run with another process count saved its own
        for g, base, factor in zip(trainer.universal_opt.param_groups, sched.base_lrs, sched.lr_lambdas):
            g["lr"] = base * factor(sched.last_epoch)
    if trainer.ema is not None and ema:
        trainer.ema.load_state_dict(ema)
