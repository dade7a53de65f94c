"""Conversational control (issue 17) measured on the rendered frames of an adapted model.

    python bench/conversation.py -S data/<ID> -M output/<ID> [--pose_clip data/<another clip of the person>]
                                 [--audio speech.wav] [--out bench/results/conversation.json]

Every figure comes from MediaPipe landmarks of the rendered frames (the renders are never encoded):

- **expression**: the same speech rendered neutral and with ``happy``, ``sad``, ``surprised`` and ``brows_up`` at
  intensity 1 from ``--span`` on; AUs by our estimator (:func:`instag.preprocess.au.estimate`) over the neutral
  and the expressive frames together (one neutral reference for both), mean over the span, for the preset's AUs;
  ``opening_corr``: mouth-opening correlation of the expressive render with the neutral one (bar >= 0.9). A
  side-by-side PNG (neutral | expressive) of the span's middle frame goes to ``--images``.
- **blinks**: ``--blink_seconds`` (60) of speech with ``--blink 12`` and ``off``; a blink is a rise of the estimated
  AU45 through :data:`BLINK_ON` after it fell below :data:`BLINK_OFF`; per minute (bar 10-14, off 0).
- **pose**: with ``--pose_clip``, the head driven by that clip: the output's head pose tracked on its landmarks
  (:func:`instag.preprocess.tracking.fit`) against the driver's, both as rotations from their own mean
  (bar <= 1 deg). Gestures (nod 8 deg, shake 10 deg, tilt 8 deg on a still head): tracked peak against the requested
  angle. Jumps: the largest frame-to-frame rotation of each tracked run (pingpong, train, driven, gestures)
  against the 99th percentile of the training clip's own steps (its ``track_params.pt``).
- **pauses**: the speech with :data:`PAUSES` pauses of ``--pause_s`` inserted; over the frames of pauses >= 0.5 s
  (the voice-activity rule of :mod:`instag.audio.activity`), the share whose mouth opening is below the person's
  closed level (:func:`instag.metrics.lips.closed_level` of the clip's landmarks), with pause handling and
  without (bar >= 0.9).
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _synthetic import RESULTS, device_name, speech, table  # noqa: E402

from instag.config import parse  # noqa: E402
from instag.data.format import EXPRESSION_AUS, FPS  # noqa: E402

EXPRESSIONS = ("happy", "sad", "surprised", "brows_up")
GESTURE_TESTS = ({"gesture": "nod", "at": 1.0, "amplitude": 8.0}, {"gesture": "shake", "at": 3.0, "amplitude": 10.0},
                 {"gesture": "tilt", "at": 5.0, "amplitude": 8.0})
BLINK_ON, BLINK_OFF = 1.5, 0.5  # estimated AU45 (0-5): closed above, open again below
PAUSES = 3
MIN_PAUSE_FRAMES = int(0.5 * FPS)


@dataclass
class BenchConfig:
    """Expression, blink, pose and pause control measured on rendered frames."""

    source_path: str = field(metadata={"flags": ("-S",), "help": "processed clip the model was adapted on"})
    model_path: str = field(metadata={"flags": ("-M",), "help": "adapted model"})
    audio: str | None = field(default=None, metadata={"help": "driving speech wav (default: the shared English test speech)"})
    seconds: float = field(default=12.0, metadata={"help": "speech used for the expression, pose and pause runs"})
    span: float = field(default=2.0, metadata={"help": "expressions start here (s) and last to the end"})
    blink_seconds: float = field(default=60.0, metadata={"help": "length of the blink runs"})
    pose_clip: str | None = field(default=None, metadata={"help": "another processed clip of the person driving the head"})
    pause_s: float = field(default=0.8, metadata={"help": "length of each inserted pause"})
    device: str | None = field(default=None, metadata={"help": "cuda or cpu (default: cuda when available)"})
    batch: int = field(default=8, metadata={"help": "frames rendered per batch"})
    images: str = field(default=str(RESULTS / "conversation"), metadata={"help": "folder of the side-by-side PNGs"})
    out: str = field(default=str(RESULTS / "conversation.json"), metadata={"help": "JSON output path"})


# ---------------------------------------------------------------------------------------- measures
def fill_missing(landmarks: np.ndarray) -> np.ndarray:
    """Landmarks [T,478,3] with frames without a face (NaN) taken from the nearest frame with one."""
    ok = np.isfinite(landmarks).all(axis=(1, 2))
    if not ok.any():
        return landmarks
    idx = np.arange(len(landmarks))
    good = idx[ok]
    nearest = good[np.abs(idx[:, None] - good[None]).argmin(1)]
    return landmarks[nearest]


def span_means(neutral: np.ndarray, expressive: np.ndarray, frames: slice) -> dict:
    """Mean estimated AUs over ``frames`` of two renders of the same audio ([T,478,3] landmarks each), estimated
    together so both share one neutral reference: ``{AU: (neutral, expressive)}``."""
    from instag.preprocess.au import estimate

    t = len(neutral)
    both = fill_missing(np.concatenate([neutral, expressive]))
    if not np.isfinite(both).all():
        return {}
    aus = estimate(both.astype(np.float32))
    return {name[:-2]: (float(v[:t][frames].mean()), float(v[t:][frames].mean())) for name, v in aus.items()}


def count_blinks(au45: np.ndarray) -> int:
    """Rises of AU45 through :data:`BLINK_ON`, each after it fell below :data:`BLINK_OFF`."""
    count, closed = 0, False
    for v in np.nan_to_num(np.asarray(au45, np.float64), nan=0.0):
        if not closed and v >= BLINK_ON:
            count, closed = count + 1, True
        elif closed and v < BLINK_OFF:
            closed = False
    return count


def pause_mask(silent: np.ndarray, min_frames: int = MIN_PAUSE_FRAMES) -> np.ndarray:
    """The frames of silent runs of at least ``min_frames``."""
    mask = np.zeros(len(silent), bool)
    k = 0
    while k < len(silent):
        if silent[k]:
            e = k
            while e < len(silent) and silent[e]:
                e += 1
            if e - k >= min_frames:
                mask[k:e] = True
            k = e
        else:
            k += 1
    return mask


def with_pauses(samples: np.ndarray, count: int, seconds: float, seed: int = 0) -> np.ndarray:
    """``samples`` with ``count`` pauses of ``seconds`` (a -70 dBFS noise floor) inserted at even spacing."""
    rng = np.random.default_rng(seed)
    cuts = np.linspace(0, samples.size, count + 2)[1:-1].astype(int)
    pieces, last = [], 0
    for c in cuts:
        pieces += [samples[last:c], (3e-4 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)]
        last = c
    return np.concatenate(pieces + [samples[last:]]).astype(np.float32)


def relative_rotations(rots: np.ndarray) -> np.ndarray:
    from instag.infer.pose import mean_rotation

    return np.einsum("ji,njk->nik", mean_rotation(rots), rots)


def tracked_rotations(landmarks: np.ndarray, width: int, height: int) -> np.ndarray | None:
    """Head rotations [T,3,3] (OpenCV camera, our head frame) tracked on rendered landmarks, None without faces."""
    import torch

    from instag.preprocess.tracking import fit, rotvec_to_matrix

    filled = fill_missing(landmarks)
    if not np.isfinite(filled).all():
        return None
    result = fit(filled.astype(np.float32), width, height)
    return rotvec_to_matrix(torch.as_tensor(result["rotvec_cv"], dtype=torch.float64)).numpy()


# ---------------------------------------------------------------------------------------- rendering
class Renders:
    """Renders a performance of the model on its clip and keeps the landmarks of every frame."""

    def __init__(self, cfg: BenchConfig):
        from instag.data.dataset import load_clip
        from instag.infer.synthesize import Backgrounds, load_model
        from instag.preprocess.landmarks import FaceMeshDetector

        self.cfg = cfg
        self.model = load_model(cfg.model_path, None, cfg.device)
        self.clip = load_clip(cfg.source_path, "train", self.model.audio_extractor)
        cam = self.clip.frames[0].camera
        self.size = (cam.height, cam.width)
        self.backgrounds = Backgrounds(self.clip.layout, self.size)
        self.detector = FaceMeshDetector(video=False, max_faces=1)

    def run(self, wav: Path, performance, pauses: bool = True, keep: tuple[int, ...] = ()) -> dict:
        """``{"landmarks": [T,478,3] (NaN without a face), "frames": {k: RGB of kept frames}, "silent": [T] pause flags}``."""
        from instag.infer.features import audio_items
        from instag.infer.synthesize import Director, pause_flags, render_frames

        items, info = audio_items(wav, self.model.audio_extractor)
        n = int(items.shape[0])
        director = Director(self.clip, performance, 0, pauses)
        silent = pause_flags(info, n)
        items = director.quiet_items(items, silent if pauses else None, self.model.audio_extractor)
        plan = director.plan(0, n, silent if pauses else None)
        landmarks = np.full((n, 478, 3), np.nan, np.float32)
        kept = {}
        for k, rgb in enumerate(render_frames(self.model, plan, items, self.backgrounds, True, self.cfg.batch)):
            found = self.detector.detect(np.ascontiguousarray(rgb[:, :, ::-1]))
            if found is not None:
                landmarks[k] = found
            if k in keep:
                kept[k] = rgb
        return {"landmarks": landmarks, "frames": kept, "silent": silent}


def _wav(samples: np.ndarray, folder: Path, name: str) -> Path:
    from instag.io.wav import write_wav

    path = folder / f"{name}.wav"
    write_wav(path, samples, 16000)
    return path


def _speech(cfg: BenchConfig, seconds: float) -> np.ndarray:
    if cfg.audio is None:
        return speech(seconds)
    from instag.io.wav import load_audio_16k_mono

    x = load_audio_16k_mono(cfg.audio)
    reps = int(np.ceil(seconds * 16000 / max(x.size, 1)))
    return np.tile(x, reps)[: int(seconds * 16000)]


def expression_rows(r: Renders, wav: Path, cfg: BenchConfig) -> tuple[list[dict], dict]:
    import cv2

    from instag.infer.performance import PRESETS, Performance, parse_expression_arg
    from instag.metrics.lips import mouth_opening, pearson

    n_mid = int((cfg.span + (cfg.seconds - cfg.span) / 2) * FPS)
    neutral = r.run(wav, Performance(), keep=(n_mid,))
    span = slice(int(cfg.span * FPS) + int(0.5 * FPS), None)  # after the onset ramp
    rows, runs = [], {"neutral": neutral}
    for name in EXPRESSIONS:
        run = r.run(wav, Performance(parse_expression_arg(f"{name}:1@{cfg.span}")), keep=(n_mid,))
        runs[name] = run
        means = span_means(neutral["landmarks"], run["landmarks"], span)
        row = {"expression": name, "opening_corr": pearson(mouth_opening(neutral["landmarks"]), mouth_opening(run["landmarks"]))}
        for au in PRESETS[name]:
            if au in means:
                row[f"{au}_neutral"], row[f"{au}_expr"] = means[au]
        rows.append(row)
        if n_mid in run["frames"] and n_mid in neutral["frames"]:
            Path(cfg.images).mkdir(parents=True, exist_ok=True)
            pair = np.concatenate([neutral["frames"][n_mid], run["frames"][n_mid]], axis=1)
            cv2.imwrite(str(Path(cfg.images) / f"neutral_vs_{name}.png"), pair[:, :, ::-1])
    return rows, runs


def blink_rows(r: Renders, wav: Path) -> list[dict]:
    from instag.infer.performance import Performance
    from instag.preprocess.au import estimate

    rows = []
    for setting in ("12", "off"):
        run = r.run(wav, Performance(blink=setting))
        filled = fill_missing(run["landmarks"])
        seconds = len(filled) / FPS
        blinks = count_blinks(estimate(filled)["AU45_r"]) if np.isfinite(filled).all() else None
        rows.append({"blink": setting, "seconds": seconds, "blinks": blinks,
                     "per_minute": None if blinks is None else 60.0 * blinks / seconds})
    return rows


def pose_rows(r: Renders, wav: Path, cfg: BenchConfig, pingpong_run: dict) -> list[dict]:
    from instag.data.format import DatasetLayout
    from instag.infer.performance import Performance, parse_event
    from instag.infer.pose import (
        head_angles_deg,
        load_pose_file,
        max_step_deg,
        mean_rotation,
        pingpong,
        rotation_angle_deg,
    )
    from instag.preprocess.tracking import head_to_camera_cv, load

    layout = DatasetLayout.of(cfg.source_path)
    own_p99 = None
    if layout.track_params.exists():
        own_rots, _ = head_to_camera_cv(load(layout))
        own_p99 = float(np.percentile(max_step_deg(own_rots), 99))
    h, w = r.size
    runs = {"pingpong": pingpong_run, "train": r.run(wav, Performance(pose="train"))}
    gestures = Performance(pose="still")
    for k, event in enumerate(GESTURE_TESTS):
        gestures.add(parse_event(event, f"gesture test {k}"))
    runs["gestures"] = r.run(wav, gestures)
    if cfg.pose_clip:
        runs["driven"] = r.run(wav, Performance(pose=cfg.pose_clip))
    rows = []
    for name, run in runs.items():
        rots = tracked_rotations(run["landmarks"], w, h)
        row = {"run": name, "clip_p99_step_deg": own_p99}
        if rots is None:
            rows.append(row)
            continue
        row["max_step_deg"] = float(max_step_deg(rots).max())
        if name == "driven":
            driver, _ = load_pose_file(cfg.pose_clip).motion()
            expected = driver[pingpong(np.arange(len(rots)), len(driver))]
            err = rotation_angle_deg(relative_rotations(rots), relative_rotations(expected))
            row.update(rotation_error_mean_deg=float(err.mean()), rotation_error_p95_deg=float(np.percentile(err, 95)))
        if name == "gestures":
            angles = head_angles_deg(rots, mean_rotation(rots[: int(0.8 * FPS)]))  # before the first gesture
            for g in gestures.gestures:
                axis = {"nod": 0, "shake": 1, "tilt": 2}[g.kind]
                window = slice(int(g.start * FPS), int((g.start + g.duration) * FPS) + 1)
                row[f"{g.kind}_deg"] = float(np.abs(angles[window, axis]).max())
                row[f"{g.kind}_asked_deg"] = abs(g.amplitude)
        rows.append(row)
    return rows


def pause_rows(r: Renders, wav: Path, cfg: BenchConfig) -> list[dict]:
    from instag.infer.performance import Performance
    from instag.io.safe_load import load_npy
    from instag.metrics.lips import closed_level, mouth_opening

    level = closed_level(mouth_opening(load_npy(r.clip.layout.landmarks, "rerun the landmark step")))
    rows = []
    for pauses in (True, False):
        run = r.run(wav, Performance(), pauses=pauses)
        mask = pause_mask(run["silent"]) if run["silent"] is not None else np.zeros(0, bool)
        opening = mouth_opening(run["landmarks"])[mask]
        opening = opening[np.isfinite(opening)]
        rows.append({"pauses": pauses, "pause_frames": int(mask.sum()), "closed_level": level,
                     "closed_share": float((opening < level).mean()) if opening.size else None})
    return rows


def main(argv: list[str] | None = None) -> int:
    from instag.io.atomic import write_json

    cfg = parse(BenchConfig, argv, prog="bench/conversation.py")
    r = Renders(cfg)
    with tempfile.TemporaryDirectory(prefix="instag-bench-") as tmp:
        tmp = Path(tmp)
        base = _speech(cfg, cfg.seconds)
        wav = _wav(base, tmp, "speech")
        expression, runs = expression_rows(r, wav, cfg)
        blinks = blink_rows(r, _wav(_speech(cfg, cfg.blink_seconds), tmp, "long"))
        pose = pose_rows(r, wav, cfg, runs["neutral"])
        pauses = pause_rows(r, _wav(with_pauses(base, PAUSES, cfg.pause_s), tmp, "pauses"), cfg)
    info = {"device": device_name(), "model": cfg.model_path, "data": cfg.source_path, "aus": list(EXPRESSION_AUS),
            "expression": expression, "blinks": blinks, "pose": pose, "pauses": pauses,
            "bars": {"opening_corr": 0.9, "blinks_per_minute_at_12": [10, 14], "driven_rotation_error_deg": 1.0,
                     "closed_share_in_pauses": 0.9}}
    print(f"conversational control on {info['device']} ({cfg.model_path})")
    keys = sorted({k for row in expression for k in row} - {"expression", "opening_corr"})
    print(table(expression, ["expression", "opening_corr", *keys]))
    print(table(blinks, ["blink", "seconds", "blinks", "per_minute"]))
    print(table(pose, sorted({k for row in pose for k in row}, key=lambda k: (k != "run", k))))
    print(table(pauses, ["pauses", "pause_frames", "closed_level", "closed_share"]))
    write_json(cfg.out, info)
    print(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
