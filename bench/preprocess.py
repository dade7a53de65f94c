"""Preprocessing time of a 10-s clip with the embedded defaults, per step.

Cuts the first ``--seconds`` of a clip from ``../shared/data/video`` into a temporary folder,
runs ``instag process`` on it from scratch, prints a table of per-step times and writes
``bench/results/preprocess.json``. Bar (DESIGN §4): ≤ 2 minutes on a 2-core CPU.

    python bench/preprocess.py [--video ../shared/data/video/dfrf_cnn2_25fps.mp4] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "dfrf_cnn2_25fps.mp4"
BAR_SECONDS = 120.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", default=str(DEFAULT_VIDEO))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", default=None, help="keep the processed clip here (default: a temporary folder)")
    args = parser.parse_args()

    from instag.io.video import ffmpeg_exe
    from instag.preprocess.pipeline import STEPS, ProcessConfig, run

    video = Path(args.video)
    if not video.exists():
        print(f"bench/preprocess.py: {video} not found (../shared/data beside the repository)")
        return 1
    with tempfile.TemporaryDirectory(prefix="instag-bench-") as tmp:
        clip = Path(tmp) / "clip" / "clip.mp4"
        clip.parent.mkdir()
        subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(video), "-t", str(args.seconds),
                        "-c", "copy", str(clip)], check=True)
        out = Path(args.out) if args.out else clip.parent
        start = time.perf_counter()
        meta = run(ProcessConfig(path=str(clip), out=str(out)))
        total = time.perf_counter() - start

    rows = [(s.task, s.name, meta["steps"][s.name]["seconds"]) for s in STEPS if s.name in meta["steps"]]
    print(f"\npreprocessing {args.seconds:g} s of {video.name} ({meta['num_frames']} frames), {os.cpu_count()} CPU cores")
    print(f"{'task':>4}  {'step':<16}{'seconds':>9}")
    for task, name, sec in rows:
        print(f"{task:>4}  {name:<16}{sec:>9.2f}")
    print(f"{'':>4}  {'total (wall)':<16}{total:>9.2f}   bar {BAR_SECONDS:.0f} s: {'met' if total <= BAR_SECONDS else 'NOT met'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "video": video.name, "seconds_of_video": args.seconds, "frames": meta["num_frames"],
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "steps": {name: sec for _, name, sec in rows}, "total_wall_s": round(total, 2), "bar_s": BAR_SECONDS,
        "tracking": meta.get("tracking"),
    }
    (RESULTS / "preprocess.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / 'preprocess.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
