"""``instag adapt``: motion-aligned adaptation to a new identity (face, mouth, fuse), then evaluation.

Starts the universal fields from ``--pretrain_path`` (the EMA fields of ``instag pretrain``),
fits new clouds and the motion aligners on the first ``--N_views`` training frames, and writes
``<model_path>/chkpnt_{face,mouth,fuse}_latest.{safetensors,json}`` (the fused one is what
synthesis loads). Each stage resumes from its own state with ``--resume``; a finished stage is
skipped. Afterwards the validation split is rendered and scored (``instag evaluate``).

While adapting, every ``--val_every`` steps a few held-out frames are scored and sampled
(:mod:`instag.train.validation`: metrics in ``adapt_log.json`` and TensorBoard, grids under
``<model_path>/val/``); with ``--early_stop P`` a stage ends after P checks without a better score
and its product is its best-scoring checkpoint (the last weights stay in ``chkpnt_<stage>_final``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from instag.audio.registry import EXTRACTORS as AUDIO_EXTRACTORS
from instag.config import parse
from instag.errors import InstagError
from instag.train.config import StageConfig, stage_config, stage_list

if TYPE_CHECKING:  # torch loads in the functions that use it, so that `instag adapt --help` answers at once
    import torch

    from instag.model.talking_head import TalkingHead
    from instag.train.validation import ValidationSet, Validator

EXTRACTORS = tuple(AUDIO_EXTRACTORS)
PRESETS = {
    "upstream": {"face": 10_000, "mouth": 10_000, "fuse": 2_000, "max_side": 0, "face_init": 2000, "mouth_init": 5000,
                 "val_every": 1000},
    "default": {"face": 2_000, "mouth": 1_500, "fuse": 500, "max_side": 0, "face_init": 2000, "mouth_init": 5000,
                "val_every": 250},
    "tiny": {"face": 200, "mouth": 120, "fuse": 40, "max_side": 128, "face_init": 400, "mouth_init": 400, "val_every": 0},
    # the README's CPU recipe: tiny's 128-pixel images, long enough for a recognisable head (about 4 min on 2 cores)
    "cpu": {"face": 1500, "mouth": 500, "fuse": 150, "max_side": 128, "face_init": 400, "mouth_init": 400, "val_every": 0},
}
STAGE_ORDER = ("face", "mouth", "fuse")


@dataclass
class AdaptConfig:
    """Motion-aligned adaptation of the pre-trained fields to a new identity, then evaluation."""

    source_path: str = field(metadata={"flags": ("-S", "-s"), "help": "processed clip data/<ID>"})
    model_path: str = field(metadata={"flags": ("-M", "-m"), "help": "output folder output/<ID>"})
    pretrain_path: str = field(default="output/pretrain_model", metadata={"help": "pre-training folder (or one of its checkpoint files)"})
    audio_extractor: str | None = field(default=None, metadata={"choices": EXTRACTORS, "help": "default: the one recorded in the pre-trained checkpoint"})
    N_views: int = field(default=-1, metadata={"min": 1, "special": (-1,), "help": "use the first N training frames (250 = 10 s); -1 = all"})
    long: bool = field(default=False, metadata={"help": "long-video recipe: no geometry priors, no opacity reset, SH degree 2"})
    all_for_train: bool = field(default=False, metadata={"help": "also train on the validation frames (metrics become meaningless)"})
    preset: str = field(default="default", metadata={"choices": tuple(PRESETS), "help": "recipe size: default (fast), upstream (10k/10k/2k), tiny (CI), cpu (the README's CPU recipe)"})
    iterations: int = field(default=0, metadata={"min": 0, "help": "face-stage iterations (0 = preset)"})
    mouth_iterations: int = field(default=0, metadata={"min": 0, "help": "mouth-stage iterations (0 = preset)"})
    fuse_iterations: int = field(default=0, metadata={"min": 0, "help": "fuse-stage iterations (0 = preset)"})
    stages: str = field(default="face,mouth,fuse", metadata={"help": "comma list of the stages to run, of face, mouth, fuse"})
    lip_motion: float = field(default=-1.0, metadata={"min": 0, "special": (-1,), "help": "weight of the landmark-guided lip motion loss in the face stage (0 disables; -1 = recipe)"})
    densify_grad_threshold: float = field(default=-1.0, metadata={"above": 0, "special": (-1,), "help": "face-stage densification threshold (mean screen-space gradient; -1 = recipe)"})
    max_side: int = field(default=-1, metadata={"min": 16, "special": (0, -1), "help": "train at this longer image side (0 = native, -1 = preset)"})
    resume: bool = field(default=False, metadata={"help": "continue stopped stages from their last checkpoints"})
    stop_after: float = field(default=0.0, metadata={"min": 0, "help": "save and stop after this many seconds (0 = run to the end)"})
    checkpoint_seconds: float = field(default=90.0, metadata={"min": 0, "help": "save a resumable checkpoint at least this often (seconds; 0 = after every step)"})
    evaluate: bool = field(default=True, metadata={"help": "render and score the validation split afterwards"})
    val_every: int = field(default=-1, metadata={"min": 0, "special": (-1,), "help": "score held-out frames every N steps of each stage and at its end (0 = off; -1 = preset: 250, upstream 1000, tiny and cpu off)"})
    val_frames: int = field(default=50, metadata={"min": 1, "help": "frames scored at each check: the first of the validation split (the last training frames with --all_for_train)"})
    early_stop: int = field(default=0, metadata={"min": 0, "help": "end a stage after this many checks without a better validation score and keep its best checkpoint (0 = off)"})
    dilate: bool = field(default=True, metadata={"help": "dilate the mouth alpha 13x13 before compositing the evaluation renders"})
    device: str = field(default="auto", metadata={"help": "cuda, cpu or auto"})
    workers: int = field(default=-1, metadata={"min": -1, "help": "data-loader workers (-1 = auto)"})
    seed: int = field(default=0, metadata={"min": 0, "max": 2**32 - 1, "help": "random seed"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars"})


def _extractor(cfg: AdaptConfig) -> str:
    from instag.train.checkpoint import check_extractor, pretrained_extractor, resolve_pretrain_dir, universal_stem

    recorded = pretrained_extractor(cfg.pretrain_path)
    if recorded is None:
        folder = resolve_pretrain_dir(cfg.pretrain_path)
        raise InstagError(f"no pre-trained checkpoint {folder / (universal_stem('face') + '.safetensors')}; pre-train "
                          f"first (instag pretrain -S data/pretrain -M {folder}, data/pretrain holding processed clips of "
                          "other people) or give --pretrain_path the pre-training folder")
    check_extractor({"audio_extractor": recorded}, cfg.audio_extractor, resolve_pretrain_dir(cfg.pretrain_path))
    return recorded


def stage_recipe(cfg: AdaptConfig, stage: str, iterations: int, few_shot: bool) -> StageConfig:
    """The recipe of one adaptation stage with the command line's overrides applied."""
    scfg = stage_config(stage, "adapt", iterations, long=cfg.long)
    if stage != "face":
        return scfg
    scfg = scfg.replace(priors_from=scfg.priors_from if few_shot else 1 << 30)
    if cfg.lip_motion >= 0:
        scfg = scfg.replace(lip_motion=cfg.lip_motion)
    if cfg.densify_grad_threshold > 0:
        scfg = scfg.replace(densify_grad_threshold=cfg.densify_grad_threshold)
    return scfg


