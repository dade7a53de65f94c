"""``instag refine -S data/<ID> -M output/<ID> --add data/<ID>_more ...``: guarded continual adaptation.

1. The model folder's versions (:mod:`instag.train.versions`) are started if needed (its checkpoint is ``v1``),
   with the fixed validation set: the validation split of ``-S`` (it must not change between refines).
2. A new version continues adaptation from the current one: the adaptation stages (face, mouth, fuse: the
   recipe of ``instag adapt``, at the size of the preset the model was adapted with, or ``--preset``) run on each
   added processed clip in turn, every frame of it
   (its train and val splits: the validation set is ``-S``'s); it is written to ``versions/<vN>/`` (staged in a
   hidden folder until complete, so a killed run leaves no half version).
3. Both versions are scored on the same validation set (:func:`instag.metrics.evaluate.evaluate_model`: PSNR,
   SSIM, LMD, mouth-opening correlation) and on the speech of the logged sessions (``logs/audio``, the
   opening–loudness correlation of each version's predicted lip opening, :mod:`instag.infer.sessionlog`).
4. The new version is promoted (its checkpoint becomes the model folder's) only when it is not worse on any of
   them beyond the tolerances: PSNR by more than ``--psnr_tolerance`` dB, SSIM by more than ``--ssim_tolerance``,
   LMD by more than ``--lmd_tolerance`` px, mouth-opening correlation or logged sync score by more than
   ``--lip_tolerance``; a metric missing for either version (no face found, no logged speech) is not compared.
   Every validation frame is scored, but a correlation over few frames is mostly noise (12 frames move it by 0.2
   between versions that differ by chance): the mouth-opening correlation's tolerance is at least twice the spread
   of its difference between the two versions over :data:`BOOTSTRAP` resamplings of the scored frames
   (:func:`correlation_noise`), and the output says which tolerance was used, and so which margin decided.
   Otherwise it stays in ``versions/`` with its scores and the reason, and the current version keeps serving.

``instag versions output/<ID>`` lists the versions; ``instag versions output/<ID> --rollback v1`` goes back.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from instag.audio.registry import feature_definition
from instag.config import parse
from instag.data.format import DatasetLayout
from instag.errors import InstagError

STAGE_ORDER = ("face", "mouth", "fuse")
BOOTSTRAP = 1000  # resamplings of the scored frames that measure the noise of the mouth-opening correlation
NOISE_SIGMAS = 2.0  # the mouth-opening correlation's tolerance is at least this many spreads of its difference


@dataclass
class RefineConfig:
    """Continue adaptation on more footage of the same person; promote the new version only if it is not worse."""

    source_path: str = field(metadata={"flags": ("-S", "-s"), "help": "the processed clip the model was adapted on (its validation split scores every version)"})
    model_path: str = field(metadata={"flags": ("-M", "-m"), "help": "trained model folder output/<ID>"})
    add: list[str] = field(metadata={"help": "processed clips of more footage of the same person (instag process)"})
    preset: str | None = field(default=None, metadata={
        "choices": ("default", "upstream", "tiny", "cpu"),
        "help": "stage lengths, as instag adapt's presets (default: the preset the model was adapted with)"})
    iterations: int = field(default=0, metadata={"min": 0, "help": "face-stage iterations per added clip (0 = preset)"})
    mouth_iterations: int = field(default=0, metadata={"min": 0, "help": "mouth-stage iterations per added clip (0 = preset)"})
    fuse_iterations: int = field(default=0, metadata={"min": 0, "help": "fuse-stage iterations per added clip (0 = preset)"})
    stages: str = field(default="face,mouth,fuse", metadata={"help": "comma list of the stages to continue"})
    max_side: int = field(default=-1, metadata={"min": 16, "special": (0, -1), "help": "train at this longer image side (0 = native, -1 = preset)"})
    logged_audio: int = field(default=8, metadata={"min": 0, "help": "score on at most this many of the latest logged speeches (0 = none)"})
    psnr_tolerance: float = field(default=0.1, metadata={"help": "largest PSNR drop (dB) still counted as not worse; negative: the gain required"})
    ssim_tolerance: float = field(default=0.002, metadata={"help": "largest SSIM drop still counted as not worse; negative: the gain required"})
    lmd_tolerance: float = field(default=0.05, metadata={"help": "largest LMD rise (px at 512) still counted as not worse; negative: the gain required"})
    lip_tolerance: float = field(default=0.02, metadata={"help": "largest drop of mouth-opening correlation or logged sync score"})
    dilate: bool = field(default=True, metadata={"help": "dilate the mouth alpha 13x13 in the evaluation renders (as adapt)"})
    device: str = field(default="auto", metadata={"help": "cuda, cpu or auto"})
    seed: int = field(default=0, metadata={"min": 0, "max": 2**32 - 1, "help": "random seed"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars"})


# ---------------------------------------------------------------------------------------- scoring
def logged_sync(model_path: str | Path, version_dir: Path, limit: int, device: str) -> dict:
    """Mean gap–loudness correlation (and share of pauses with the gap closed) of the version's predicted lip gap
    (:func:`instag.infer.sessionlog.sync_measures`) on the speech of the latest ``limit`` distinct logged sessions."""
    import torch

    from instag.audio.windows import frame_windows
    from instag.infer.features import audio_items
    from instag.infer.sessionlog import logged_audio, sync_measures
    from instag.infer.synthesize import load_model
    from instag.io.wav import load_audio_16k_mono

    audios = logged_audio(model_path, limit) if limit > 0 else []
    if not audios:
        return {"sync_score": None, "lip_gap_closed_in_silence": None, "speeches": 0}
    model = load_model(version_dir, None, device)
    scores, closed = [], []
    for _, wav in audios:
        items, _ = audio_items(wav, model.audio_extractor)
        items = items.to(model.device, torch.float32)
        gaps = []
        with torch.no_grad():
            for s in range(0, items.shape[0], 16):
                idx = torch.arange(s, min(s + 16, items.shape[0]), device=model.device)
                face_audio = model.face_field.audio(frame_windows(items, idx))
                gaps.append(model.hook(face_audio, model.align)[:, 2].cpu())
        sync = sync_measures(torch.cat(gaps).numpy(), load_audio_16k_mono(wav))
        if sync["score"] is not None:
            scores.append(sync["score"])
        if sync["lip_gap_closed_in_silence"] is not None and math.isfinite(sync["lip_gap_closed_in_silence"]):
            closed.append(sync["lip_gap_closed_in_silence"])
    return {"sync_score": float(np.mean(scores)) if scores else None,
            "lip_gap_closed_in_silence": float(np.mean(closed)) if closed else None, "speeches": len(audios)}


def score_version(cfg: RefineConfig, version_dir: Path, device: str, log) -> dict:
    from instag.metrics.evaluate import evaluate_model

    res = evaluate_model(cfg.source_path, version_dir, dilate=cfg.dilate, static=False, device=device,
                         out_dir=version_dir / "eval", log=lambda *_: None, progress=not cfg.quiet)
    keys = ("psnr", "ssim", "lmd", "mouth_corr", "mouth_amp", "closed_in_silence")
    val = {k: _finite(res["ours"].get(k)) for k in keys}
    openings = res.get("mouth_opening") or {}
    logged = logged_sync(cfg.model_path, version_dir, cfg.logged_audio, device)
    log(f"instag refine: {version_dir.name}: PSNR {_show(val['psnr'], 2)} dB, SSIM {_show(val['ssim'], 4)}, "
        f"LMD {_show(val['lmd'])}, mouth corr {_show(val['mouth_corr'])} on {res['frames']} validation frames; "
        f"predicted lip gap-loudness corr on {logged['speeches']} logged speech(es) {_show(logged['sync_score'])}")
    return {"validation": {**val, "frames": res["frames"],
                           "mouth_opening": {"ours": openings.get("ours"), "truth": openings.get("ground truth")}},
            "logged_audio": logged}


def correlation_noise(old: dict, new: dict) -> float | None:
    """The spread (std) of the difference between two versions' mouth-opening correlation over :data:`BOOTSTRAP`
    resamplings of the frames both were scored on (``validation.mouth_opening``: per-frame openings of each version
    and of the ground truth); None when either lacks them or the frames differ."""
    from instag.metrics.lips import pearson

    series = []
    for scores in (old, new):
        op = (scores.get("validation") or {}).get("mouth_opening") or {}
        if not op.get("ours") or not op.get("truth"):
            return None
        series.append((np.array(op["ours"], np.float64), np.array(op["truth"], np.float64)))
    (a, truth), (b, truth_b) = series
    if a.shape != b.shape or truth.shape != truth_b.shape or a.shape != truth.shape or a.size < 3:
        return None
    rng = np.random.default_rng(0)  # the same resamplings for the same scores
    picks = rng.integers(0, a.size, size=(BOOTSTRAP, a.size))
    diffs = [pearson(b[k], truth[k]) - pearson(a[k], truth[k]) for k in picks]
    return float(np.std(diffs))


def _finite(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _show(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def guard(old: dict, new: dict, cfg: RefineConfig) -> tuple[bool, list[dict]]:
    """(promote?, one check per compared metric): the new version must not be worse beyond the tolerances; the
    mouth-opening correlation's is at least :data:`NOISE_SIGMAS` times :func:`correlation_noise`."""
    noise = correlation_noise(old, new)
    lip_margin = max(cfg.lip_tolerance, NOISE_SIGMAS * noise) if noise is not None else cfg.lip_tolerance
    rules = [("validation", "psnr", +1, cfg.psnr_tolerance), ("validation", "ssim", +1, cfg.ssim_tolerance),
             ("validation", "lmd", -1, cfg.lmd_tolerance), ("validation", "mouth_corr", +1, lip_margin),
             ("logged_audio", "sync_score", +1, cfg.lip_tolerance)]
    checks = []
    for group, key, sign, tol in rules:
        a, b = (old.get(group) or {}).get(key), (new.get(group) or {}).get(key)
        if a is None or b is None:
            continue
        check = {"metric": key, "on": group, "old": a, "new": b, "tolerance": tol,
                 "better": "higher" if sign > 0 else "lower", "ok": sign * (b - a) >= -tol}
        if key == "mouth_corr":
            check["noise"] = noise
            check["frames"] = (new.get(group) or {}).get("frames")
        checks.append(check)
    return all(c["ok"] for c in checks), checks


