"""Training RAM against clip length: the frames stream from disk, so memory should not grow with the video.

    python bench/training_memory.py [--lengths 250 1500 7500] [--size 512] [--samples 1500] [--workers 2]

For each length (frames; 7 500 = 5 minutes at 25 FPS) a synthetic processed clip is written (frames, torso,
parsing, landmarks, AUs, mel features), then a fresh process builds what ``instag adapt`` builds for its face
stage (the clip's whole-clip data, a talking head, the training engine with its data loader and worker processes)
and draws ``--samples`` training samples through the engine's own loader, exactly as training does, without the
optimisation steps. Peak resident memory is the largest sum of RSS over that process and its loader workers,
sampled every 50 ms (proportional set size, so what forked workers share with the parent counts once). Beside it,
what holding every frame's training sample would take (what a preloading loader needs): the clip's frames times
the bytes of one sample as the loader hands it over (image, background, masks, depth and normal priors, audio).
Prints a table, writes JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _synthetic import RESULTS, make_clip, table  # noqa: E402

from instag.io.atomic import write_json  # noqa: E402


def _memory_tree(pid: int) -> int:
    """Memory of ``pid`` and all its descendants (Linux /proc): proportional set size, so pages that forked
    loader workers share with their parent count once (VmRSS where smaps_rollup is missing)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup")
            text, key = (rollup.read_text(), "Pss:") if rollup.exists() else (Path(f"/proc/{p}/status").read_text(), "VmRSS:")
            total += next(int(line.split()[1]) * 1024 for line in text.splitlines() if line.startswith(key))
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                todo += [int(c) for c in children]
        except (OSError, StopIteration, ValueError):
            continue
    return total


def run_loader(root: Path, samples: int, workers: int) -> dict:
    """In this process: build the face-stage training engine on the clip and draw ``samples`` through its loader."""
    import torch

    from instag.audio.registry import get_extractor
    from instag.data.dataset import load_clip
    from instag.model.talking_head import TalkingHead
    from instag.train.config import stage_config
    from instag.train.engine import Identity, Trainer

    clip = load_clip(root, "train", "mel", with_priors=True)
    cfg = stage_config("face", "adapt", samples)
    head = TalkingHead.create("mel", tuple(get_extractor("mel").item_shape), 2000, 5000, cfg.sh_degree,
                              generator=torch.Generator().manual_seed(0))
    trainer = Trainer(cfg, [Identity(clip, head)], torch.device("cpu"), num_workers=workers)
    setup = _memory_tree(os.getpid())
    seen, count, t0, sample_bytes = set(), 0, time.time(), 0
    for sample in trainer.loader(0):
        seen.add(int(sample["index"]))
        sample_bytes = sum(v.numel() * v.element_size() for v in sample.values() if isinstance(v, torch.Tensor))
        count += 1
        if count >= samples:
            break
    return {"samples": count, "distinct": len(seen), "setup_mb": round(setup / 2**20, 1),
            "sample_bytes": sample_bytes, "seconds": round(time.time() - t0, 1)}


def measure(root: Path, samples: int, workers: int) -> dict:
    """Run :func:`run_loader` in a child process, sampling the memory of its tree; its report plus the peak."""
    cmd = [sys.executable, __file__, "--child", str(root), "--samples", str(samples), "--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _memory_tree(proc.pid))
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        last = err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"
        raise SystemExit(f"bench/training_memory.py: the loader run on {root} failed: {last}")
    report = json.loads(out.strip().splitlines()[-1])
    report["peak_mb"] = round(peak / 2**20, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[250, 1500, 7500], help="clip lengths in frames")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--samples", type=int, default=1500, help="training samples drawn per length")
    ap.add_argument("--workers", type=int, default=2, help="data-loader workers (as --workers in training)")
    ap.add_argument("--work", default=None, help="folder for the synthetic clips (default: a temporary one)")
    ap.add_argument("--out", default=str(RESULTS / "training_memory.json"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_loader(Path(args.child), args.samples, args.workers)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        for n in args.lengths:
            t0 = time.time()
            root = make_clip(Path(tmp) / f"clip{n}", n_train=n, n_val=0, size=args.size, parsing=True)
            made = time.time() - t0
            rep = measure(root, args.samples, args.workers)
            rows.append({"frames": n, "minutes": round(n / 25 / 60, 2), "samples": rep["samples"],
                         "distinct_frames": rep["distinct"], "peak_mb": rep["peak_mb"],
                         "after_setup_mb": rep["setup_mb"], "preload_would_hold_mb": round(n * rep["sample_bytes"] / 2**20, 1),
                         "loader_s": rep["seconds"], "clip_written_s": round(made, 1)})
            print(f"{n} frames: peak {rep['peak_mb']} MB ({rep['seconds']} s)", flush=True)
            # free the disk before the next, larger clip
            subprocess.run(["rm", "-rf", str(root)], check=False)
    print(table(rows, list(rows[0])))
    result = {"size": args.size, "workers": args.workers, "cache": "engine default (512 MB over the workers)", "rows": rows}
    write_json(Path(args.out), result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
