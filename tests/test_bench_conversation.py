"""bench/conversation.py: its measures on constructed inputs, and a run end to end on a tiny clip (CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from synthetic_clip import make_clip

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def test_blink_count_needs_the_eye_to_open_again():
    from conversation import count_blinks

    au45 = np.array([0, 2, 2, 1, 2, 0.2, 0, 3, 0.4, 2.5, np.nan, 0])
    assert count_blinks(au45) == 3  # 1 -> 2 without reopening below 0.5 is the same blink


def test_pause_mask_keeps_runs_of_half_a_second():
    from conversation import pause_mask

    silent = np.zeros(60, bool)
    silent[5:15] = True  # 0.4 s: too short
    silent[20:33] = True  # 0.52 s
    mask = pause_mask(silent)
    assert mask[20:33].all() and mask.sum() == 13


def test_inserted_pauses_are_found_by_the_voice_activity_rule():
    from conversation import pause_mask, with_pauses
    from synthetic_clip import speech

    from instag.audio.activity import silent_frames

    samples = speech(100, seed=1)[0]
    paused = with_pauses(samples, 3, 0.8)
    assert paused.size == samples.size + 3 * 12800
    mask = pause_mask(silent_frames(paused, paused.size // 640))
    assert 3 * 12 <= mask.sum() <= 3 * 20


def test_span_means_share_the_neutral_reference():
    from conversation import span_means

    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, (1, 478, 3)).astype(np.float32) * 30 + 200
    for point, (x, y) in {33: (150, 180), 263: (250, 180), 61: (175, 270), 291: (225, 270), 17: (200, 290),
                          0: (200, 255), 13: (200, 262), 14: (200, 275)}.items():  # eyes, mouth corners, lips
        base[0, point, :2] = (x, y)
    neutral = np.repeat(base, 20, 0) + rng.normal(0, 0.05, (20, 478, 3)).astype(np.float32)
    smiling = neutral.copy()
    for corner, side in ((61, -1), (291, 1)):  # mouth corners out and up
        smiling[:, corner, 0] += side * 4
        smiling[:, corner, 1] -= 4
    means = span_means(neutral, smiling, slice(5, None))
    assert means["AU12"][1] > means["AU12"][0] + 1.0 and abs(means["AU04"][1] - means["AU04"][0]) < 0.2


def test_bench_runs_end_to_end(tmp_path):
    from instag.model.talking_head import TalkingHead

    layout = make_clip(tmp_path / "clip", size=48, n_train=20, n_val=4)
    model = tmp_path / "model"
    TalkingHead.create("mel", (80, 16), 80, 40, 1, generator=torch.Generator().manual_seed(0)).save(model)
    out = tmp_path / "conv.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "conversation.py"), "-S", str(layout.root), "-M", str(model),
                           "--seconds", "1.6", "--span", "0.4", "--blink_seconds", "1.2", "--pause_s", "0.8",
                           "--device", "cpu", "--images", str(tmp_path / "img"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert [r["expression"] for r in res["expression"]] == ["happy", "sad", "surprised", "brows_up"]
    assert [r["blink"] for r in res["blinks"]] == ["12", "off"] and [r["run"] for r in res["pose"]] == ["pingpong", "train", "gestures"]
    assert res["pauses"][0]["pauses"] is True and res["pauses"][0]["pause_frames"] >= 3 * 12
    assert "closed_share" in res["pauses"][1]