def describe_margin(checks: list[dict], cfg: RefineConfig) -> str | None:
    """What decided the mouth-opening correlation's check, in words (None when it was not compared)."""
    check = next((c for c in checks if c["metric"] == "mouth_corr"), None)
    if check is None:
        return None
    frames = check.get("frames")
    if check.get("noise") is None:
        return f"mouth corr compared with --lip_tolerance {cfg.lip_tolerance:g} (no per-frame openings to measure its noise)"
    noise_margin = NOISE_SIGMAS * check["noise"]
    which = (f"the noise margin {noise_margin:.3f} ({NOISE_SIGMAS:g} x the spread {check['noise']:.3f} of the versions' "
             f"difference over {BOOTSTRAP} resamplings of the {frames} scored frames), above --lip_tolerance "
             f"{cfg.lip_tolerance:g}") if noise_margin > cfg.lip_tolerance else (
             f"--lip_tolerance {cfg.lip_tolerance:g}, above the noise margin {noise_margin:.3f} measured on the {frames} "
             "scored frames")
    return f"mouth corr {check['old']:.3f} -> {check['new']:.3f} judged with {which}"


# ---------------------------------------------------------------------------------------- training
def continue_adaptation(cfg: RefineConfig, parent_dir: Path, work: Path, device, log):
    """The current head adapted further on each added clip in turn (face, mouth, fuse stages)."""
    from instag.data.dataset import load_clip, merge_clips
    from instag.model.talking_head import TalkingHead
    from instag.train.adapt import PRESETS
    from instag.train.config import stage_config, stage_list
    from instag.train.engine import Identity
    from instag.train.run import pick_workers, run_stage, set_seed

    stages = stage_list(cfg.stages, STAGE_ORDER)
    preset = PRESETS[cfg.preset]
    head = TalkingHead.load(parent_dir, device=device, source=cfg.source_path)
    extractor = head.audio_extractor
    max_side = preset["max_side"] if cfg.max_side < 0 else cfg.max_side
    iters = {s: getattr(cfg, "iterations" if s == "face" else f"{s}_iterations") or preset[s] for s in STAGE_ORDER}
    workers = pick_workers(-1, device)
    set_seed(cfg.seed)
    meta = {"audio_extractor": extractor, "audio_features": feature_definition(extractor), "item_shape": list(head.item_shape),
            "preset": cfg.preset}
    for k, root in enumerate(cfg.add):
        clip = load_clip(root, "train", extractor, max_side=max_side or None)
        if DatasetLayout.of(root).transforms("val").exists():
            clip = merge_clips(clip, load_clip(root, "val", extractor, max_side=max_side or None))
        log(f"instag refine: continuing on {clip.name}: {len(clip)} frames at {clip.size[1]}x{clip.size[0]}, stages "
            f"{', '.join(stages)} ({', '.join(str(iters[s]) for s in stages)} iterations)")
        for stage in stages:
            scfg = stage_config(stage, "adapt", iters[stage])
            if stage == "face":  # no geometry priors: they belong to few-shot adaptation from scratch
                scfg = scfg.replace(priors_from=1 << 30)
            identity = Identity(clip, head)
            result, _ = run_stage(scfg, [identity], device, work / f"{k}_{clip.name}", f"train_{stage}", meta, False,
                                  lambda trainer, it: None, workers, None, cfg.seed, progress=not cfg.quiet,
                                  save_seconds=1e9)
            head = identity.head
            log(f"instag refine: {clip.name}: {stage} stage done in {result.seconds:.1f} s")
    return head


