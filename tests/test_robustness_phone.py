"""Phone videos (issue 14): a portrait clip stored as landscape with a display-rotation flag.

Phones film portrait as landscape frames plus a flag saying "turn by 90° when showing". ffmpeg turns the
picture when it decodes, so the frames are portrait: ``probe`` must report the turned size, or every
decoded frame is cut at the wrong width and no face is found. The clip is a real cut of ``../shared/data``.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from badinputs import CLIP, X264, ffmpeg, needs_data, read_frames, run_cli

pytestmark = needs_data


@pytest.fixture(scope="module")
def phone(tmp_path_factory) -> dict[str, Path]:
    """``upright``: a 288x512 portrait cut; ``rotated``: the same picture stored 512x288 (turned a quarter to the
    left) with a display rotation of -90°, as a phone writes it."""
    root = tmp_path_factory.mktemp("phone")
    upright, coded, rotated = root / "upright.mp4", root / "coded.mp4", root / "clip" / "clip.mp4"
    ffmpeg("-i", str(CLIP), "-t", "1.2", "-vf", "crop=288:512:112:0", *X264, "-c:a", "aac", str(upright))
    ffmpeg("-i", str(upright), "-vf", "transpose=2", *X264, "-c:a", "copy", str(coded))
    rotated.parent.mkdir()
    ffmpeg("-display_rotation:v:0", "-90", "-i", str(coded), "-c", "copy", str(rotated))
    return {"upright": upright, "rotated": rotated}


def test_probe_reports_the_displayed_size(phone):
    from instag.io.video import iter_frames, probe

    info = probe(phone["rotated"])
    assert (info.width, info.height, info.rotation) == (288, 512, 270)
    assert "rotation" not in probe(phone["upright"]).as_dict()  # records of unrotated videos are as before
    decoded = next(iter_frames(info))
    expected = read_frames(phone["upright"])[0]
    assert decoded.shape == (512, 288, 3) and np.abs(decoded.astype(int) - expected).mean() < 6


def test_process_finds_the_face_in_a_rotated_clip(phone):
    proc = run_cli("process", str(phone["rotated"]))
    assert proc.returncode == 0, proc.stderr
    folder = phone["rotated"].parent
    crop = json.loads((folder / "crop.json").read_text())
    assert crop["source_size"] == [288, 512] and crop["applied"]
    x, y, side, _ = crop["box"]
    source = read_frames(phone["upright"])[0][y : y + side, x : x + side]
    frame = cv2.imread(str(folder / "ori_imgs" / "0.jpg"))
    expected = cv2.resize(source, frame.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(frame.astype(int) - expected).mean() < 8  # the upright face, not a garbled picture
    landmarks = np.load(folder / "landmarks.npy")
    assert landmarks.shape == (30, 478, 3) and np.isfinite(landmarks).all()
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["source"]["rotation"] == 270 and meta["num_frames"] == 30
