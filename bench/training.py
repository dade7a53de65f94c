"""Training report: stage wall-clock times and held-out metrics of adapted models, beside the static baseline.

    python bench/training.py RUN [RUN ...] [--pretrain output/pretrain_model] [--out bench/results/training.json]

A RUN is ``output/<ID>`` (after ``instag adapt`` and ``instag evaluate``) or ``label=output/<ID>``. The times
come from the ``adapt_log.json`` / ``pretrain_log.json`` that training writes (seconds per stage, measured
around the stage's loop); the metrics from ``test/ours_None/metrics.json`` that ``instag evaluate`` writes
(PSNR, SSIM, mouth LMD, mouth-opening correlation, mouth_amp and closed_in_silence (the ground truth's own
closed_in_silence beside them), for the model and for the same model driven by the clip's
quietest audio frame), and, when ``instag evaluate --split train --N_views N`` was run too, the same figures on
the frames the model was trained on (``train/ours_None/metrics.json``: does the model fit the mouth at all?), and
the user's path rows of ``instag evaluate --new_audio`` (``test/ours_None/new_audio.json``) when present. Nothing is re-measured here: the table gathers what the real commands recorded, so it
can be rebuilt on a machine without a GPU from results fetched from one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _synthetic import RESULTS, table  # noqa: E402

from instag.errors import InstagError  # noqa: E402
from instag.io.atomic import write_json  # noqa: E402

METRICS = ("psnr", "ssim", "lmd", "mouth_corr", "mouth_amp", "closed_in_silence")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InstagError(f"cannot read {path} ({err}); run training and `instag evaluate` first") from err


def run_row(label: str, model_dir: Path) -> dict:
    log = _read(model_dir / "adapt_log.json")
    row: dict = {"run": label, "frames": log.get("frames")}
    total = 0.0
    for stage in ("face", "mouth", "fuse"):
        info = log.get("stages", {}).get(stage, {})
        row[f"{stage}_s"] = info.get("seconds")
        row[f"{stage}_it"] = info.get("reached")
        total += info.get("seconds") or 0.0
    row["adapt_s"] = round(total, 1)
    metrics_path = model_dir / "test" / "ours_None" / "metrics.json"
    if metrics_path.exists():
        m = _read(metrics_path)
        for who in ("ours", "static"):
            for k in METRICS:
                row[f"{who}_{k}"] = (m.get(who) or {}).get(k)
        row["truth_closed_in_silence"] = (m.get("ground_truth") or {}).get("closed_in_silence")
    new_audio = model_dir / "test" / "ours_None" / "new_audio.json"
    if new_audio.exists():
        row["new_audio"] = {name: {k: v for k, v in r.items()} for name, r in _read(new_audio).get("rows", {}).items()}
    fitted = model_dir / "train" / "ours_None" / "metrics.json"
    if fitted.exists():
        m = _read(fitted).get("ours", {})
        for k in METRICS:
            row[f"train_{k}"] = m.get(k)
    return row


def pretrain_row(model_dir: Path) -> dict:
    log = _read(model_dir / "pretrain_log.json")
    row: dict = {"identities": len(log.get("identities", []))}
    for stage in ("face", "mouth"):
        info = log.get("stages", {}).get(stage, {})
        row[f"{stage}_it"] = f"{info.get('reached')}/{info.get('iterations')}"
        row[f"{stage}_s"] = info.get("seconds")
    return row


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="output/<ID> or label=output/<ID>")
    ap.add_argument("--pretrain", default=None, help="pre-training output folder (its pretrain_log.json)")
    ap.add_argument("--device", default="", help="the machine the runs were measured on (recorded in the JSON)")
    ap.add_argument("--note", action="append", default=[], help="a line on how the runs were made (repeatable)")
    ap.add_argument("--out", default=str(RESULTS / "training.json"))
    args = ap.parse_args(argv)
    try:
        rows = []
        for spec in args.runs:
            label, _, path = spec.rpartition("=")
            rows.append(run_row(label or Path(path).name, Path(path)))
        result: dict = {"device": args.device, "notes": args.note, "runs": rows}
        print(table(rows, ["run", "frames", "face_s", "mouth_s", "fuse_s", "adapt_s"]))
        print()
        print(table(rows, ["run"] + [f"{w}_{k}" for w in ("ours", "static") for k in METRICS] + ["truth_closed_in_silence"]))
        user = [{"run": r["run"], "row": name, **vals} for r in rows for name, vals in r.get("new_audio", {}).items()]
        if user:
            print()
            print("the user's path (instag evaluate --new_audio):")
            print(table(user, ["run", "row", "mouth_corr", "mouth_amp", "lmd", "closed_in_pauses",
                               "closed_in_digital_silence", "mean_opening"]))
        if any("train_psnr" in r for r in rows):
            print()
            print(table([r for r in rows if "train_psnr" in r], ["run"] + [f"train_{k}" for k in METRICS]))
        if args.pretrain:
            result["pretrain"] = pretrain_row(Path(args.pretrain))
            print()
            print(table([result["pretrain"]], list(result["pretrain"])))
    except InstagError as err:
        print(f"bench/training.py: {err}", file=sys.stderr)
        return 1
    write_json(Path(args.out), result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