def recipe_preset(cfg: RefineConfig, parent_dir: Path, log) -> str:
    """``--preset`` when given, else the preset the current version was adapted (or last refined) with, recorded in
    its checkpoint; ``default`` for a model that records none."""
    import json

    from instag.train.adapt import PRESETS

    if cfg.preset is not None:
        log(f"instag refine: preset {cfg.preset} (--preset)")
        return cfg.preset
    try:
        recorded = json.loads((parent_dir / "chkpnt_fuse_latest.json").read_text(encoding="utf-8")).get("preset")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded in PRESETS:
        log(f"instag refine: preset {recorded}, the one {parent_dir.name} was made with (--preset to choose another)")
        return recorded
    log("instag refine: preset default: the model records none (--preset to choose another)")
    return "default"


def refine(cfg: RefineConfig, log=print) -> dict:
    """Run one guarded refinement; returns the new version's registry entry."""
    import json

    from instag.infer.sessionlog import now_iso
    from instag.train.run import pick_device
    from instag.train.versions import (
        ensure_registry,
        make_current,
        next_name,
        save_registry,
        version_entry,
        versions_dir,
    )

    if not cfg.add:
        raise InstagError("give --add with at least one processed clip of more footage")
    for root in cfg.add:
        if not DatasetLayout.of(root).root.is_dir():
            raise InstagError(f"added footage {root} does not exist; process the video first (instag process <video>)")
        if not DatasetLayout.of(root).transforms("train").exists():
            raise InstagError(f"{DatasetLayout.of(root).transforms('train')} does not exist; {root} is not a processed clip "
                              "(instag process <video>)")
    t0 = time.time()
    device = pick_device(cfg.device)
    model_path = Path(cfg.model_path)
    reg = ensure_registry(model_path, cfg.source_path, now_iso())
    parent = reg["current"]
    vdir = versions_dir(model_path)
    parent_entry = version_entry(reg, parent)
    if not parent_entry.get("scores"):
        log(f"instag refine: scoring the current version {parent} on the validation set")
        parent_entry["scores"] = score_version(cfg, vdir / parent, str(device), log)
        save_registry(model_path, reg)
    cfg = replace(cfg, preset=recipe_preset(cfg, vdir / parent, log))
    name = next_name(reg)
    staging = vdir / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # a killed refine's leftovers
    staging.mkdir(parents=True)
    try:
        head = continue_adaptation(cfg, vdir / parent, staging / "train", device, log)
        parent_meta = json.loads((vdir / parent / "chkpnt_fuse_latest.json").read_text(encoding="utf-8"))
        kept = {k: parent_meta[k] for k in ("source_path", "source_clip", "N_views", "long") if k in parent_meta}
        head.save(staging, extra={**kept, "stage": "fuse", "refined_from": parent,
                                  "added": [str(DatasetLayout.of(r).root) for r in cfg.add], "preset": cfg.preset})
        shutil.rmtree(staging / "train")
        staging.rename(vdir / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    scores = score_version(cfg, vdir / name, str(device), log)
    promote, checks = guard(parent_entry["scores"], scores, cfg)
    margin = describe_margin(checks, cfg)
    if margin:
        log(f"instag refine: {margin}")
    failed = [c for c in checks if not c["ok"]]
    why = ("not worse than " + parent + " on " + ", ".join(c["metric"] for c in checks)) if promote else \
        "worse than " + parent + " beyond the tolerances: " + "; ".join(
            f"{c['metric']} {c['new']:.4g} vs {c['old']:.4g} (tolerance {c['tolerance']:g}, {c['better']} is better)"
            for c in failed)
    entry = {"name": name, "created": now_iso(), "parent": parent, "added": [str(DatasetLayout.of(r).root) for r in cfg.add],
             "recipe": {"preset": cfg.preset, "stages": cfg.stages, "iterations": [cfg.iterations, cfg.mouth_iterations,
                                                                                    cfg.fuse_iterations]},
             "scores": scores, "decision": {"promoted": promote, "why": why, "checks": checks, "lip_margin": margin},
             "seconds": time.time() - t0}
    reg["versions"].append(entry)
    if promote:
        make_current(model_path, reg, name, f"promoted {name} over {parent}", now_iso())
        log(f"instag refine: promoted {name}: {why}; {model_path} now renders with it "
            f"(instag versions {model_path} --rollback {parent} to go back)")
    else:
        reg.setdefault("events", []).append({"time": now_iso(), "event": f"kept {name} out: {why}"})
        save_registry(model_path, reg)
        log(f"instag refine: kept {parent}: {name} is {why}; {name} stays in {vdir / name}")
    return entry


def main(argv: list[str] | None = None) -> int:
    from instag.train.versions import format_versions, load_registry

    cfg = parse(RefineConfig, argv, prog="instag refine")
    refine(cfg)
    print(format_versions(load_registry(cfg.model_path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
