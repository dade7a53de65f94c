"""Lip sync on the user's path (DESIGN §4): the validation stretch of the clip's own wav, cut out and padded with
1 s of digital silence, goes through what ``synthesize`` does (feature extraction from the samples, pause handling,
delivery controls) and the rendered mouth is scored against the ground truth of the same frames; then the same with
the voice changed and the timing kept (:data:`instag.audio.voice.VOICE_CHANGES`).

Rows: ``precomputed`` (the clip's feature file, what ``evaluate`` renders), ``new audio`` (the cut through the
synthesis path), one row per voice change, and ``static`` (digital silence throughout). Each row: mouth-opening
correlation and mouth_amp against the ground truth, LMD, closed_in_silence on the clip's own pauses (the
voice-activity rule on the cut) and on the digital silence before and after it (the padding frames are rendered with
the first and last validation cameras).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from instag.data.format import AUDIO_SAMPLE_RATE, FPS
from instag.errors import InstagError

PAD_SECONDS = 1.0
SAMPLES_PER_FRAME = AUDIO_SAMPLE_RATE // FPS


def _padded_plan(plan, pad: int):
    """The validation plan with ``pad`` frames of its first and last camera/background/AUs before and after."""
    from instag.infer.synthesize import Plan

    n = len(plan)
    pos = [0] * pad + list(range(n)) + [n - 1] * pad
    return Plan([plan.cameras[p] for p in pos], [plan.background_index[p] for p in pos],
                plan.au_exp[pos], list(range(len(pos))))


def _openings(frames, detector) -> tuple[np.ndarray, np.ndarray]:
    """Mouth opening per frame [n] and landmarks [n, 478, 3] (NaN where no face is found)."""
    from instag.metrics.lips import mouth_opening

    lms = []
    for rgb in frames:
        lm = detector(rgb)
        lms.append(np.full((478, 3), np.nan) if lm is None else np.asarray(lm, np.float64))
    lms = np.stack(lms) if lms else np.zeros((0, 478, 3))
    return np.array([mouth_opening(lm) if np.isfinite(lm).all() else np.nan for lm in lms]), lms


def evaluate_new_audio(source_path: str | Path, model_path: str | Path, *, voices: bool = True, dilate: bool = False,
                       batch: int = 8, device: str | None = None, log=print, progress: bool = True) -> dict:
    """Score the model's mouth on the validation split through the synthesis path; returns
    ``{"rows": {name: metrics}, "frames": n, "silent_frames": ..., "closed_level": ...}``."""
    from tqdm import tqdm

    from instag.audio.activity import silent_frames
    from instag.audio.voice import VOICE_CHANGES
    from instag.data.dataset import load_clip
    from instag.infer.delivery import Controls, mouth_scaler
    from instag.infer.features import items_from_samples, silence_items
    from instag.infer.synthesize import Backgrounds, Director, render_frames
    from instag.io.wav import load_audio_16k_mono
    from instag.metrics.lips import closed_in_silence, lmd, mouth_amp, pearson
    from instag.metrics.scoring import Detector, load_split, person_closed_level, read_ground_truth

    layout, model, plan, clip_items = load_split(source_path, model_path, "val", -1, device)
    if not layout.audio_wav.exists():
        raise InstagError(f"{layout.audio_wav}: missing; the new-audio evaluation cuts the clip's own speech from it")
    extractor = model.audio_extractor
    audio = load_audio_16k_mono(layout.audio_wav)
    first, n = plan.audio_index[0], len(plan)
    if list(plan.audio_index) != list(range(first, first + n)):
        raise InstagError(f"{layout.root}: the validation frames are not one stretch of the clip; the new-audio "
                          "evaluation needs contiguous frames (python data_utils/split.py)")
    cut = np.zeros(n * SAMPLES_PER_FRAME, np.float32)
    piece = audio[first * SAMPLES_PER_FRAME : (first + n) * SAMPLES_PER_FRAME]
    cut[: piece.size] = piece
    pad = int(round(PAD_SECONDS * FPS))
    zeros = np.zeros(pad * SAMPLES_PER_FRAME, np.float32)
    train_clip = load_clip(layout.root, "train", extractor)
    controls = Controls()
    director = Director(train_clip, None, 0, True, controls)
    mouth = mouth_scaler(model, train_clip, controls)
    padded_plan = _padded_plan(plan, pad)
    cam0 = plan.cameras[0]
    size = (cam0.height, cam0.width)
    backgrounds = Backgrounds(layout, size)
    detector = Detector()
    if detector.note:
        raise InstagError(detector.note)
    level = person_closed_level(layout)
    pauses = silent_frames(cut, n)
    digital = np.zeros(2 * pad + n, bool)
    digital[:pad] = digital[pad + n :] = True
    log(f"instag evaluate: new-audio path on {n} validation frames of {layout.root} (+{pad} frames of digital silence "
        f"on each side; {int(pauses.sum())} frames in the clip's own pauses)")
    try:
        gt_frames = [np.ascontiguousarray(read_ground_truth(layout, i, size)[:, :, ::-1]) for i in plan.background_index]
        gt_open, gt_lms = _openings(gt_frames, detector)
        sources = {"precomputed": None, "new audio": lambda x: x}
        if voices:
            sources.update(VOICE_CHANGES)
        sources["static"] = lambda x: np.zeros_like(x)
        rows = {}
        bar = tqdm(total=len(sources), desc="new-audio rows", unit="row", file=sys.stderr, disable=not progress)
        for name, change in sources.items():
            if change is None:  # the clip's own feature file, with the same padding as silence items
                quiet = silence_items(pad, extractor)
                items = torch.cat([quiet, clip_items, quiet])
            else:
                samples = np.concatenate([zeros, change(cut).astype(np.float32), zeros])
                items, _ = items_from_samples(samples, extractor)
                items = items[: 2 * pad + n]
                silent = silent_frames(samples, items.shape[0])
                items = director.quiet_items(items, silent, extractor)
            frames = list(render_frames(model, padded_plan, items, backgrounds, dilate, batch, mouth=mouth))
            opening, lms = _openings(frames, detector)
            speech_open = opening[pad : pad + n]
            ok = np.isfinite(speech_open) & np.isfinite(gt_open)
            rows[name] = {
                "mouth_corr": pearson(speech_open[ok], gt_open[ok]) if ok.sum() > 2 else 0.0,
                "mouth_amp": mouth_amp(speech_open, gt_open),
                "lmd": lmd(lms[pad : pad + n], gt_lms, size[1]),
                "closed_in_pauses": closed_in_silence(speech_open, pauses, level),
                "closed_in_digital_silence": closed_in_silence(opening, digital, level),
                "mean_opening": float(np.nanmean(speech_open)),
                "mean_opening_digital_silence": float(np.nanmean(opening[digital])),
                "frames_with_face": int(np.isfinite(opening).sum()),
            }
            bar.update(1)
        bar.close()
    finally:
        backgrounds.close()
        detector.close()
    rows["ground truth"] = {"mouth_corr": 1.0, "mouth_amp": 1.0, "lmd": 0.0,
                            "closed_in_pauses": closed_in_silence(gt_open, pauses, level),
                            "closed_in_digital_silence": None, "mean_opening": float(np.nanmean(gt_open)),
                            "mean_opening_digital_silence": None}
    return {"frames": n, "pad_frames": pad, "pause_frames": int(pauses.sum()), "closed_level": level,
            "audio_extractor": extractor, "rows": rows}


def format_rows(result: dict) -> str:
    cols = ["mouth_corr", "mouth_amp", "lmd", "closed_in_pauses", "closed_in_digital_silence", "mean_opening"]
    width = max(len(k) for k in result["rows"]) + 2
    lines = [" " * width + "".join(f"{c:>27}" for c in cols)]
    for name, row in result["rows"].items():
        cells = "".join(f"{'-' if row.get(c) is None else f'{row[c]:.3f}':>27}" for c in cols)
        lines.append(f"{name:<{width}}{cells}")
    return "\n".join(lines)
