"""bench/audio_lips.py: the audio->lips ceiling benchmark learns opening from audio and fails clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from synthetic_clip import make_clip  # tests/synthetic_clip.py: mouth opens with the synthetic audio envelope

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "bench" / "audio_lips.py")


def test_audio_lips_learns_the_opening_of_an_unseen_clip(tmp_path):
    for k in range(2):
        make_clip(tmp_path / "pretrain" / f"id{k}", size=48, n_train=60, n_val=20, seed=k)
    held_out = make_clip(tmp_path / "eval" / "new", size=48, n_train=20, n_val=40, seed=5).root
    out = tmp_path / "audio_lips.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--train", str(tmp_path / "pretrain"), "--eval", str(held_out),
                           "--steps", "300", "--batch", "64", "--seeds", "0", "--offsets", "--threads", "1", "--person_frames", "20",
                           "--audio_extractor", "mel", "whisper:3", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = {(r["features"], r["predictor"], r["clip"]): r for r in json.loads(out.read_text())["rows"]}
    for features in ("mel", "whisper:3"):
        learned = rows[(features, "audio encoder, corpus-trained", "new")]
        assert learned["seeds"] == 1 and learned["corr"] > 0.6 and learned["amp"] > 0, learned  # the synthetic mouth follows the loudness
        assert (features, "audio encoder, corpus-trained, offsets applied", "new") in rows
        own = rows[(features, "ridge on its own first 20 frames", "new")]
        assert own["corr"] > 0.5 and own["lambda"] > 0, own  # 20 frames of the clip itself already carry the mapping
    assert ("-", "loudness, lag 0", "new") in rows
    assert "audio encoder" in proc.stdout and "corr" in proc.stdout
    bad = subprocess.run([sys.executable, SCRIPT, "--train", str(tmp_path / "pretrain"), "--eval", str(held_out),
                          "--person_frames", "20", "30", "--seeds", "0", "--steps", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "--person_frames" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_audio_lips_refuses_unprocessed_folders(tmp_path):
    (tmp_path / "pretrain" / "raw").mkdir(parents=True)
    proc = subprocess.run([sys.executable, SCRIPT, "--train", str(tmp_path / "pretrain"), "--eval", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "no processed clips" in proc.stderr and "Traceback" not in proc.stderr
