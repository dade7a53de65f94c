"""``instag evaluate``: metrics of a trained model on its validation split, or between two videos.

- ``instag evaluate -S data/<ID> -M output/<ID>``: renders the validation split twice through the
  synthesis path (:func:`instag.infer.synthesize.render_frames`): driven by the clip's audio
  ("ours") and by silence ("static", the same model and poses), with torso and background from
  the ground truth; computes every metric on the rendered frames before encoding, against
  ``gt_imgs``; writes ``output/<ID>/test/ours_None/``: ``renders/<k>.png`` and ``renders/out.mp4``
  (with the test audio), ``metrics.json``, ``side_by_side.mp4`` (ground truth | ours | static)
  and ``mouth_opening.png``; prints a table. ``--split train --N_views N`` scores the first N
  training frames instead (into ``output/<ID>/train/ours_None/``): how well the model fits what it
  saw, to tell a model that cannot fit the mouth from one that does not generalise.
- ``instag evaluate --pred a.mp4 --gt b.mp4``: the same metrics between two videos (upstream's
  metrics.py role), frame by frame up to the shorter one.
- ``instag evaluate --pred synth.mp4`` alone (new audio, no ground truth): mouth opening per frame
  against the loudness of the video's own sound, their correlation and a plot.

LPIPS and Sync-C/Sync-E are computed only when their weights are present locally; otherwise the
JSON says so in ``notes``. AUE uses OpenFace csvs when given, else our landmark AU estimator.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from tqdm import tqdm

from instag.config import parse
from instag.data.format import AUDIO_SAMPLE_RATE, FPS, DatasetLayout
from instag.errors import InstagError
from instag.metrics import SequenceMetrics
from instag.metrics.lips import lagged_correlation, speech_energy
from instag.metrics.report import format_table, plot_series, side_by_side, write_metrics
from instag.metrics.scoring import Detector, load_split, person_closed_level, read_ground_truth

if TYPE_CHECKING:  # torch loads in the functions that use it, so that `instag evaluate --help` answers at once
    import torch

SAMPLES_PER_FRAME = AUDIO_SAMPLE_RATE // FPS


@dataclass
class EvaluateConfig:
    """Metrics of a trained model on its validation split (-S/-M), or between two videos (--pred/--gt)."""

    source_path: str | None = field(default=None, metadata={"flags": ("-S", "-s"), "help": "processed clip data/<ID>"})
    model_path: str | None = field(default=None, metadata={"flags": ("-M", "-m"), "help": "trained model output/<ID>"})
    pred: str | None = field(default=None, metadata={"help": "predicted video (with --gt; alone: mouth opening vs its sound)"})
    gt: str | None = field(default=None, metadata={"help": "ground-truth video (with --pred)"})
    pred_au_csv: str | None = field(default=None, metadata={"help": "OpenFace csv of the predicted video (AUE)"})
    gt_au_csv: str | None = field(default=None, metadata={"help": "OpenFace csv of the ground-truth video (AUE)"})
    out: str | None = field(default=None, metadata={
        "help": "with --pred/--gt: metrics JSON to write; with -S/-M: the report folder (default output/<ID>/test/ours_None)"})
    dilate: bool = field(default=False, metadata={"help": "dilate the mouth alpha 13x13 before compositing (adaptation's own evaluation does by default)"})
    no_static: bool = field(default=False, metadata={"help": "skip the static (silence-driven) baseline"})
    split: str = field(default="val", metadata={"choices": ("val", "train"), "help": "with -S/-M: the split to score"})
    N_views: int = field(default=-1, metadata={"min": 1, "special": (-1,), "help": "with --split train: its first N frames, as in training (-1 = all)"})
    batch: int = field(default=8, metadata={"min": 1, "help": "frames rendered per batch"})
    device: str | None = field(default=None, metadata={"help": "cuda or cpu (default: cuda when available)"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars"})
    new_audio: bool = field(default=False, metadata={
        "help": "with -S/-M: also score lip sync on the user's path (the validation speech cut from the wav, padded "
                "with 1 s of digital silence, through synthesis' feature extraction) and with changed voices; writes "
                "new_audio.json in the report folder"})


def _optional_models(device: str) -> tuple[object | None, object | None, list[str]]:
    """(LPIPS model, SyncNet, notes about what is missing)."""
    from instag.metrics import lpips as lp
    from instag.metrics import syncnet as sn

    notes = []
    lpips_model = lp.LPIPS.from_local()
    if lpips_model is None:
        notes.append(lp.missing_note())
    else:
        lpips_model = lpips_model.to(device)
    sync_path = sn.default_weight_path()
    sync_model = sn.SyncNet.from_file(sync_path) if sync_path is not None else None
    if sync_model is None:
        notes.append(sn.missing_note())
    return lpips_model, sync_model, notes


class _Run:
    """Metrics, landmarks and SyncNet crops of one predicted sequence."""

    def __init__(self, lpips_model, device: str, with_sync: bool):
        self.metrics = SequenceMetrics(lpips_model, device)
        self.landmarks: list[np.ndarray] = []
        self.crops: list[np.ndarray] | None = [] if with_sync else None

    def add(self, pred: np.ndarray, gt: np.ndarray, pred_lm: np.ndarray | None, gt_lm: np.ndarray | None) -> None:
        self.metrics.add(pred, gt, pred_lm, gt_lm)
        self.landmarks.append(np.full((478, 3), np.nan) if pred_lm is None else np.asarray(pred_lm, np.float64))
        if self.crops is not None:
            from instag.metrics.syncnet import face_crop

            box_lm = pred_lm if pred_lm is not None else gt_lm
            if box_lm is None:
                box_lm = np.array([[0, 0], [pred.shape[1], pred.shape[0]]], np.float64)
            self.crops.append(face_crop(np.ascontiguousarray(pred[:, :, ::-1]), box_lm))

    def result(self, gt_landmarks: list[np.ndarray], sync_model, samples: np.ndarray | None, device: str,
               au_pred: dict | None = None, au_gt: dict | None = None) -> dict:
        from instag.metrics.au import au_error, au_from_landmarks

        out = self.metrics.result()
        source = "OpenFace csv"
        if au_pred is None and self.landmarks:
            au_pred = au_from_landmarks(np.stack(self.landmarks))
            au_gt = au_from_landmarks(np.stack(gt_landmarks))
            source = "landmark AU estimator"
        if au_pred and au_gt:
            aue = au_error(au_pred, au_gt)
            out.update({k: aue[k] for k in ("aue", "aue_lower", "aue_upper")})
            out["aue_source"] = source
        if sync_model is not None and samples is not None and self.crops:
            from instag.metrics.syncnet import sync_scores

            out.update(sync_scores(sync_model, self.crops, samples, device=device))
        return out


def quietest_frame(audio: np.ndarray, num_frames: int) -> int:
    """Frame whose 320-ms neighbourhood (its audio window) is quietest: the middle of the longest pause."""
    energy = speech_energy(audio, num_frames) ** 2
    window = np.ones(8) / 8.0
    return int(np.argmin(np.convolve(energy, window, mode="same")))


def static_audio(items: torch.Tensor, audio: np.ndarray | None, extractor: str) -> tuple[torch.Tensor, str]:
    """Audio items of the static baseline [T,C,W]: the clip's own silence (the item of its quietest
    frame, repeated), which is what the model heard in pauses; digitally silent samples through the
    extractor when the clip's wav is missing (a level no recording has, so less fair)."""
    from instag.infer.features import silence_items

    if audio is not None and audio.size >= SAMPLES_PER_FRAME:
        k = min(quietest_frame(audio, items.shape[0]), items.shape[0] - 1)
        return items[k : k + 1].expand_as(items).contiguous(), f"the clip's quietest frame ({k}) repeated"
    return silence_items(items.shape[0], extractor), "digital silence through the extractor"


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def evaluate_model(source_path: str | Path, model_path: str | Path, *, dilate: bool = False, static: bool = True,
                   batch: int = 8, device: str | None = None, out_dir: str | Path | None = None, split: str = "val",
                   n_views: int = -1, log=print, progress: bool = True) -> dict:
    """Render the ``split`` ("val", or the first ``n_views`` frames of "train") of ``source_path`` with the
    model of ``model_path`` (and the static baseline), compute the metrics and write renders, report and
    ``metrics.json``.

    Returns ``{"ours": {...}, "static": {...} | None, "notes": [...], "paths": {...}, ...}``.
    """
    from instag.infer.synthesize import Backgrounds, render_frames
    from instag.io.atomic import write_image
    from instag.io.encode import VideoWriter, ffmpeg_exe, mux_audio
    from instag.io.wav import load_audio_16k_mono, write_wav

    t_start = time.perf_counter()
    layout, model, plan, items = load_split(source_path, model_path, split, n_views, device)
    dev = str(model.device)
    out_dir = Path(out_dir) if out_dir else Path(model_path) / ("test" if split == "val" else "train") / "ours_None"
    renders = out_dir / "renders"
    renders.mkdir(parents=True, exist_ok=True)
    cam0 = plan.cameras[0]
    size = (cam0.height, cam0.width)
    backgrounds = Backgrounds(layout, size)  # shared: both runs read the same frames
    log(f"instag evaluate: rendering {len(plan)} {'validation' if split == 'val' else 'training'} frames of {layout.root} "
        f"at {size[1]}x{size[0]} on {dev}{' with the static baseline' if static else ''}")

    samples = audio = None
    if layout.audio_wav.exists():
        audio = load_audio_16k_mono(layout.audio_wav)
        a0, a1 = plan.audio_index[0] * SAMPLES_PER_FRAME, (plan.audio_index[-1] + 1) * SAMPLES_PER_FRAME
        samples = audio[a0:a1]
    static_items, static_source = None, None
    if static:
        static_items, static_source = static_audio(items, audio, model.audio_extractor)
    lpips_model, sync_model, notes = _optional_models(dev)
    detector = Detector()
    notes.append(detector.note)
    ours = _Run(lpips_model, dev, sync_model is not None)
    stat = _Run(lpips_model, dev, sync_model is not None) if static else None
    gt_landmarks: list[np.ndarray] = []
    gt_crops: list[np.ndarray] = []
    ours_frames = render_frames(model, plan, items, backgrounds, dilate, batch)
    static_frames = render_frames(model, plan, static_items, backgrounds, dilate, batch) if static else None
    render_time = 0.0
    bar = tqdm(total=len(plan), desc="evaluate", unit="frame", file=sys.stderr, disable=not progress)
    try:
        with VideoWriter(out_dir / "side_by_side.silent.mp4") as sbs, VideoWriter(renders / "out.silent.mp4") as vid:
            for k, index in enumerate(plan.background_index):
                t = time.perf_counter()
                pred = next(ours_frames)
                spred = next(static_frames) if static_frames is not None else None
                render_time += time.perf_counter() - t
                gt_bgr = read_ground_truth(layout, index, pred.shape[:2])
                gt = np.ascontiguousarray(gt_bgr[:, :, ::-1])
                gt_lm = detector(gt)
                gt_landmarks.append(np.full((478, 3), np.nan) if gt_lm is None else np.asarray(gt_lm, np.float64))
                ours.add(pred, gt, detector(pred), gt_lm)
                if stat is not None:
                    stat.add(spred, gt, detector(spred), gt_lm)
                if sync_model is not None:
                    from instag.metrics.syncnet import face_crop

                    gt_crops.append(face_crop(gt_bgr, gt_lm if gt_lm is not None else np.array([[0, 0], gt.shape[1::-1]])))
                write_image(renders / f"{k:05d}.png", pred[:, :, ::-1])  # raises when OpenCV cannot write
                vid.write(pred)
                tiles = [gt, pred] + ([spred] if spred is not None else [])
                sbs.write(side_by_side(tiles, ["ground truth", "ours", "static (silence)"][: len(tiles)]))
                bar.update(1)
    finally:
        bar.close()
        backgrounds.close()
        detector.close()
    paths = {"renders": str(renders), "video": str(renders / "out.mp4"), "side_by_side": str(out_dir / "side_by_side.mp4"),
             "plot": str(out_dir / "mouth_opening.png"), "metrics": str(out_dir / "metrics.json")}
    if samples is not None and ffmpeg_exe() is None:
        notes.append("videos written without sound: no ffmpeg binary (pip install imageio-ffmpeg)")
    for silent, final in ((renders / "out.silent.mp4", renders / "out.mp4"),
                          (out_dir / "side_by_side.silent.mp4", out_dir / "side_by_side.mp4")):
        if samples is not None and ffmpeg_exe() is not None:
            wav = out_dir / ".test_audio.wav"
            write_wav(wav, samples, AUDIO_SAMPLE_RATE)
            try:
                mux_audio(silent, wav, final)
            finally:
                wav.unlink(missing_ok=True)
            silent.unlink(missing_ok=True)
        else:
            silent.replace(final)
    result = {
        "source_path": str(layout.root), "model_path": str(model_path), "split": split, "frames": len(plan),
        "resolution": [size[1], size[0]], "audio_extractor": model.audio_extractor, "dilate": dilate,
        "ours": ours.result(gt_landmarks, sync_model, samples, dev),
        "static": stat.result(gt_landmarks, sync_model, samples, dev) if stat is not None else None,
        "static_audio": static_source,
        "notes": [n for n in notes if n],
        "paths": paths,
        "time_render": render_time, "render_fps": len(plan) * (2 if static else 1) / max(render_time, 1e-9),
        "time_total": time.perf_counter() - t_start,
    }
    if sync_model is not None and samples is not None and gt_crops:
        from instag.metrics.syncnet import sync_scores

        result["ground_truth"] = sync_scores(sync_model, gt_crops, samples, device=dev)
    gt_open = ours.metrics.mouth_openings()[1]
    series = {"ground truth": gt_open, "ours": ours.metrics.mouth_openings()[0]}
    if stat is not None:
        series["static"] = stat.metrics.mouth_openings()[0]
    silence = silence_metrics(layout, audio, plan.audio_index, series)
    for name, key in (("ours", "ours"), ("static", "static"), ("ground truth", "ground_truth")):
        if result.get(key) is not None or key == "ground_truth":
            result[key] = {**(result.get(key) or {}), "closed_in_silence": silence["closed_in_silence"].get(name)}
    result["silence"] = {k: v for k, v in silence.items() if k != "closed_in_silence"}
    plot_series(paths["plot"], series, fps=FPS)
    result["mouth_opening"] = {k: [None if not np.isfinite(v) else round(float(v), 5) for v in s] for k, s in series.items()}
    write_metrics(paths["metrics"], result)
    rows = {"ours": result["ours"]}
    if result["static"] is not None:
        rows["static"] = result["static"]
    rows["truth"] = result["ground_truth"]
    log(f"instag evaluate: {len(plan)} {'validation' if split == 'val' else 'training'} frames of {layout.root} at {size[1]}x{size[0]}\n{format_table(rows)}")
    for note in result["notes"]:
        log(f"  note: {note}")
    log(f"  wrote {paths['metrics']}, {paths['side_by_side']}, {paths['plot']}, {paths['video']}")
    return result


