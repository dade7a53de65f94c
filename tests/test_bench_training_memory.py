"""bench/training_memory.py runs the training engine's loader on synthetic clips and reports its peak memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_training_memory_reports_each_length(tmp_path):
    out = tmp_path / "mem.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "training_memory.py"), "--lengths", "20", "60", "--size", "64",
                           "--samples", "40", "--workers", "1", "--work", str(tmp_path), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["frames"] for r in rows] == [20, 60]
    for r in rows:
        assert r["samples"] == 40 and 0 < r["distinct_frames"] <= r["frames"]
        assert r["peak_mb"] >= r["after_setup_mb"] > 50  # torch and the engine are in memory
    assert rows[1]["preload_would_hold_mb"] == pytest.approx(3 * rows[0]["preload_would_hold_mb"], abs=0.2)
    assert not list(tmp_path.glob("tmp*/clip*"))  # the synthetic clips are removed
