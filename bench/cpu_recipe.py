"""The README's CPU recipe, end to end, timed: process -> pretrain -> adapt -> synthesize a few seconds.

    python bench/cpu_recipe.py [--work /tmp/instag-cpu-recipe] [--keep] [--out bench/results/cpu_recipe.json]

Runs exactly the commands the README lists under "A CPU recipe that finishes in minutes", in a fresh work folder,
each as its own `python -m instag ...` process (so the timings include start-up and imports): preprocessing of two
short pre-training clips (GRID speakers, 3 s each) and the 5-s May clip, tiny pre-training on the two, adaptation
to May with the `cpu` preset (tiny's 128-pixel images, 1 500 + 500 + 150 steps), and synthesis of 5 s of new
English speech at 512x512 on the CPU rasterizer. Prints a table of wall-clock seconds per step and writes JSON. The clips come from ../shared/data (development only).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _synthetic import RESULTS, table  # noqa: E402

from instag.io.atomic import write_json  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def recipe(work: Path) -> list[tuple[str, list[str]]]:
    """(label, instag arguments) of each step, as the README gives them (paths inside ``work``)."""
    video, audio = SHARED / "video", SHARED / "audio"
    data, out = work / "data", work / "output"
    steps = []
    for name in ("grid_bbaf2n", "grid_swiz3n"):
        steps.append((f"process {name} (3 s)", ["process", str(video / "grid" / f"{name}.mpg"), "--out", str(data / "pretrain" / name),
                                                "--fix_av_offset"]))
    steps.append(("process May (5 s)", ["process", str(video / "r3dp_may_5s.mp4"), "--out", str(data / "may")]))
    steps.append(("pretrain (tiny, 2 identities)", ["pretrain", "-S", str(data / "pretrain"), "-M", str(out / "pretrain_tiny"),
                                                    "--preset", "tiny", "--quiet"]))
    steps.append(("adapt May (cpu preset)", ["adapt", "-S", str(data / "may"), "-M", str(out / "may"), "--pretrain_path",
                                       str(out / "pretrain_tiny"), "--preset", "cpu", "--N_views", "-1", "--evaluate", "false",
                                       "--quiet"]))
    steps.append(("synthesize 5 s of new speech", ["synthesize", "-S", str(data / "may"), "-M", str(out / "may"), "--audio",
                                                   str(audio / "retalking_audio1_en.wav"), "--quiet"]))
    return steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "instag-cpu-recipe"))
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--out", default=str(RESULTS / "cpu_recipe.json"))
    args = ap.parse_args(argv)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU path, even on a machine with a GPU
    rows = []
    t_all = time.perf_counter()
    for label, cmd in recipe(work):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "instag", *cmd], env=env, capture_output=True, text=True)
        rows.append({"step": label, "seconds": time.perf_counter() - t0, "exit": proc.returncode})
        print(f"{label}: {rows[-1]['seconds']:.1f} s", flush=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            break
    total = time.perf_counter() - t_all
    rows.append({"step": "total", "seconds": total, "exit": max(r["exit"] for r in rows)})
    print(table(rows, ["step", "seconds", "exit"]))
    video = work / "output" / "may" / "inference" / "retalking_audio1_en.mp4"
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "rows": rows, "video": str(video) if video.exists() else None}
    write_json(Path(args.out), result)
    print(f"wrote {args.out}" + (f"; the video is {video}" if video.exists() else ""))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if rows[-1]["exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