def evaluate_videos(pred: str | Path, gt: str | Path, *, pred_au_csv: str | None = None, gt_au_csv: str | None = None,
                    out: str | Path | None = None, device: str | None = None, log=print, progress: bool = True) -> dict:
    """Metrics between two videos, frame by frame (both decoded at 25 FPS) up to the shorter one."""
    from instag.io.video import iter_frames, probe, read_audio

    dev = _device(device)
    pinfo, ginfo = probe(pred, require_audio=False), probe(gt, require_audio=False)
    lpips_model, sync_model, notes = _optional_models(dev)
    detector = Detector()
    notes.append(detector.note)
    run = _Run(lpips_model, dev, sync_model is not None)
    gt_landmarks: list[np.ndarray] = []
    resized = False
    frames = min(pinfo.num_frames_25, ginfo.num_frames_25)
    log(f"instag evaluate: comparing {frames} frames of {pred} against {gt} at {ginfo.width}x{ginfo.height} on {dev}")
    bar = tqdm(total=frames, desc="evaluate", unit="frame", file=sys.stderr, disable=not progress)
    try:
        for p_bgr, g_bgr in zip(iter_frames(pinfo), iter_frames(ginfo)):
            p, g = np.ascontiguousarray(p_bgr[:, :, ::-1]), np.ascontiguousarray(g_bgr[:, :, ::-1])
            if p.shape != g.shape:
                p = cv2.resize(p, (g.shape[1], g.shape[0]), interpolation=cv2.INTER_AREA)
                resized = True
            g_lm = detector(g)
            gt_landmarks.append(np.full((478, 3), np.nan) if g_lm is None else np.asarray(g_lm, np.float64))
            run.add(p, g, detector(p), g_lm)
            bar.update(1)
    finally:
        bar.close()
        detector.close()
    if run.metrics.num_frames == 0:
        raise InstagError(f"no frames could be read from {pred} or {gt}")
    if resized:
        notes.append(f"{pred} was resized to the ground truth's {ginfo.width}x{ginfo.height} before comparing")
    if pinfo.num_frames_25 != ginfo.num_frames_25:
        notes.append(f"frame counts differ ({pinfo.num_frames_25} vs {ginfo.num_frames_25}); compared the first {run.metrics.num_frames}")
    samples = None
    if sync_model is not None:
        if pinfo.has_audio:
            samples = read_audio(pred, stream=pinfo.audio_stream)
        else:
            notes.append(f"Sync-C/Sync-E not computed: {pred} has no audio track")
    au_pred = au_gt = None
    if pred_au_csv and gt_au_csv:
        from instag.preprocess.au import read_au_csv

        au_pred, au_gt = read_au_csv(pred_au_csv), read_au_csv(gt_au_csv)
    result = {"pred": str(pred), "gt": str(gt), "frames": run.metrics.num_frames,
              "ours": run.result(gt_landmarks, sync_model, samples, dev, au_pred, au_gt),
              "notes": [n for n in notes if n]}
    if out:
        write_metrics(out, result)
    log(f"instag evaluate: {run.metrics.num_frames} frames, {pred} against {gt}\n{format_table({'pred': result['ours']})}")
    for note in result["notes"]:
        log(f"  note: {note}")
    return result