def _load_head(folder: Path, stem: str, device: torch.device) -> TalkingHead:
    from instag.model.talking_head import TalkingHead, load_tensors
    from instag.train.checkpoint import fitting

    path = folder / f"{stem}.safetensors"
    tensors, meta = load_tensors(path)
    with fitting(path, "delete it and run its stage again"):
        return TalkingHead.from_state(tensors, meta).to(device)


def adapt(cfg: AdaptConfig, log=print) -> int:
    """Run the stages of ``cfg``; a refused run leaves no output folder of its own making behind."""
    out = Path(cfg.model_path).absolute()
    missing = [p for p in (out, *out.parents) if not p.exists()]  # innermost first: what this run may create
    try:
        return _adapt(cfg, log)
    except BaseException:
        for folder in missing:
            if not folder.is_dir() or any(folder.iterdir()):
                break
            folder.rmdir()
        raise


def _adapt(cfg: AdaptConfig, log) -> int:
    from instag.audio.registry import get_extractor
    from instag.data.dataset import load_clip, merge_clips
    from instag.io.atomic import remove_stale_temporaries
    from instag.train.run import pick_device, pick_workers, set_seed
    from instag.train.validation import ValidationSet

    t_start = time.time()
    stages = stage_list(cfg.stages, STAGE_ORDER)
    preset = PRESETS[cfg.preset]
    device = pick_device(cfg.device)
    workers = pick_workers(cfg.workers, device)
    set_seed(cfg.seed)
    extractor = _extractor(cfg)
    out = Path(cfg.model_path)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # left by a run killed mid-write
    item_shape = tuple(get_extractor(extractor).item_shape)
    max_side = preset["max_side"] if cfg.max_side < 0 else cfg.max_side
    few_shot = not cfg.long and cfg.N_views > 0
    clip = load_clip(cfg.source_path, "train", extractor, n_views=cfg.N_views, max_side=max_side or None, with_priors=few_shot)
    if cfg.all_for_train:
        clip = merge_clips(clip, load_clip(cfg.source_path, "val", extractor, max_side=max_side or None, with_priors=few_shot))
    log(f"instag adapt: {clip.name}: {len(clip)} training frames at {clip.size[1]}x{clip.size[0]}, {extractor} features, device {device}")
    iters = {s: getattr(cfg, "iterations" if s == "face" else f"{s}_iterations") or preset[s] for s in STAGE_ORDER}
    val_every = preset["val_every"] if cfg.val_every < 0 else cfg.val_every
    if cfg.early_stop > 0 and val_every <= 0:
        raise InstagError("--early_stop needs validation: give --val_every N (N > 0)")
    vset = None
    if val_every > 0:
        vset = ValidationSet.for_adaptation(cfg.source_path, clip, extractor, max_side or None, cfg.val_frames,
                                            cfg.all_for_train, device)
        log(f"instag adapt: validating every {val_every} steps on {vset.source}"
            + (f"; early stop after {cfg.early_stop} checks without improvement" if cfg.early_stop > 0 else ""))
        if vset.note:
            log(f"instag adapt: note: {vset.note}")
    try:
        return _run_stages(cfg, clip, extractor, item_shape, iters, stages, _checkpoint_meta(cfg, extractor, item_shape),
                           few_shot, device, workers, t_start, val_every, vset, log)
    finally:
        if vset is not None:
            vset.close()


