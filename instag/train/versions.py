"""Model versions: ``output/<ID>/versions/<name>/`` beside the model, and ``instag versions`` to list or roll back.

``versions/versions.json`` records the fixed validation set every version is scored on (the clip's validation
split: its folder, frame indices and the SHA-256 of ``transforms_val.json``), which version is ``current`` and,
per version, where it came from, the footage added, its scores and the decision taken on it. The current
version's fused checkpoint (``chkpnt_fuse_latest``) is also the model folder's own, so ``instag synthesize``,
``stream`` and ``serve`` use it unchanged; promoting or rolling back copies a version's checkpoint there.

``instag versions output/<ID>`` lists the versions with their scores; ``--rollback v1`` makes ``v1`` current again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from instag.config import parse
from instag.data.format import DatasetLayout
from instag.errors import InstagError

VERSIONS = "versions"
REGISTRY = "versions.json"
FUSED_FILES = ("chkpnt_fuse_latest.safetensors", "chkpnt_fuse_latest.json")


def versions_dir(model_path: str | Path) -> Path:
    return Path(model_path) / VERSIONS


def load_registry(model_path: str | Path) -> dict | None:
    path = versions_dir(model_path) / REGISTRY
    if not path.exists():
        return None
    try:
        reg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InstagError(f"cannot read {path} ({err}); restore it from a backup or move {versions_dir(model_path)} away") from err
    if not isinstance(reg, dict) or not isinstance(reg.get("versions"), list):
        raise InstagError(f"{path} is not a versions registry; move {versions_dir(model_path)} away")
    return reg


def save_registry(model_path: str | Path, reg: dict) -> None:
    from instag.io.atomic import write_json

    write_json(versions_dir(model_path) / REGISTRY, {k: v for k, v in reg.items() if k != "model_path"})


def version_entry(reg: dict, name: str) -> dict:
    for entry in reg["versions"]:
        if entry["name"] == name:
            return entry
    names = ", ".join(e["name"] for e in reg["versions"])
    raise InstagError(f"no version {name!r}; the versions are {names}")


def validation_spec(source_path: str | Path) -> dict:
    """The fixed validation set: the clip's validation split, named by its frames and the hash of its transforms."""
    layout = DatasetLayout.of(source_path)
    path = layout.transforms("val")
    if not path.exists():
        raise InstagError(f"{path} does not exist: refine scores every version on the validation split; run "
                          f"`instag split {layout.root}` first")
    data = path.read_bytes()
    try:
        frames = [int(f["img_id"]) for f in json.loads(data)["frames"]]
    except (ValueError, KeyError, TypeError) as err:
        raise InstagError(f"cannot read the validation frames of {path} ({err}); re-run the split") from err
    return {"source_path": str(layout.root.resolve()), "split": "val", "frames": len(frames),
            "first_frame": min(frames, default=None), "last_frame": max(frames, default=None),
            "transforms_sha256": hashlib.sha256(data).hexdigest()}


def check_validation(reg: dict, source_path: str | Path) -> None:
    """Refuse to score against a validation set other than the one the registry's versions were scored on."""
    now, was = validation_spec(source_path), reg.get("validation") or {}
    if now["transforms_sha256"] != was.get("transforms_sha256"):
        raise InstagError(f"the validation split of {source_path} is not the one the versions in {versions_dir(reg['model_path'])} "
                          f"were scored on ({was.get('source_path')}, {was.get('frames')} frames); refine with that clip's "
                          "split unchanged, or move versions/ away to start a new history")


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.copying")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def ensure_registry(model_path: str | Path, source_path: str | Path, now: str) -> dict:
    """The registry, started when absent: the model folder's checkpoint becomes version ``v1`` (current)."""
    model_path = Path(model_path)
    reg = load_registry(model_path)
    if reg is not None:
        reg["model_path"] = str(model_path)
        check_validation(reg, source_path)
        return reg
    missing = [name for name in FUSED_FILES if not (model_path / name).is_file()]
    if missing:
        from instag.model.talking_head import adapt_command, check_not_swapped

        check_not_swapped(source_path, model_path)
        raise InstagError(f"{model_path / missing[0]} does not exist: refine continues a trained model; adapt one first: "
                          f"{adapt_command(model_path, source_path)}")
    first = versions_dir(model_path) / "v1"
    first.mkdir(parents=True, exist_ok=True)
    for name in FUSED_FILES:
        _copy_atomic(model_path / name, first / name)
    reg = {"format": "instag-versions", "current": "v1", "validation": validation_spec(source_path),
           "versions": [{"name": "v1", "created": now, "parent": None, "added": [], "scores": None,
                         "decision": {"promoted": True, "why": "the model before the first refine"}}],
           "events": [{"time": now, "event": "started versions with the model folder's checkpoint as v1"}]}
    save_registry(model_path, reg)
    reg["model_path"] = str(model_path)
    return reg


