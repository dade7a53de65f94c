"""Pre-training across GPUs: steps/s with 1, 2 and 4 data-parallel processes, and whether the result holds.

    python bench/pretrain_scaling.py [--data data/pretrain] [--procs 1 2 4] [--iterations 1500] [--seeds 2]
                                     [--out bench/results/pretrain_scaling.json]

Each process count N runs ``torchrun --standalone --nproc_per_node N -m instag pretrain`` (NCCL, one GPU per
process, ``NCCL_NVLS_ENABLE=0``) into a fresh folder. Steps/s = the stage's iterations (frames, all processes
together) over its seconds in ``pretrain_log.json`` (measured around the training loop: start-up and clip loading
are left out); the ratio is over the one-process runs' mean. The result column is the mean photometric loss of the
last quarter of the stage (every process's log); each count runs ``--seeds`` seeds, so the data-parallel runs can be
read against one process's seed noise. A short one-process run first compiles gsplat's kernels, so no timed run
pays for it. Counts above the visible GPUs are skipped (and listed). About 7 minutes on H100s with the defaults
(face pre-training runs near 19 steps/s on one); give ``--procs`` in pieces to split it.

Without ``--data`` a synthetic corpus of ``--identities`` clips (``--size``², ``--frames`` frames, mel features) is
written to a temporary folder: a device machine carries no dataset, and a step's cost depends on the image size
and the clouds, not on what the pixels show (the synthetic clips have no lip landmarks, so the lip terms are off).
Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _synthetic import RESULTS, device_name, make_clip, table  # noqa: E402

from instag.io.atomic import write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def launch(data: Path, out: Path, procs: int, args, seed: int, iterations: int) -> dict:
    """One pre-training run under torchrun; its stage figures from pretrain_log.json."""
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), "-m", "instag",
           "pretrain", "-S", str(data), "-M", str(out), "--audio_extractor", args.audio_extractor, "--preset", args.preset,
           "--iterations", str(iterations), "--stages", "face", "--device", args.device, "--seed", str(seed), "--quiet",
           "--checkpoint_seconds", "1e9"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO))
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"pretrain with {procs} process(es) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    face = json.loads((out / "pretrain_log.json").read_text(encoding="utf-8"))["stages"]["face"]
    photo = face.get("photo_history") or []
    tail = [v for it, v in photo if it > 0.75 * iterations]
    return {"procs": procs, "seed": seed, "iterations": iterations, "stage_s": face["seconds"], "wall_s": round(wall, 1),
            "steps_per_s": iterations / max(face["seconds"], 1e-9),
            "photo_last_quarter": sum(tail) / len(tail) if tail else None}


def synthetic_corpus(root: Path, identities: int, frames: int, size: int) -> Path:
    for k in range(identities):
        make_clip(root / f"id{k:02d}", n_train=frames, n_val=max(2, frames // 10), size=size, seed=k, parsing=True)
    return root


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="folder of processed identities (default: a synthetic corpus)")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4], help="process counts (one GPU each)")
    ap.add_argument("--iterations", type=int, default=1500, help="face-stage iterations of each timed run")
    ap.add_argument("--seeds", type=int, default=2, help="runs per process count (seeds 0..k-1), for the seed noise")
    ap.add_argument("--identities", type=int, default=8, help="synthetic corpus: identities")
    ap.add_argument("--frames", type=int, default=250, help="synthetic corpus: training frames per identity")
    ap.add_argument("--size", type=int, default=512, help="synthetic corpus: image side")
    ap.add_argument("--preset", default="default", help="pretrain --preset (image size, initial clouds)")
    ap.add_argument("--audio_extractor", default="mel", help="features the corpus holds")
    ap.add_argument("--device", default="cuda", help="cuda (NCCL), or cpu (gloo: a smoke run, not a timing)")
    ap.add_argument("--out", default=str(RESULTS / "pretrain_scaling.json"))
    args = ap.parse_args()

    import torch

    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    usable = [n for n in args.procs if args.device != "cuda" or n <= gpus]
    skipped = [n for n in args.procs if n not in usable]
    with tempfile.TemporaryDirectory(prefix="instag-scaling-") as tmp:
        tmp_path = Path(tmp)
        data = Path(args.data) if args.data else synthetic_corpus(tmp_path / "data", args.identities, args.frames, args.size)
        too_many = [n for n in usable if n > len([d for d in data.iterdir() if (d / "transforms_train.json").exists()])]
        if too_many:
            raise SystemExit(f"--procs {too_many}: more processes than identities in {data}")
        launch(data, tmp_path / "compile", 1, args, 0, 30)  # gsplat's kernels compile here, untimed
        rows = []
        for n in usable:
            for seed in range(args.seeds):
                rows.append(launch(data, tmp_path / f"run{n}_{seed}", n, args, seed, args.iterations))
                print(f"{n} process(es), seed {seed}: {rows[-1]['steps_per_s']:.1f} steps/s", file=sys.stderr)
    summary = []
    for n in usable:
        mine = [r for r in rows if r["procs"] == n]
        losses = [r["photo_last_quarter"] for r in mine if r["photo_last_quarter"] is not None]
        summary.append({"procs": n, "runs": len(mine), "steps_per_s": sum(r["steps_per_s"] for r in mine) / len(mine),
                        "photo_mean": sum(losses) / len(losses) if losses else None,
                        "photo_min": min(losses, default=None), "photo_max": max(losses, default=None)})
    base = next((s["steps_per_s"] for s in summary if s["procs"] == 1), None)
    for s in summary:
        s["ratio"] = s["steps_per_s"] / base if base else None
    print(table(rows, ["procs", "seed", "iterations", "stage_s", "steps_per_s", "photo_last_quarter", "wall_s"]))
    print()
    print(table(summary, ["procs", "runs", "steps_per_s", "ratio", "photo_mean", "photo_min", "photo_max"]))
    if skipped:
        print(f"skipped {skipped}: only {gpus} GPU(s) visible")
    result = {"device": device_name(), "gpus": gpus, "args": vars(args), "skipped": skipped, "summary": summary, "rows": rows}
    write_json(Path(args.out), result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
