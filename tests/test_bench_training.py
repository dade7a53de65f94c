"""bench/training.py gathers stage times and held-out metrics from what adapt/evaluate wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_training_report_gathers_times_and_metrics(tmp_path):
    run = tmp_path / "output" / "clip"
    (run / "test" / "ours_None").mkdir(parents=True)
    stages = {s: {"iterations": n, "reached": n, "seconds": t} for s, n, t in (("face", 20, 1.5), ("mouth", 10, 1.0), ("fuse", 5, 0.5))}
    (run / "adapt_log.json").write_text(json.dumps({"clip": "clip", "frames": 12, "stages": stages}))
    metrics = {w: {"psnr": p, "ssim": 0.9, "lmd": 2.0, "mouth_corr": c} for w, p, c in (("ours", 25.0, 0.4), ("static", 24.0, 0.0))}
    (run / "test" / "ours_None" / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "training.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "training.py"), f"mine={run}", "--out", str(out), "--note", "a test"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "mine" in proc.stdout and "ours_mouth_corr" in proc.stdout
    row = json.loads(out.read_text())["runs"][0]
    assert row["adapt_s"] == 3.0 and row["ours_mouth_corr"] == 0.4 and row["static_psnr"] == 24.0
    assert "train_psnr" not in row
    # with a training-split evaluation (instag evaluate --split train) its figures join the row
    (run / "train" / "ours_None").mkdir(parents=True)
    (run / "train" / "ours_None" / "metrics.json").write_text(json.dumps({"ours": {**metrics["ours"], "mouth_corr": 0.8}}))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "training.py"), str(run), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "train_mouth_corr" in proc.stdout
    assert json.loads(out.read_text())["runs"][0]["train_mouth_corr"] == 0.8
    missing = subprocess.run([sys.executable, str(REPO / "bench" / "training.py"), str(tmp_path / "nope"), "--out", str(out)],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr
