"""Shared pieces of the synthesis benchmarks (not a benchmark itself).

A device machine carries no dataset, so the benchmarks can build a synthetic processed clip
(``data/<ID>`` layout: smooth background plate, torso RGBA, 68-point landmarks, AU csv, mel
features of a speech-like signal) and a randomly initialised head of realistic size. Timings of
features, rendering, encoding and muxing do not depend on what the pixels show, except that
x264 spends a little more on real footage than on smooth synthetic frames.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import cv2
import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_SPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "audio" / "synctalk_test_en.wav"


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()})"


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like 16 kHz float32 samples: a shared-data recording when present, else a gated buzz."""
    n = int(round(seconds * 16000))
    if SHARED_SPEECH.exists():
        from instag.io.wav import load_audio_16k_mono

        x = load_audio_16k_mono(SHARED_SPEECH)
        if x.size >= n:
            return x[:n].astype(np.float32)
    t = np.arange(n) / 16000
    gate = 0.5 + 0.5 * np.sin(2 * np.pi * 3.7 * t)
    rng = np.random.default_rng(seed)
    voice = np.sign(np.sin(2 * np.pi * (120 + 30 * np.sin(2 * np.pi * 0.5 * t)) * t))
    return (0.25 * gate * voice + 0.02 * rng.standard_normal(n)).astype(np.float32)


def _c2w(yaw: float, pitch: float) -> list[list[float]]:
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    rot = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]) @ np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = rot @ np.array([0.0, 0.0, 0.7])
    return m.tolist()


def make_clip(root: Path, n_train: int = 250, n_val: int = 300, size: int = 512, seed: int = 0, parsing: bool = False) -> Path:
    """Write a synthetic processed clip under ``root``; returns it. ``parsing`` also writes the parsing maps that
    training reads (head ellipse, inside of the mouth)."""
    from instag.audio.mel import MelExtractor
    from instag.data.format import DatasetLayout
    from instag.io.atomic import save_npy
    from instag.io.wav import write_wav
    from instag.preprocess.au import write_au_csv

    layout = DatasetLayout.of(root)
    n = n_train + n_val
    for d in (layout.gt_dir, layout.ori_dir, layout.torso_dir):
        d.mkdir(parents=True, exist_ok=True)
    if parsing:
        from instag.data.format import PARSING_BGR

        layout.parsing(0).parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    plate = np.stack([120 + 60 * xx, 110 + 50 * yy, 150 - 40 * xx * yy], -1).astype(np.uint8)
    cv2.imwrite(str(layout.background), plate)
    rng = np.random.default_rng(seed)
    base = np.stack([np.linspace(0.3, 0.7, 68), 0.35 + 0.3 * np.abs(np.sin(np.linspace(0, 3, 68)))], 1) * size
    for i in range(n):
        sway = 4 * math.sin(i / 20)
        torso = np.zeros((size, size, 4), np.uint8)
        cv2.ellipse(torso, (int(size / 2 + sway), size), (int(size * 0.42), int(size * 0.25)), 0, 180, 360,
                    (70, 60, 160, 255), -1)
        cv2.imwrite(str(layout.torso_image(i)), torso)
        a = torso[..., 3:4].astype(np.float32) / 255
        gt = (torso[..., :3] * a + plate * (1 - a)).astype(np.uint8)
        cv2.ellipse(gt, (size // 2, int(size * 0.45)), (int(size * 0.16), int(size * 0.22)), 0, 0, 360, (140, 160, 205), -1)
        cv2.imwrite(str(layout.gt_image(i)), gt)
        if parsing:
            labels = np.full((size, size, 3), PARSING_BGR["background"], np.uint8)
            centre, axes = (size // 2, int(size * 0.45)), (int(size * 0.16), int(size * 0.22))
            cv2.ellipse(labels, centre, axes, 0, 0, 360, PARSING_BGR["head"], -1)
            gap = int(size * (0.01 + 0.02 * (1 + math.sin(i / 3))))
            cv2.ellipse(labels, (size // 2, int(size * 0.55)), (int(size * 0.05), gap), 0, 0, 360, PARSING_BGR["mouth"], -1)
            cv2.imwrite(str(layout.parsing(i)), labels)
        np.savetxt(layout.lms(i), base + rng.normal(0, 0.5, base.shape))
    samples = speech(n / 25, seed)
    write_wav(layout.audio_wav, samples, 16000)
    save_npy(layout.audio_features("mel"), MelExtractor().extract(samples, n))
    au = {f"{k}_r": rng.uniform(0, 1, n).astype(np.float32) for k in ("AU01", "AU04", "AU05", "AU06", "AU07", "AU25")}
    au["AU45_r"] = np.where(np.arange(n) % 80 < 6, 2.0, 0.1).astype(np.float32)
    write_au_csv(layout.au_csv, au)
    for split, ids in (("train", range(n_train)), ("val", range(n_train, n))):
        frames = [{"img_id": i, "aud_id": i, "transform_matrix": _c2w(0.05 * math.sin(i / 30), 0.03 * math.sin(i / 17))}
                  for i in ids]
        (root / f"transforms_{split}.json").write_text(json.dumps(
            {"focal_len": 1100.0 * size / 512, "cx": size / 2, "cy": size / 2, "frames": frames}))
    return root


def random_model(model_dir: Path, face: int = 20000, mouth: int = 5000, seed: int = 0) -> Path:
    """A randomly initialised fused head (mel) saved as ``chkpnt_fuse_latest``."""
    from instag.model.talking_head import TalkingHead

    head = TalkingHead.create("mel", (80, 16), face_init=face, mouth_init=mouth, generator=torch.Generator().manual_seed(seed))
    head.save(model_dir)
    return model_dir


def model_counts(model_path: Path) -> dict:
    from instag.model.talking_head import TalkingHead

    head = TalkingHead.load(model_path, device="cpu")
    return {"face_gaussians": int(head.face.xyz.shape[0]), "mouth_gaussians": int(head.mouth.xyz.shape[0]),
            "audio_extractor": head.audio_extractor}


def table(rows: list[dict], keys: list[str]) -> str:
    widths = {k: max(len(k), *(len(_fmt(r.get(k))) for r in rows)) for k in keys}
    lines = ["  ".join(k.rjust(widths[k]) for k in keys)]
    lines += ["  ".join(_fmt(r.get(k)).rjust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)