def _checkpoint_meta(cfg: AdaptConfig, extractor: str, item_shape: tuple) -> dict:
    """What every checkpoint of the run records about it."""
    from instag.audio.registry import feature_definition
    from instag.model.talking_head import source_clip

    return {"audio_extractor": extractor, "audio_features": feature_definition(extractor), "item_shape": list(item_shape),
            "source_path": str(cfg.source_path), "source_clip": source_clip(cfg.source_path), "N_views": cfg.N_views,
            "long": cfg.long, "preset": cfg.preset, "pretrain_path": str(cfg.pretrain_path)}


def _run_stages(cfg: AdaptConfig, clip, extractor: str, item_shape: tuple, iters: dict, stages: list[str], meta: dict,
                few_shot: bool, device: torch.device, workers: int, t_start: float, val_every: int,
                vset: ValidationSet | None, log) -> int:
    import torch

    from instag.io.atomic import write_json
    from instag.model.talking_head import TalkingHead
    from instag.train.checkpoint import load_universal
    from instag.train.engine import Identity
    from instag.train.run import (
        INCOMPLETE,
        earlier_stages,
        remaining_seconds,
        run_stage,
        stage_done,
        stage_entry,
        stopped,
    )
    from instag.train.validation import Validator, progress_video

    out = Path(cfg.model_path)
    preset = PRESETS[cfg.preset]
    # a resumed run keeps the finished stages and earlier pieces on record
    summary: dict = {"clip": clip.name, "frames": len(clip),
                     "stages": earlier_stages(out / "adapt_log.json", cfg.resume, clip=clip.name, frames=len(clip))}
    head: TalkingHead | None = None
    previous = None
    for stage in STAGE_ORDER:
        scfg = stage_recipe(cfg, stage, iters[stage], few_shot)
        product = f"chkpnt_{stage}_latest"
        if stage not in stages or (cfg.resume and stage_done(out, product, scfg.iterations)):
            if stage in stages:
                log(f"instag adapt: {stage} stage already complete in {out}")
            previous = product
            head = None
            continue
        if previous is not None and head is None:
            if not stage_done(out, previous, iters[previous.split("_")[1]]):
                raise InstagError(f"{out / (previous + '.safetensors')} is missing or unfinished; run the earlier stages first")
            head = _load_head(out, previous, device)
        if head is None:
            gen = torch.Generator().manual_seed(cfg.seed)
            head = TalkingHead.create(extractor, item_shape, preset["face_init"], preset["mouth_init"], scfg.sh_degree, generator=gen)
            load_universal(cfg.pretrain_path, "face", head.face_field, extractor)
            load_universal(cfg.pretrain_path, "mouth", head.mouth_field, extractor)
        identity = Identity(clip, head)
        validator = None
        if vset is not None:
            validator = Validator(vset, stage, f"adapt_{stage}", val_every, cfg.early_stop, out, cfg.dilate)

        def on_save(trainer, it, stage=stage, scfg=scfg, validator=validator):
            save_product(out, stage, trainer.ids[0].head, {**meta, "stage": stage, "iteration": it,
                                                           "iterations": scfg.iterations}, validator)

        result, _ = run_stage(scfg, [identity], device, out, f"train_{stage}", meta, cfg.resume, on_save, workers,
                              remaining_seconds(cfg.stop_after, t_start), cfg.seed, progress=not cfg.quiet,
                              save_seconds=cfg.checkpoint_seconds, validator=validator, stop_on_signal=True)
        head = identity.head
        if result.complete and validator is not None and validator.keep_best:
            head = _load_head(out, product, device)  # the selected checkpoint, which the next stage starts from
        extra = {**validator.summary(), "early_stopped": result.stopped_early} if validator is not None else {}
        summary["stages"][stage] = stage_entry(summary["stages"].get(stage), result, scfg.iterations,
                                               gaussians=[head.face.num_points, head.mouth.num_points], **extra)
        write_json(out / "adapt_log.json", summary)
        if not result.complete or result.stop_signal is not None:
            log(f"instag adapt: stopped (--stop_after): {stopped('instag adapt', cfg, result, stage, scfg.iterations, out)}")
            return INCOMPLETE
        log(f"instag adapt: {stage} stage done in {result.seconds:.1f} s ({head.face.num_points} face / {head.mouth.num_points} mouth Gaussians)"
            + (f"; validation {extra['val_seconds']:.1f} s" if extra else ""))
        if validator is not None and validator.keep_best:
            chosen = validator.selected_iteration(result.iteration)
            how = f"stopped early at iteration {result.iteration}" if result.stopped_early else "ran to its end"
            log(f"instag adapt: {stage} stage {how}; kept the checkpoint of iteration {chosen} (validation score "
                f"{validator.best_score:.3f})")
        previous = product
    if vset is not None:
        video = progress_video(vset, out, list(STAGE_ORDER), device, cfg.dilate)
        if video is not None:
            log(f"instag adapt: validation frames after each stage: {video}")
    if cfg.evaluate and "fuse" in stages:
        evaluate(cfg, device, log)
    return 0


