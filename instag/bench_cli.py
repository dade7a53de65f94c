"""``instag bench NAME [args]``: run ``bench/NAME.py`` from a source checkout."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from instag.errors import InstagError

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    names = sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_")) if BENCH_DIR.is_dir() else []
    if not argv or argv[0].startswith("-"):
        print("usage: instag bench NAME [args]\nbenchmarks: " + (", ".join(names) or "none (bench/ lives in the source checkout)"))
        return 0 if argv else 2
    name = argv[0]
    script = BENCH_DIR / f"{name}.py"
    if not script.is_file():
        raise InstagError(f"no benchmark {script}; available: {', '.join(names) or 'none'}")
    sys.argv = [str(script), *argv[1:]]
    runpy.run_path(str(script), run_name="__main__")
    return 0
