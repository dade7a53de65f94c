"""Running one stage with checkpoints and resume (shared by ``instag pretrain`` and ``instag adapt``)."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from instag.errors import InstagError
from instag.model.audio_encoder import LipHead
from instag.train.checkpoint import fitting, read_checkpoint, stem_paths, write_checkpoint
from instag.train.config import StageConfig
from instag.train.distributed import SINGLE, World
from instag.train.engine import (
    Identity,
    StepLog,
    Trainer,
    load_optim_state,
    restore_models,
    trainer_optim_state,
    trainer_tensors,
)

if TYPE_CHECKING:
    from instag.train.validation import Validator

LIP_TARGET_DIM = 80
INCOMPLETE = 3  # exit code: stopped by --stop_after, resume with --resume


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InstagError(f"--device {name} asked for CUDA but no CUDA GPU is visible; use --device cpu")
    return dev


def pick_workers(requested: int, device: torch.device) -> int:
    if requested >= 0:
        return requested
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 2))


def set_seed(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Logger:
    """Progress lines to stderr and, when ``torch.utils.tensorboard`` imports, TensorBoard scalars."""

    def __init__(self, folder: Path, tag: str, tensorboard: bool = True):
        self.tag = tag
        self.writer = None
        if tensorboard:  # False in all but the first of several training processes
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(folder / "tb"))
            except Exception:  # tensorboard is optional
                self.writer = None
        self.history: list[tuple[int, float]] = []
        self.photo_history: list[tuple[int, float]] = []  # the photometric part alone (L1 + D-SSIM)

    def __call__(self, log: StepLog) -> None:
        self.history.append((log.iteration, log.loss))
        if "photo" in log.parts:
            self.photo_history.append((log.iteration, log.parts["photo"]))
        if self.writer is not None:
            self.writer.add_scalar(f"{self.tag}/loss", log.loss, log.iteration)
            for k, v in log.parts.items():
                self.writer.add_scalar(f"{self.tag}/{k}", v, log.iteration)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class StageResult:
    iteration: int
    complete: bool
    seconds: float
    history: list[tuple[int, float]]
    start: int = 0  # the iteration this piece resumed from (0: a fresh run)
    photo_history: list[tuple[int, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stopped_early: bool = False  # ended by --early_stop before its last iteration (complete all the same)
    stop_signal: int | None = None  # SIGINT/SIGTERM that stopped the stage after saving (Trainer.run)


def earlier_stages(path: Path, resume: bool, **same) -> dict:
    """The stage entries of the training log ``path`` that a resumed run continues, when the log's values of
    ``same`` (e.g. ``clip=..., frames=...``) match this run; ``{}`` for a fresh run or an unreadable file."""
    if not (resume and path.exists()):
        return {}
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(old, dict) or any(old.get(k) != v for k, v in same.items()):
        return {}
    return dict(old.get("stages") or {})


def stage_entry(previous: dict | None, result: StageResult, iterations: int, **extra) -> dict:
    """A stage's entry in the training log. A piece resumed from a stop adds to what the earlier
    pieces recorded: seconds summed, loss histories joined, ``pieces`` counted."""
    histories = {"loss_history": list(result.history), "photo_history": list(result.photo_history)}
    seconds, pieces = result.seconds, 1
    if result.start > 0 and previous and previous.get("iterations") == iterations:
        seconds += float(previous.get("seconds") or 0.0)
        for key, new in histories.items():
            histories[key] = [h for h in previous.get(key, []) if h[0] <= result.start] + new
        pieces = int(previous.get("pieces", 1)) + 1
    entry = {"iterations": iterations, "reached": result.iteration, "seconds": round(seconds, 1), "pieces": pieces,
             **extra, **histories}
    if result.notes:
        entry["notes"] = list(result.notes)
    return entry


def stage_done(folder: Path, stem: str, total: int) -> bool:
    """Whether ``<stem>.json`` records a finished run of ``total`` iterations (reached, or ended early by
    ``--early_stop``)."""
    j = stem_paths(folder, stem)[1]
    if not j.exists():
        return False
    try:
        meta = json.loads(j.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    reached = int(meta.get("iteration", -1)) >= total or bool(meta.get("early_stopped"))
    return reached and int(meta.get("iterations", -1)) == total


def run_stage(
    cfg: StageConfig,
    identities: list[Identity],
    device: torch.device,
    folder: Path,
    state_stem: str,
    meta: dict,
    resume: bool,
    on_save,
    workers: int,
    stop_after: float | None,
    seed: int,
    progress: bool = True,
    save_seconds: float = 90.0,
    validator: Validator | None = None,
    world: World = SINGLE,
    stop_on_signal: bool = False,
) -> tuple[StageResult, Trainer]:
    """Run (or resume) one stage; ``on_save(trainer, it)`` writes the stage's products after each state save.

    With ``stop_on_signal`` a SIGINT or SIGTERM saves the state (and products) at the end of the step under way
    and ends the stage: the result's ``stop_signal`` says which, for the caller to stop the command after it
    recorded the stage (see :func:`stopped`).

    With a ``validator`` the stage is scored on held-out frames on its schedule; its state (history, best
    score, the best weights when it keeps them) is saved with the training state and restored on resume,
    and a stage it ended early counts as finished.

    Among several processes (``world``) each trains its shard of ``identities``; the first process gathers
    and writes the checkpoints and calls ``on_save``, and its result holds every process's loss log."""
    folder.mkdir(parents=True, exist_ok=True)
    lip_head = LipHead(LIP_TARGET_DIM) if cfg.lip_aux > 0 else None
    start = 0
    ended = False  # the resumed state had finished the stage (its last iteration, or an early stop)
    optim = ema = None
    t_path = stem_paths(folder, state_stem)[0]
    if resume and t_path.exists():
        tensors, old_meta, optim = read_checkpoint(folder, state_stem, with_optim=True)
        if old_meta.get("audio_extractor") != meta.get("audio_extractor"):
            raise InstagError(f"{t_path} was trained with the {old_meta.get('audio_extractor')!r} extractor, not "
                              f"{meta.get('audio_extractor')!r}; resume with the same --audio_extractor or delete it")
        if int(old_meta.get("iterations", -1)) != cfg.iterations:
            raise InstagError(f"{t_path} belongs to a run of {old_meta.get('iterations')} iterations, not {cfg.iterations}; "
                              "resume with the same --iterations/--preset or delete it")
        with fitting(t_path, "resume with the same clips and settings, or delete it to start the stage afresh"):
            ema = restore_models(identities, tensors, device, lip_head)
        start = int(old_meta["iteration"])
        ended = start >= cfg.iterations or bool(old_meta.get("early_stopped"))
        if old_meta.get("early_stopped") and validator is None:
            raise InstagError(f"{t_path} ended its stage early (--early_stop) and keeps its best weights for it; resume "
                              "with the same --val_every and --early_stop, or delete it")
        if validator is not None:
            validator.restore(old_meta.get("validation"), tensors)
        if world.is_main:
            print(f"instag: resuming {cfg.mode} {cfg.stage} from iteration {start} ({t_path})", file=sys.stderr)
    elif t_path.exists() and not resume and world.is_main:
        print(f"instag: {t_path} exists; starting {cfg.mode} {cfg.stage} afresh (pass --resume to continue it)", file=sys.stderr)
    for ident in identities:
        ident.head.to(device)
    logger = Logger(folder, f"{cfg.mode}_{cfg.stage}", tensorboard=world.is_main)
    trainer = Trainer(cfg, identities, device, lip_head=lip_head, num_workers=workers, seed=seed, log=logger, world=world)
    if optim is not None:
        with fitting(stem_paths(folder, state_stem)[2], "delete it and the stage's checkpoint to start it afresh"):
            load_optim_state(trainer, optim, ema)
    if cfg.note:  # on stdout: what the recipe leaves out is no error
        trainer.notes.append(cfg.note)
        if world.is_main and not ended:
            print(f"instag: {cfg.mode} {cfg.stage}: {cfg.note}", flush=True)
    if validator is not None:
        validator.begin(start, logger.writer)

    def save(it: int) -> str:
        m = {**meta, "format": "instag-train-state", "stage": cfg.stage, "mode": cfg.mode, "iteration": it,
             "iterations": cfg.iterations, "identities": [i.clip.name for i in identities], "config": cfg.to_dict()}
        tensors = trainer_tensors(trainer)
        if validator is not None:
            m.update(validation=validator.state(), early_stopped=validator.stopped)
            tensors.update(validator.tensors())
        gathered = world.gather_state(trainer.id_index, tensors, trainer_optim_state(trainer))
        if gathered is None:
            return "written by the first process"
        tensors, optim_state = gathered
        path = write_checkpoint(folder, state_stem, tensors, m, optim_state)
        on_save(trainer, it)
        return str(path)

    t0 = time.time()
    if ended:
        # killed after the stage's last state was written but maybe before its products were:
        # write them again from that state, so the next stage reads the finished stage
        if world.is_main:
            on_save(trainer, start)
        logger.close()
        how = f"its last iteration ({start})" if start >= cfg.iterations else f"its early stop (iteration {start})"
        if world.is_main:
            print(f"instag: {cfg.mode} {cfg.stage} had reached {how}; wrote its products again", file=sys.stderr)
        return StageResult(start, True, 0.0, logger.history, start, logger.photo_history, trainer.notes,
                           start < cfg.iterations), trainer
    last = trainer.run(start, save=save, save_seconds=save_seconds, stop_after_seconds=stop_after, progress=progress,
                       validate=None if validator is None else (lambda it: validator.check(trainer, it)),
                       validate_every=0 if validator is None else validator.every, stop_on_signal=stop_on_signal)
    logger.close()
    done = max(1, last - start)
    checks = "" if validator is None else f", validation {validator.seconds:.1f} s ({validator.checks} checks)"
    history, photo_history = world.merge_log(logger.history), world.merge_log(logger.photo_history)
    if world.is_main:
        rounds = -(-done // world.size)  # = steps in one process
        unit, across = ("step", "") if world.size == 1 else ("round", f" in {rounds} rounds of {world.size} processes")
        print(f"instag: {cfg.mode} {cfg.stage}: {done} steps{across}, {1000 * trainer.time_step / rounds:.1f} ms/{unit} "
              f"compute, {1000 * trainer.time_data / rounds:.1f} ms/{unit} waiting for data{checks}", file=sys.stderr)
    stopped_early = validator is not None and validator.stopped
    return StageResult(last, last >= cfg.iterations or stopped_early, time.time() - t0, history, start,
                       photo_history, trainer.notes, stopped_early, trainer.stop_signal), trainer


def stopped(prog: str, cfg, result: StageResult, stage: str, total: int, folder: Path, world: World = SINGLE) -> str:
    """What a command says when a stage did not run to its end (``--stop_after``, or a signal): where it stopped,
    and the command that continues it. For a signal it raises the stop (:func:`instag.train.engine.stop_exception`)
    with that as the CLI's last line; for ``--stop_after`` it returns it."""
    from instag.config import command_line
    from instag.train.engine import stop_exception

    note = (f"saved {stage} iteration {result.iteration}/{total} in {folder}; continue with: "
            f"{command_line(prog, cfg, resume=True)}")
    if result.stop_signal is not None:
        raise stop_exception(result.stop_signal, note if world.is_main else "")
    return note


def remaining_seconds(stop_after: float, t_start: float) -> float | None:
    """``--stop_after`` is one deadline for the whole command, shared by its stages (None: no deadline)."""
    return max(1e-3, stop_after - (time.time() - t_start)) if stop_after > 0 else None