def save_product(out: Path, stage: str, head: TalkingHead, info: dict, validator: Validator | None) -> None:
    """Write the stage's product ``chkpnt_<stage>_latest`` from ``head`` at ``info["iteration"]``. At the stage's end
    with a kept best checkpoint (``--early_stop``) the product holds the best weights instead, and the last ones go
    to ``chkpnt_<stage>_final``."""
    from instag.model.talking_head import TalkingHead

    product, final = f"chkpnt_{stage}_latest", f"chkpnt_{stage}_final"
    it = info["iteration"]
    ended = validator is not None and (it >= info["iterations"] or validator.stopped)
    if not ended:
        head.save(out, product, info)
        return
    info = {**info, "early_stopped": validator.stopped, "selected_iteration": validator.selected_iteration(it)}
    if info["selected_iteration"] == it:
        head.save(out, product, info)
        for path in (out / f"{final}.safetensors", out / f"{final}.json"):  # from an earlier run of the stage
            path.unlink(missing_ok=True)
        return
    head.save(out, final, info)
    best = TalkingHead.from_state(validator.best_tensors, head.meta())
    best.save(out, product, {**info, "selected_score": validator.best_score})


def evaluate(cfg: AdaptConfig, device: torch.device, log=print) -> dict | None:
    """Render and score the validation split through ``instag evaluate``'s path."""
    try:
        from instag.metrics.evaluate import evaluate_model
    except ImportError as err:
        log(f"instag adapt: evaluation skipped ({err})")
        return None
    return evaluate_model(cfg.source_path, cfg.model_path, dilate=cfg.dilate, device=str(device), log=log,
                          progress=not cfg.quiet)



def main(argv: list[str] | None = None) -> int:
    cfg = parse(AdaptConfig, argv, prog="instag adapt")
    t0 = time.time()
    code = adapt(cfg)
    print(f"instag adapt: total {time.time() - t0:.0f} s", file=sys.stderr)
    return code
