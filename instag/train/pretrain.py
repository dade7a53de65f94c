"""``instag pretrain``: identity-free pre-training of the universal face and mouth fields.

``-S data/pretrain`` holds one processed clip per identity (``data/pretrain/<id>/``); every
identity gets its own clouds and personalized fields, all share the universal fields. The face
stage runs first, then the mouth stage (which needs the face clouds for the FM hook). Writes
``<model_path>/chkpnt_ema_{face,mouth}_latest.{safetensors,json}`` (what adaptation starts from)
and resumable state ``train_pretrain_{face,mouth}.*``; ``--resume`` continues a stopped run.

Under ``torchrun --nproc_per_node N`` the identities are trained data-parallel by N processes (one GPU
each, or gloo on the CPU; :mod:`instag.train.distributed`); the files written are the same, and a run
stopped with one N resumes with another.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from instag.audio.registry import EXTRACTORS as AUDIO_EXTRACTORS
from instag.audio.registry import feature_definition
from instag.config import parse
from instag.data.format import DatasetLayout
from instag.errors import InstagError
from instag.train.config import stage_config, stage_list

EXTRACTORS = tuple(AUDIO_EXTRACTORS)
PRESETS = {
    # iterations are global (over all identities)
    "upstream": {"face": 150_000, "mouth": 150_000, "max_side": 0, "face_init": 2000, "mouth_init": 5000},
    "default": {"face": 12_000, "mouth": 8_000, "max_side": 0, "face_init": 2000, "mouth_init": 5000},
    "tiny": {"face": 240, "mouth": 160, "max_side": 128, "face_init": 400, "mouth_init": 400},
}


@dataclass
class PretrainConfig:
    """Identity-free pre-training of the universal motion fields on a folder of processed clips."""

    source_path: str = field(metadata={"flags": ("-S", "-s"), "help": "folder with one processed clip per identity (data/pretrain)"})
    model_path: str = field(default="output/pretrain_model", metadata={"flags": ("-M", "-m"), "help": "output folder"})
    audio_extractor: str = field(default="whisper", metadata={"choices": EXTRACTORS, "help": "audio features to train on"})
    preset: str = field(default="default", metadata={"choices": tuple(PRESETS), "help": "recipe size: default (≤20 GPU-min), upstream (150k+150k), tiny (CI)"})
    iterations: int = field(default=0, metadata={"min": 0, "help": "face-stage iterations (0 = preset)"})
    mouth_iterations: int = field(default=0, metadata={"min": 0, "help": "mouth-stage iterations (0 = preset)"})
    stages: str = field(default="face,mouth", metadata={"help": "comma list of the stages to run, of face, mouth"})
    identities: str = field(default="", metadata={"help": "comma list of identity folders to use (default: all)"})
    share_audio_net: bool = field(default=False, metadata={"help": "personalized fields re-use the universal audio encoder"})
    warmup_per_identity: int = field(default=300, metadata={"min": 0, "help": "static warm-up steps each identity gets at least "
                                                                     "(capped at a third of the stage; 0 = the recipe's fraction only)"})
    lip_aux: float = field(default=-1.0, metadata={"min": 0, "special": (-1,), "help": "weight of the audio->lip-landmark auxiliary loss (0 disables; -1 = recipe)"})
    lip_motion: float = field(default=-1.0, metadata={"min": 0, "special": (-1,), "help": "weight of the landmark-guided lip motion loss (0 disables; -1 = recipe)"})
    max_side: int = field(default=-1, metadata={"min": 16, "special": (0, -1), "help": "train at this longer image side (0 = native, -1 = preset)"})
    resume: bool = field(default=False, metadata={"help": "continue a stopped run from its last checkpoint"})
    stop_after: float = field(default=0.0, metadata={"min": 0, "help": "save and stop after this many seconds (0 = run to the end)"})
    checkpoint_seconds: float = field(default=90.0, metadata={"min": 0, "help": "save a resumable checkpoint at least this often (seconds; 0 = after every step)"})
    device: str = field(default="auto", metadata={"help": "cuda, cpu or auto"})
    workers: int = field(default=-1, metadata={"min": -1, "help": "data-loader workers (-1 = auto)"})
    seed: int = field(default=0, metadata={"min": 0, "max": 2**32 - 1, "help": "random seed"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars"})


def find_identities(root: Path, names: str) -> list[Path]:
    if not root.is_dir():
        raise InstagError(f"pre-training folder {root} does not exist; put one processed clip per identity in {root}/<id>/")
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if wanted:
        dirs = [root / n for n in wanted]
        missing = [str(d) for d in dirs if not DatasetLayout.of(d).transforms("train").exists()]
        if missing:
            raise InstagError(f"identities not processed (no transforms_train.json): {', '.join(missing)}")
        return dirs
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and DatasetLayout.of(d).transforms("train").exists())
    if not dirs:
        raise InstagError(f"no processed clips in {root}: expected {root}/<id>/transforms_train.json; run `instag process` on each clip")
    return dirs


def _all_frames(root: Path, extractor: str, max_side: int | None):
    """Pre-training uses every frame of an identity: its train and (when present) val splits."""
    from instag.data.dataset import load_clip, merge_clips

    clip = load_clip(root, "train", extractor, max_side=max_side)
    if DatasetLayout.of(root).transforms("val").exists():
        try:
            clip = merge_clips(clip, load_clip(root, "val", extractor, max_side=max_side))
        except InstagError:
            pass  # an empty or unreadable val split: train frames only
    return clip


def pretrain(cfg: PretrainConfig, log=print) -> int:
    from instag.train import distributed
    from instag.train.run import INCOMPLETE

    world, device = distributed.start(cfg.device)
    try:
        code = _pretrain(cfg, log if world.is_main else (lambda *a, **k: None), world, device)
    finally:
        distributed.finish(world)
    # torchrun takes any other status than 0 for a failure and stops the other processes at once
    return 0 if world.size > 1 and code == INCOMPLETE else code


def _pretrain(cfg: PretrainConfig, log, world, device) -> int:
    import torch  # here, not at the top, so that `instag pretrain --help` answers without loading it

    from instag.audio.registry import get_extractor
    from instag.io.atomic import remove_stale_temporaries, write_json
    from instag.model.motion import UniversalFaceField, UniversalMouthField
    from instag.model.talking_head import TalkingHead
    from instag.train.checkpoint import fitting, read_checkpoint, save_universal, stem_paths, universal_stem, unprefixed
    from instag.train.engine import Identity, restore_models
    from instag.train.run import (
        INCOMPLETE,
        earlier_stages,
        pick_device,
        pick_workers,
        remaining_seconds,
        run_stage,
        set_seed,
        stage_done,
        stage_entry,
        stopped,
    )

    t_start = time.time()
    stages = stage_list(cfg.stages, ("face", "mouth"))
    preset = PRESETS[cfg.preset]
    device = device or pick_device(cfg.device)
    workers = pick_workers(cfg.workers, device)
    if world.size > 1 and cfg.workers < 0:  # the machine's loader workers are shared by its training processes
        workers = max(1, workers // int(os.environ.get("LOCAL_WORLD_SIZE", world.size)))
    set_seed(cfg.seed)
    out = Path(cfg.model_path)
    out.mkdir(parents=True, exist_ok=True)
    if world.is_main:
        remove_stale_temporaries(out)  # left by a run killed mid-write
    world.barrier()
    item_shape = tuple(get_extractor(cfg.audio_extractor).item_shape)
    max_side = preset["max_side"] if cfg.max_side < 0 else cfg.max_side
    dirs = find_identities(Path(cfg.source_path), cfg.identities)
    if world.size > len(dirs):
        raise InstagError(f"{world.size} training processes for {len(dirs)} identities in {cfg.source_path}: each process "
                          f"trains whole identities; start at most {len(dirs)} (torchrun --nproc_per_node {len(dirs)})")
    clips = [_all_frames(d, cfg.audio_extractor, max_side or None) for d in dirs]
    across = f" x {world.size} processes" if world.size > 1 else ""
    log(f"instag pretrain: {len(clips)} identities, {sum(len(c) for c in clips)} frames, {cfg.audio_extractor} features, "
        f"device {device.type}{across}")
    iters = {"face": cfg.iterations or preset["face"], "mouth": cfg.mouth_iterations or preset["mouth"]}
    overrides = {} if cfg.lip_aux < 0 else {"lip_aux": cfg.lip_aux}
    if cfg.lip_motion >= 0:
        overrides["lip_motion"] = cfg.lip_motion
    meta = {"audio_extractor": cfg.audio_extractor, "audio_features": feature_definition(cfg.audio_extractor),
            "item_shape": list(item_shape), "share_audio": cfg.share_audio_net, "preset": cfg.preset}
    gen = torch.Generator().manual_seed(cfg.seed)
    face_field, mouth_field = UniversalFaceField(item_shape), UniversalMouthField(item_shape)
    identities = []
    for clip in clips:
        scfg = stage_config("face", "pretrain", iters["face"])
        head = TalkingHead.create(cfg.audio_extractor, item_shape, preset["face_init"], preset["mouth_init"], scfg.sh_degree,
                                  face_field, mouth_field, cfg.share_audio_net, gen)
        head.align = False
        identities.append(Identity(clip, head))
    if world.size > 1:  # every process built every identity alike; from here on each draws its own numbers
        set_seed(cfg.seed + world.rank)
    timings = {}
    names = [c.name for c in clips]
    # a resumed run keeps the finished stages and earlier pieces on record
    summary: dict = {"identities": names, "stages": earlier_stages(out / "pretrain_log.json", cfg.resume, identities=names)}
    for stage in ("face", "mouth"):
        if stage not in stages:
            continue
        scfg = static_warmup(stage_config(stage, "pretrain", iters[stage], **overrides), len(identities), cfg.warmup_per_identity)
        stem = f"train_pretrain_{stage}"
        if stage == "mouth":
            if not stage_done(out, "train_pretrain_face", iters["face"]):
                raise InstagError(f"the face stage in {out} is not finished; run the face stage first (--stages face,mouth --resume)")
            if not (cfg.resume and (out / f"{stem}.safetensors").exists()):
                tensors, _, _ = read_checkpoint(out, "train_pretrain_face")
                with fitting(stem_paths(out, "train_pretrain_face")[0], "run the face stage again (delete it)"):
                    restore_models(identities, tensors, torch.device("cpu"))
                ema = unprefixed("ema.", tensors)
                if ema:  # the hook uses the EMA face field, as adaptation will
                    face_field.load_state_dict(ema)
        elif cfg.resume and stage_done(out, stem, scfg.iterations) and stage_done(out, universal_stem(stage), scfg.iterations):
            log(f"instag pretrain: face stage already complete in {out}")
            continue

        def on_save(trainer, it, stage=stage, scfg=scfg):
            ema = trainer.ema.state_dict() if trainer.ema is not None else trainer.universal.state_dict()
            save_universal(out, stage, ema, {**meta, "iteration": it, "iterations": scfg.iterations})

        result, _ = run_stage(scfg, identities, device, out, stem, meta, cfg.resume, on_save, workers,
                              remaining_seconds(cfg.stop_after, t_start), cfg.seed, progress=not cfg.quiet,
                              save_seconds=cfg.checkpoint_seconds, world=world, stop_on_signal=True)
        timings[stage] = result.seconds
        summary["stages"][stage] = stage_entry(summary["stages"].get(stage), result, scfg.iterations)
        if world.is_main:
            write_json(out / "pretrain_log.json", summary)
        world.barrier()  # the next stage reads what the first process wrote
        if not result.complete or result.stop_signal is not None:
            note = stopped("instag pretrain", cfg, result, stage, scfg.iterations, out, world)
            log(f"instag pretrain: stopped (--stop_after) after {result.seconds:.0f} s: {note}")
            return INCOMPLETE
        log(f"instag pretrain: {stage} stage done ({scfg.iterations} iterations, {result.seconds:.0f} s)")
    log(f"instag pretrain: wrote {out}/chkpnt_ema_face_latest.safetensors and chkpnt_ema_mouth_latest.safetensors "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())})")
    return 0



def static_warmup(scfg, num_identities: int, per_identity: int):
    """The stage config with its static warm-up raised so that each identity's clouds get at least
    ``per_identity`` static steps (capped at a third of the stage).

    Upstream warms up 5 000 of 150 000 steps over 5 identities: 1 000 static steps per cloud before any
    motion. Scaled as a fraction, a short run over many identities leaves each cloud a handful of static
    steps (5 000 steps over 30 identities: 5.6), so motion starts on unfitted clouds and the universal
    fields learn large per-position shape corrections instead of audio-driven motion.
    """
    floor = min(scfg.iterations // 3, max(0, per_identity) * max(1, num_identities))
    if floor <= scfg.warmup:
        return scfg
    kw = {"warmup": floor}
    if scfg.stage == "face":
        kw["hair_from"] = max(scfg.hair_from, floor)
    return scfg.replace(**kw)


def main(argv: list[str] | None = None) -> int:
    cfg = parse(PretrainConfig, argv, prog="instag pretrain")
    t0 = time.time()
    code = pretrain(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # the first of several processes speaks for all
        print(f"instag pretrain: total {time.time() - t0:.0f} s", file=sys.stderr)
    return code