def silence_metrics(layout: DatasetLayout, audio: np.ndarray | None, audio_index: list[int],
                    openings: dict[str, np.ndarray]) -> dict:
    """closed_in_silence of each opening series (DESIGN §4): the silent frames of the driving audio (the voice-activity
    rule of :mod:`instag.audio.activity`, measured on the whole clip's audio) whose opening is below the person's
    closed-mouth level (:func:`instag.metrics.lips.closed_level` of the clip's tracked openings, every frame)."""
    from instag.audio.activity import silent_frames
    from instag.metrics.lips import closed_in_silence

    level = person_closed_level(layout)
    if audio is None or not len(audio_index):
        return {"closed_level": level, "silent_frames": 0, "closed_in_silence": {}}
    index = np.asarray(audio_index, np.int64)
    silent = silent_frames(audio, int(max(index.max() + 1, len(audio) // SAMPLES_PER_FRAME)))[index]
    return {"closed_level": level, "silent_frames": int(silent.sum()),
            "closed_in_silence": {name: closed_in_silence(series, silent, level) for name, series in openings.items()}}


def lip_report(video: str | Path, out_dir: str | Path | None = None, log=print, progress: bool = True,
               source_path: str | Path | None = None) -> dict:
    """For a video without ground truth (synthesis from new audio): its mouth opening per frame
    against the loudness of its own sound track, their correlation (best lag within ±5 frames),
    closed_in_silence (the person's closed-mouth level from ``source_path``'s landmarks when given, else from
    the video's own openings), a plot ``<video>_mouth.png`` and ``<video>_mouth.json``; refused, writing
    nothing, when no frame shows a face."""
    from instag.audio.activity import silent_frames
    from instag.io.video import iter_frames, probe, read_audio
    from instag.metrics.lips import closed_in_silence, closed_level, mouth_opening

    info = probe(video, require_audio=True)
    detector = Detector()
    if detector.note:
        raise InstagError(detector.note)
    opening = []
    log(f"instag evaluate: mouth opening of {info.num_frames_25} frames of {video} at {info.width}x{info.height}")
    bar = tqdm(total=info.num_frames_25, desc="landmarks", unit="frame", file=sys.stderr, disable=not progress)
    try:
        for bgr in iter_frames(info):
            lm = detector(np.ascontiguousarray(bgr[:, :, ::-1]))
            opening.append(np.nan if lm is None else mouth_opening(lm))
            bar.update(1)
    finally:
        bar.close()
        detector.close()
    opening = np.asarray(opening, np.float64)
    finite = opening[np.isfinite(opening)]
    if not finite.size:
        raise InstagError(f"no face found in any of the {len(opening)} frames of {video}; the lip report needs a visible face")
    sound = read_audio(video, stream=info.audio_stream)
    energy = speech_energy(sound, len(opening))
    corr, lag = lagged_correlation(opening, energy)
    silent = silent_frames(sound, len(opening))
    level_from = "the video's own openings"
    if source_path is not None and DatasetLayout.of(source_path).landmarks.exists():
        level = person_closed_level(DatasetLayout.of(source_path))
        level_from = f"the tracked openings of {DatasetLayout.of(source_path).root}"
    else:
        level = closed_level(opening)
    closed = closed_in_silence(opening, silent, level)
    out_dir = Path(out_dir) if out_dir else Path(video).parent
    stem = Path(video).stem
    scale = float(np.percentile(finite, 95)) / max(float(np.percentile(energy, 95)), 1e-9)
    plot = plot_series(out_dir / f"{stem}_mouth.png", {"mouth opening": opening, "speech loudness (scaled)": energy * scale},
                       fps=FPS, title=f"{stem}", y_label="mouth opening vs speech loudness")
    result = {"video": str(video), "frames": len(opening), "frames_without_face": int((~np.isfinite(opening)).sum()),
              "mouth_opening_mean": float(finite.mean()), "mouth_opening_std": float(finite.std()),
              "opening_loudness_corr": corr, "opening_loudness_lag_frames": lag, "closed_in_silence": closed,
              "silent_frames": int(silent.sum()), "closed_level": level, "closed_level_from": level_from, "plot": str(plot),
              "mouth_opening": [None if not np.isfinite(v) else round(float(v), 5) for v in opening]}
    write_metrics(out_dir / f"{stem}_mouth.json", result)
    log(f"instag evaluate: {video}: mouth opening {result['mouth_opening_mean']:.3f} ± {result['mouth_opening_std']:.3f}, "
        f"correlation with speech loudness {corr:.2f} (lag {lag} frames); closed in {closed:.0%} of {int(silent.sum())} "
        f"silent frames (closed-mouth level {level:.3f} from {level_from}); wrote {plot}")
    return result


def main(argv: list[str] | None = None) -> int:
    cfg = parse(EvaluateConfig, argv, prog="instag evaluate")
    if cfg.pred and not cfg.gt:
        if not Path(cfg.pred).is_file():
            raise InstagError(f"video {cfg.pred} does not exist")
        lip_report(cfg.pred, cfg.out, progress=not cfg.quiet, source_path=cfg.source_path)
        return 0
    if cfg.pred or cfg.gt:
        if not (cfg.pred and cfg.gt):
            raise InstagError("give both --pred and --gt videos")
        for p in (cfg.pred, cfg.gt):
            if not Path(p).is_file():
                raise InstagError(f"video {p} does not exist")
        if cfg.out:
            from instag.io.atomic import check_output

            check_output(cfg.out, "--out", (".json",), {"--pred": cfg.pred, "--gt": cfg.gt, "--pred_au_csv": cfg.pred_au_csv,
                                                        "--gt_au_csv": cfg.gt_au_csv})
        evaluate_videos(cfg.pred, cfg.gt, pred_au_csv=cfg.pred_au_csv, gt_au_csv=cfg.gt_au_csv, out=cfg.out, device=cfg.device,
                        progress=not cfg.quiet)
        return 0
    if not (cfg.source_path and cfg.model_path):
        raise InstagError("give -S data/<ID> -M output/<ID> (a trained model), or --pred a.mp4 --gt b.mp4")
    result = evaluate_model(cfg.source_path, cfg.model_path, dilate=cfg.dilate, static=not cfg.no_static,
                            batch=cfg.batch, device=cfg.device, out_dir=cfg.out, split=cfg.split, n_views=cfg.N_views,
                            progress=not cfg.quiet)
    if cfg.new_audio:
        from instag.metrics.new_audio import evaluate_new_audio, format_rows

        if cfg.split != "val":
            raise InstagError("--new_audio scores the validation split; leave out --split train")
        rows = evaluate_new_audio(cfg.source_path, cfg.model_path, dilate=cfg.dilate, batch=cfg.batch,
                                  device=cfg.device, progress=not cfg.quiet)
        path = Path(result["paths"]["metrics"]).with_name("new_audio.json")
        write_metrics(path, rows)
        print(f"instag evaluate: the user's path (new audio) on {rows['frames']} validation frames\n{format_rows(rows)}\n"
              f"  wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