def next_name(reg: dict) -> str:
    numbers = [int(e["name"][1:]) for e in reg["versions"] if e["name"][1:].isdigit()]
    return f"v{max(numbers, default=0) + 1}"


def make_current(model_path: str | Path, reg: dict, name: str, event: str, now: str) -> None:
    """Copy version ``name``'s checkpoint into the model folder and record it as current."""
    model_path = Path(model_path)
    folder = versions_dir(model_path) / name
    missing = [f for f in FUSED_FILES if not (folder / f).is_file()]
    if missing:
        raise InstagError(f"{folder / missing[0]} is missing; version {name} cannot be made current")
    for f in FUSED_FILES:  # tensors first: a kill in between leaves the registry on the old version, rerun to finish
        _copy_atomic(folder / f, model_path / f)
    reg["current"] = name
    reg.setdefault("events", []).append({"time": now, "event": event})
    save_registry(model_path, reg)


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_versions(reg: dict) -> str:
    keys = (("psnr", 2), ("ssim", 4), ("lmd", 3), ("mouth_corr", 3))
    head = f"{'':2}{'version':<9}{'parent':<8}{'created (UTC)':<21}" + "".join(f"{k:>11}" for k, _ in keys) + \
        f"{'logged sync':>12}  decision"
    lines = [head]
    for e in reg["versions"]:
        scores = e.get("scores") or {}
        val = scores.get("validation") or {}
        logged = (scores.get("logged_audio") or {}).get("sync_score")
        decision = e.get("decision") or {}
        verdict = ("promoted" if decision.get("promoted") else "kept out") + (f": {decision['why']}" if decision.get("why") else "")
        mark = "* " if e["name"] == reg.get("current") else "  "
        lines.append(f"{mark}{e['name']:<9}{_fmt(e.get('parent')):<8}{str(e.get('created', ''))[:19]:<21}"
                     + "".join(f"{_fmt(val.get(k), d):>11}" for k, d in keys) + f"{_fmt(logged):>12}  {verdict}")
        if e.get("added"):
            lines.append(f"{'':11}added: {', '.join(e['added'])}")
    lines.append(f"validation: {reg['validation']['frames']} frames of {reg['validation']['source_path']} (val split); "
                 "* = current")
    return "\n".join(lines)


@dataclass
class VersionsConfig:
    """List a model's versions with their scores, or roll back to one."""

    model_path: str = field(metadata={"flags": ("-M", "-m"), "help": "model folder output/<ID>; may come first without the flag"})
    rollback: str | None = field(default=None, metadata={"help": "make this version (e.g. v1) current again"})


def main(argv: list[str] | None = None) -> int:
    from instag.infer.sessionlog import now_iso

    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):
        args = ["--model_path", *args]
    cfg = parse(VersionsConfig, args, prog="instag versions")
    reg = load_registry(cfg.model_path)
    if reg is None:
        model = Path(cfg.model_path)
        missing = [name for name in FUSED_FILES if not (model / name).is_file()]
        if missing:
            raise InstagError(f"{model / missing[0]} does not exist: {model} is not a trained model folder (instag adapt "
                              "makes one)")
        if cfg.rollback:
            raise InstagError(f"{model} has no versions yet, so there is none to roll back to; instag refine starts them")
        print(f"instag versions: {model} has no versions yet: its own checkpoint is the only one (instag refine -S "
              f"data/<ID> -M {model} --add <more footage> keeps it as v1 and adds v2)")
        return 0
    if cfg.rollback:
        entry = version_entry(reg, cfg.rollback)
        previous = reg.get("current")
        make_current(cfg.model_path, reg, entry["name"], f"rolled back from {previous} to {entry['name']}", now_iso())
        print(f"instag versions: {entry['name']} is current again (was {previous}); {cfg.model_path} renders with it")
    print(format_versions(reg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
