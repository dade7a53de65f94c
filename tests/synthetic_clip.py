"""A generated processed clip (data/<ID> layout) for fast training tests: a drawn face whose mouth
opens with a synthetic audio envelope, parsing masks, torso, landmarks, AUs and mel features."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

from instag.data.format import PARSING_BGR, DatasetLayout


def c2w(yaw: float) -> list[list[float]]:
    """Camera-to-world (OpenGL axes) 0.7 units in front of the head, turned by ``yaw``."""
    c, s = math.cos(yaw), math.sin(yaw)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = rot @ np.array([0.0, 0.0, 0.7])
    return m.tolist()


def speech(n_frames: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """16 kHz samples and the per-frame loudness envelope in [0,1] that drives the mouth."""
    rng = np.random.default_rng(seed)
    env = np.clip(0.5 + 0.5 * np.sin(np.arange(n_frames) * 0.9 + seed) + 0.1 * rng.standard_normal(n_frames), 0, 1)
    t = np.arange(n_frames * 640) / 16000
    gate = np.repeat(env, 640)
    samples = 0.4 * gate * np.sign(np.sin(2 * np.pi * 150 * t)) + 0.005 * rng.standard_normal(t.size)
    return samples.astype(np.float32), env.astype(np.float32)


def make_clip(root: Path, size: int = 64, n_train: int = 16, n_val: int = 8, seed: int = 0, teeth: bool = True) -> DatasetLayout:
    from instag.audio.mel import MelExtractor
    from instag.data.maps import write_mask
    from instag.io.atomic import save_npy
    from instag.io.wav import write_wav
    from instag.preprocess.au import write_au_csv

    layout = DatasetLayout.of(root)
    n = n_train + n_val
    for d in (layout.gt_dir, layout.ori_dir, layout.torso_dir, layout.parsing_dir, layout.teeth_dir):
        d.mkdir(parents=True, exist_ok=True)
    samples, env = speech(n, seed)
    write_wav(layout.audio_wav, samples, 16000)
    save_npy(layout.audio_features("mel"), MelExtractor().extract(samples, n))
    plate = np.full((size, size, 3), 200, np.uint8)
    cv2.imwrite(str(layout.background), plate)
    c = size / 2
    landmarks = np.zeros((n, 478, 3), np.float32)
    for i in range(n):
        gap = 1 + 6 * env[i] * size / 64
        img = plate.copy()
        parsing = np.full((size, size, 3), PARSING_BGR["background"], np.uint8)
        cv2.ellipse(parsing, (int(c), int(c)), (int(size * 0.28), int(size * 0.36)), 0, 0, 360, PARSING_BGR["head"], -1)
        cv2.ellipse(parsing, (int(c), int(c - size * 0.3)), (int(size * 0.3), int(size * 0.12)), 0, 180, 360, PARSING_BGR["hair"], -1)
        mouth_c = (int(c), int(c + size * 0.18))
        cv2.ellipse(parsing, mouth_c, (int(size * 0.1), max(1, int(gap))), 0, 0, 360, PARSING_BGR["mouth"], -1)
        cv2.rectangle(parsing, (0, int(size * 0.85)), (size, size), PARSING_BGR["torso"], -1)
        colours = {"head": (120, 150, 210), "hair": (30, 30, 40), "mouth": (40, 20, 90), "torso": (150, 60, 60)}
        for name, col in colours.items():
            img[(parsing == PARSING_BGR[name]).all(-1)] = col
        tm = np.zeros((size, size), bool)
        if teeth and gap > 3:
            tm[mouth_c[1] - int(gap) : mouth_c[1] - int(gap) + 2, mouth_c[0] - 3 : mouth_c[0] + 3] = True
            img[tm] = (240, 240, 240)
        write_mask(layout.teeth_mask(i), tm)
        cv2.imwrite(str(layout.gt_image(i)), img)
        cv2.imwrite(str(layout.ori_image(i)), img)
        cv2.imwrite(str(layout.parsing(i)), parsing)
        torso = np.zeros((size, size, 4), np.uint8)
        torso[int(size * 0.85) :, :, :3] = (150, 60, 60)
        torso[int(size * 0.85) :, :, 3] = 255
        cv2.imwrite(str(layout.torso_image(i)), torso)
        lms = np.zeros((68, 2), np.float32)
        lms[:, 0] = np.linspace(c - 12, c + 12, 68)
        lms[:, 1] = c
        ang = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        lms[48:60, 0] = mouth_c[0] + size * 0.12 * np.cos(ang)
        lms[48:60, 1] = mouth_c[1] + (gap + 2) * np.sin(ang)
        ang8 = np.linspace(0, 2 * np.pi, 8, endpoint=False)
        lms[60:68, 0] = mouth_c[0] + size * 0.08 * np.cos(ang8)
        lms[60:68, 1] = mouth_c[1] + gap * np.sin(ang8)
        np.savetxt(layout.lms(i), lms)
        landmarks[i, :, 0] = c
        landmarks[i, :, 1] = c
        landmarks[i, 33, 0], landmarks[i, 263, 0] = c - 10, c + 10
        landmarks[i, 13, 1], landmarks[i, 14, 1] = mouth_c[1] - gap, mouth_c[1] + gap
        landmarks[i, [0, 37, 267], 1] = mouth_c[1] - gap - 2
        landmarks[i, [17, 84, 314], 1] = mouth_c[1] + gap + 2
    np.save(layout.landmarks, landmarks)
    rng = np.random.default_rng(seed)
    au = {f"{a}_r": rng.uniform(0, 1, n).astype(np.float32) for a in ("AU01", "AU04", "AU05", "AU06", "AU07")}
    au["AU25_r"] = (env * 3).astype(np.float32)
    au["AU45_r"] = np.where(np.arange(n) % 9 == 4, 2.0, 0.1).astype(np.float32)
    write_au_csv(layout.au_csv, au)
    focal = size * 1.2
    for split, ids in (("train", range(n_train)), ("val", range(n_train, n))):
        frames = [{"img_id": i, "aud_id": i, "transform_matrix": c2w(0.03 * math.sin(i))} for i in ids]
        layout.transforms(split).write_text(json.dumps({"focal_len": focal, "cx": c, "cy": c, "frames": frames}))
    return layout
