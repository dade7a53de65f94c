"""bench/error_regions.py splits a model's squared image error over the parsing regions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from synthetic_clip import make_clip

from instag.data.dataset import HAIR, read_masks
from instag.model.talking_head import TalkingHead

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def _run(clip, model, out):
    return subprocess.run([sys.executable, str(REPO / "bench" / "error_regions.py"), "-S", str(clip), "-M", str(model),
                           "--split", "val", "train", "--every", "1", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)


def test_region_masks_cover_every_pixel_once():
    from error_regions import REGIONS, region_masks

    masks = np.random.default_rng(0).integers(0, 8, size=(16, 16)).astype(np.uint8)
    parts = region_masks(masks)
    assert set(parts) == set(REGIONS)
    assert (sum(p.astype(int) for p in parts.values()) == 1).all()


def test_error_shares_follow_where_the_frames_differ(tmp_path):
    layout = make_clip(tmp_path / "clip", size=32, n_train=4, n_val=3, seed=2)
    model = tmp_path / "model"
    model.mkdir()
    TalkingHead.create("mel", (80, 16), 60, 40, 1, generator=torch.Generator().manual_seed(0)).save(model)
    out = tmp_path / "er.json"
    proc = _run(layout.root, model, out)
    assert proc.returncode == 0, proc.stderr
    first = json.loads(out.read_text())["results"]
    assert [r["split"] for r in first] == ["val", "train"] and first[0]["frames"] == 3 and first[1]["frames"] == 4
    for res in first:
        assert abs(sum(r["error_share"] for r in res["rows"]) - 1) < 1e-9
        mse = sum(r["mse"] * r["pixel_share"] for r in res["rows"])
        assert abs(10 * np.log10(255 ** 2 / mse) - res["psnr"]) < 1e-6
    # change the ground truth inside the hair of the validation frames: only the hair's error may move
    for i in range(4, 7):
        hair = (read_masks(layout, i) & HAIR) > 0
        gt = cv2.imread(str(layout.gt_image(i)))
        gt[hair] = 255 - gt[hair]
        cv2.imwrite(str(layout.gt_image(i)), gt)
    assert _run(layout.root, model, out).returncode == 0
    second = json.loads(out.read_text())["results"]
    before, after = ({r["region"]: r for r in res[0]["rows"]} for res in (first, second))
    moved = after["hair"]["mse"] - before["hair"]["mse"]
    assert abs(moved) > 100
    assert np.sign(after["hair"]["error_share"] - before["hair"]["error_share"]) == np.sign(moved)
    for region in ("face", "rest"):  # re-encoding the JPEG moves them a little, not like the hair
        assert abs(after[region]["mse"] - before[region]["mse"]) < abs(moved) / 10
    assert second[1]["rows"] == first[1]["rows"]  # training frames untouched


def test_missing_model_is_one_line(tmp_path):
    layout = make_clip(tmp_path / "clip", size=32, n_train=2, n_val=2)
    proc = _run(layout.root, tmp_path / "nope", tmp_path / "er.json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
