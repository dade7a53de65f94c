"""``instag process`` / ``python data_utils/process.py data/<ID>/<ID>.mp4``: video -> ``data/<ID>/``.

The steps keep upstream's task numbers (``--task 3`` still means frames) plus ours from 10 on;
they run in the order below because later steps read what earlier ones wrote (a frame is
decoded once, landmarks are detected once):

====  ===============  ===========================================================================
task  name             writes
====  ===============  ===========================================================================
1     audio            ``aud.wav`` (16 kHz mono)
3     frames           ``ori_imgs/<i>.jpg`` (25 FPS, cropped around the face when needed), ``crop.json``
7     landmarks        ``landmarks.npy`` [N,478,3], ``ori_imgs/<i>.lms`` (68 points)
2     audio_features   audio-video offset check, then ``aud_wh.npy`` (whisper) (or ``--audio_extractor``'s file)
4     parsing          ``parsing/<i>.png``
5     background       ``bc.jpg``
6     gt_torso         ``gt_imgs/<i>.jpg``, ``torso_imgs/<i>.png``
10    teeth            ``teeth_mask/<i>.png``
11    au               ``au.csv`` (kept when it is the user's own OpenFace csv)
8     tracking         ``track_params.pt`` (+ the tracker-vs-PnP jitter report in ``meta.json``)
9     transforms       ``transforms_train.json``, ``transforms_val.json`` (10/11 split, as upstream)
12    priors           ``depth/<i>.png``, ``normal/<i>.png``
13    debug            ``debug/frame_<i>.jpg`` overlays
====  ===============  ===========================================================================

A full run skips steps that ``meta.json`` records as done (and whose outputs exist) for this very
video (same size, content fingerprint and streams, not merely the same path) unless ``--force``;
once a step runs, every later step runs too. ``--task k`` (number or name) runs step k alone.
Another video in a processed folder is refused: its data is what a model adapted on it renders with.
With ``--force`` it is processed as new, after the files derived from the old one are removed
(``au.csv`` only when it was estimated, never a user's OpenFace csv), naming the models in ``output/``
that were adapted on the old one. One run at a time
uses a folder, and a run that fails leaves it as it was (:func:`run`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from instag.audio.registry import EXTRACTORS as AUDIO_EXTRACTORS
from instag.data import maps
from instag.data.format import AUDIO_FEATURE_FILES, AUDIO_SAMPLE_RATE, FPS, DatasetLayout
from instag.errors import InstagError
from instag.io import folders
from instag.io.atomic import remove_stale_temporaries, write_bytes, write_json

EXTRACTOR_CHOICES = tuple(AUDIO_EXTRACTORS)
SAMPLES_PER_FRAME = AUDIO_SAMPLE_RATE // FPS
# a sound track may end this much before the picture (its last frames then get silence); more is refused
MAX_SOUND_SHORTFALL_S = 0.5


@dataclass
class ProcessConfig:
    """Preprocess a talking-head video into upstream's data/<ID>/ layout (embedded defaults, nothing downloaded)."""

    path: str = field(metadata={"help": "the video, e.g. data/<ID>/<ID>.mp4 (may also be given without --path); or a "
                                        "folder of videos, each processed into <out>/<name>/"})
    out: str | None = field(default=None, metadata={"help": "output folder (default: the video's folder)"})
    task: str = field(default="-1", metadata={"help": "run one step only, by number or name (-1 = all): 1 audio, "
                                                      "2 audio_features, 3 frames, 4 parsing, 5 background, 6 gt_torso, "
                                                      "7 landmarks, 8 tracking, 9 transforms, 10 teeth, 11 au, 12 priors, "
                                                      "13 debug"})
    force: bool = field(default=False, metadata={"help": "redo steps already done; in a folder processed from another "
                                                        "video, delete that video's data and process this one"})
    audio_extractor: str = field(default="whisper", metadata={"help": "audio features to extract", "choices": EXTRACTOR_CHOICES})
    fix_av_offset: bool = field(default=False, metadata={"help": "shift aud.wav when the audio-video offset check finds "
                                                                 "more than one frame of offset"})
    tracker: str = field(default="landmarks", metadata={"help": "head tracker: landmark bundle adjustment, or upstream's "
                                                                "BFM tracker (needs 3DMM files)", "choices": ("landmarks", "bfm")})
    teeth: str = field(default="color", metadata={"help": "teeth masks: colour rule, or EasyPortrait (needs its weights)",
                                                  "choices": ("color", "easyportrait")})
    au_csv: str | None = field(default=None, metadata={"help": "use this OpenFace csv as au.csv instead of estimating AUs"})
    max_face_gap: int = field(default=5, metadata={"min": 0, "help": "longest run of frames without a face that is interpolated"})
    smooth: float = field(default=3.0, metadata={"min": 0, "help": "temporal smoothness weight of the head tracker"})
    debug_frames: int = field(default=4, metadata={"min": 0, "help": "frames drawn into debug/ overlays"})
    workers: int = field(default=0, metadata={"min": 0, "help": "for a folder of videos: processes working at once (0 = one per "
                                                      "two cores; under torchrun each process is one)"})


@dataclass
class Step:
    task: int
    name: str
    run: Callable[[Context], dict | None]
    outputs: Callable[[DatasetLayout, int], list[Path]]


class Context:
    """What the steps share: config, layout, source facts, cached landmarks and the meta record."""

    def __init__(self, cfg: ProcessConfig, layout: DatasetLayout, info, meta: dict):
        self.cfg = cfg
        self.layout = layout
        self.info = info
        self.meta = meta
        self._landmarks: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        n = int(self.meta.get("num_frames", 0))
        if n <= 0:
            raise InstagError(f"{self.layout.root}: frames not decoded yet; run the frame step (--task 3)")
        return n

    @property
    def landmarks(self) -> np.ndarray:
        if self._landmarks is None:
            from instag.preprocess import landmarks

            self._landmarks = landmarks.load(self.layout)
        return self._landmarks

    def frame_size(self) -> tuple[int, int]:
        w, h = self.meta.get("frame_size", (0, 0))
        return int(w), int(h)

    def log(self, msg: str) -> None:
        print(f"instag process: {msg}", flush=True)
        self.meta.setdefault("notes", []).append(msg)


# ------------------------------------------------------------------------------------------ steps
def _audio(ctx: Context) -> dict:
    from instag.io.video import read_audio
    from instag.io.wav import write_wav

    samples = read_audio(ctx.info.path, AUDIO_SAMPLE_RATE, ctx.info.audio_stream)
    if float(np.abs(samples).max()) < 1e-4:
        raise InstagError(f"{ctx.info.path}: the audio track is silent; the speech drives training, give the video "
                          "with its sound")
    frames = ctx.info.num_frames_25
    sound, picture = samples.size / AUDIO_SAMPLE_RATE, frames / FPS
    if sound < picture - MAX_SOUND_SHORTFALL_S:
        raise InstagError(f"{ctx.info.path}: the sound ends at {sound:.2f} s but the picture runs to {picture:.2f} s; "
                          f"every frame needs its speech: cut the video to its sound (ffmpeg -i <video> -t {sound:.2f} "
                          "<out.mp4>) and run again")
    if samples.size > frames * SAMPLES_PER_FRAME + SAMPLES_PER_FRAME:
        ctx.log(f"the sound runs {sound - picture:.2f} s past the picture's end ({picture:.2f} s); aud.wav ends with the "
                "last frame")
        samples = samples[: frames * SAMPLES_PER_FRAME]
    if ctx.info.audio_rate != AUDIO_SAMPLE_RATE or ctx.info.audio_channels != 1:
        ctx.log(f"audio {ctx.info.audio_rate} Hz, {ctx.info.audio_channels} channel(s) -> {AUDIO_SAMPLE_RATE} Hz mono aud.wav")
    write_wav(ctx.layout.audio_wav, samples, AUDIO_SAMPLE_RATE)
    return {"audio_seconds": round(samples.size / AUDIO_SAMPLE_RATE, 3)}


def _frames(ctx: Context) -> dict:
    from instag.preprocess import frames

    note = ctx.info.describe_rate()
    if note:
        ctx.log(note)
    n = frames.run(ctx.layout, ctx.info, log=ctx.log)
    crop = json.loads(ctx.layout.crop.read_text(encoding="utf-8"))
    ctx.meta["num_frames"] = n
    ctx.meta["frame_size"] = list(crop["output_size"])
    return {"frames": n, "cropped": bool(crop["applied"])}


def _landmarks(ctx: Context) -> dict:
    from instag.preprocess import landmarks

    lm = landmarks.run(ctx.layout, ctx.num_frames, log=ctx.log, max_gap=ctx.cfg.max_face_gap, source=ctx.info.path)
    ctx._landmarks = lm
    return {"frames": len(lm)}


def _audio_features(ctx: Context) -> dict:
    from instag.audio.registry import feature_definition, get_extractor
    from instag.audio.windows import save_features
    from instag.io.wav import read_wav, to_mono, write_wav
    from instag.preprocess import av_sync

    if not ctx.layout.audio_wav.exists():
        raise InstagError(f"{ctx.layout.audio_wav}: missing; run the audio step (--task 1)")
    samples, rate = read_wav(ctx.layout.audio_wav)
    samples = to_mono(samples)
    record: dict = {}
    opening = av_sync.mouth_opening(ctx.landmarks)
    if len(opening) >= 2 * av_sync.MAX_LAG + 10:
        offset, confidence = av_sync.estimate_offset(opening, samples, rate)
        record["av_offset_frames"] = offset
        record["av_offset_confidence"] = round(confidence, 2)
        if abs(offset) > 1:
            side = "lags" if offset > 0 else "leads"
            msg = f"audio {side} the video by {abs(offset)} frames (confidence {confidence:.1f})"
            if confidence < av_sync.MIN_CONFIDENCE:
                ctx.log(msg + f"; below {av_sync.MIN_CONFIDENCE:g} the estimate is uncertain, aud.wav left as is")
            elif ctx.cfg.fix_av_offset:
                samples = av_sync.shift_audio(samples, offset, rate)
                write_wav(ctx.layout.audio_wav, samples, rate)
                record["av_offset_fixed"] = offset
                ctx.log(msg + "; shifted aud.wav to line them up")
            else:
                ctx.log(msg + "; rerun with --fix_av_offset to correct aud.wav, or check the source")
    else:
        record["av_offset_frames"] = None
        ctx.log(f"clip too short ({len(opening)} frames) for the audio-video offset check; skipped")
    extractor = get_extractor(ctx.cfg.audio_extractor)
    feats = extractor.extract(samples, ctx.num_frames)
    save_features(ctx.layout.root / extractor.file_name, feats, extractor.name)
    record.update({"extractor": extractor.name, "file": extractor.file_name, "shape": list(feats.shape),
                   "definition": feature_definition(extractor.name)})
    return record


def _parsing(ctx: Context) -> None:
    from instag.preprocess import parsing

    parsing.run(ctx.layout, ctx.landmarks)


def _background(ctx: Context) -> None:
    from instag.preprocess import background

    background.run(ctx.layout, ctx.num_frames)


def _gt_torso(ctx: Context) -> None:
    from instag.preprocess import gt_torso

    gt_torso.run(ctx.layout, ctx.num_frames)


def _teeth(ctx: Context) -> dict:
    if ctx.cfg.teeth == "easyportrait":
        from instag.preprocess import easyportrait

        easyportrait.write_teeth_masks(ctx.layout, easyportrait.load_model(), force=True, progress=False)
        return {"method": "easyportrait"}
    from instag.preprocess import teeth

    teeth.run(ctx.layout, ctx.landmarks)
    return {"method": "color"}


def _au(ctx: Context) -> dict:
    from instag.preprocess import au

    target = ctx.layout.au_csv
    if ctx.cfg.au_csv:
        source = Path(ctx.cfg.au_csv)
        table = au.read_au_csv(source)
        _check_au_rows(source, table, ctx.num_frames)
        if source.resolve() != target.resolve():
            write_bytes(target, source.read_bytes())  # never written into: a snapshot links the old au.csv
        return {"source": "user", "path": str(source)}
    previous = ctx.meta.get("steps", {}).get("au", {})
    if target.exists() and previous.get("source") != "estimated":
        _check_au_rows(target, au.read_au_csv(target), ctx.num_frames)
        ctx.log(f"{target}: using the OpenFace csv found there")
        return {"source": "user", "path": str(target)}
    au.write_au_csv(target, au.estimate(ctx.landmarks))
    return {"source": "estimated"}


def _check_au_rows(path: Path, table: dict, num_frames: int) -> None:
    rows = len(next(iter(table.values())))
    if rows < num_frames:
        raise InstagError(f"{path}: {rows} rows but the video has {num_frames} frames at 25 FPS; run OpenFace on the "
                          "25-FPS frames (ori_imgs) or delete the csv to estimate AUs from landmarks")


def _tracking(ctx: Context) -> dict:
    if ctx.cfg.tracker == "bfm":
        from instag.preprocess import bfm

        bfm.track_with_bfm(ctx.layout)
        return {"tracker": "bfm"}
    from instag.preprocess import tracking

    width, height = ctx.frame_size()
    report = tracking.run(ctx.layout, ctx.landmarks, width, height, log=ctx.log, smooth=ctx.cfg.smooth)
    ctx.meta["tracking"] = report
    return {"tracker": "landmarks"}


def _transforms(ctx: Context) -> dict:
    from instag.preprocess import tracking

    n_train, n_val = tracking.write_transforms(ctx.layout, rule="process")
    return {"train": n_train, "val": n_val}


def _priors(ctx: Context) -> dict:
    from instag.preprocess import priors, tracking

    if "shape" not in tracking.load(ctx.layout):
        ctx.log("track_params.pt has no landmark shape (BFM track): mesh priors skipped; use Sapiens priors instead")
        return {"skipped": True}
    priors.run(ctx.layout)
    return {}


def _debug(ctx: Context) -> dict:
    from instag.preprocess import debug

    return {"frames": debug.run(ctx.layout, ctx.landmarks, ctx.cfg.debug_frames)}


def _per_frame(folder: str, suffix: str) -> Callable[[DatasetLayout, int], list[Path]]:
    def outputs(layout: DatasetLayout, n: int) -> list[Path]:
        return [layout.root / folder / f"{i}{suffix}" for i in range(n)]

    return outputs


STEPS: list[Step] = [
    Step(1, "audio", _audio, lambda lay, n: [lay.audio_wav]),
    Step(3, "frames", _frames, lambda lay, n: [lay.crop, *_per_frame("ori_imgs", ".jpg")(lay, n)]),
    Step(7, "landmarks", _landmarks, lambda lay, n: [lay.landmarks, *_per_frame("ori_imgs", ".lms")(lay, n)]),
    Step(2, "audio_features", _audio_features, lambda lay, n: []),
    Step(4, "parsing", _parsing, _per_frame("parsing", ".png")),
    Step(5, "background", _background, lambda lay, n: [lay.background]),
    Step(6, "gt_torso", _gt_torso, lambda lay, n: [*_per_frame("gt_imgs", ".jpg")(lay, n), *_per_frame("torso_imgs", ".png")(lay, n)]),
    Step(10, "teeth", _teeth, _per_frame("teeth_mask", ".png")),
    Step(11, "au", _au, lambda lay, n: [lay.au_csv]),
    Step(8, "tracking", _tracking, lambda lay, n: [lay.track_params]),
    Step(9, "transforms", _transforms, lambda lay, n: [lay.transforms("train"), lay.transforms("val")]),
    Step(12, "priors", _priors, lambda lay, n: [*_per_frame("depth", ".png")(lay, n), *_per_frame("normal", ".png")(lay, n)]),
    Step(13, "debug", _debug, lambda lay, n: []),
]


def find_step(task: str) -> Step:
    for step in STEPS:
        if task.strip() in (str(step.task), step.name):
            return step
    names = ", ".join(f"{s.task}={s.name}" for s in sorted(STEPS, key=lambda s: s.task))
    raise InstagError(f"unknown --task {task!r}; choose -1 (all) or one of {names}")


def _done(step: Step, ctx: Context) -> bool:
    record = ctx.meta.get("steps", {}).get(step.name)
    if not record or not record.get("done"):
        return False
    n = int(ctx.meta.get("num_frames", 0))
    outputs = step.outputs(ctx.layout, n)
    if step.name == "audio_features":
        from instag.audio.registry import feature_definition

        same = (record.get("extractor") == ctx.cfg.audio_extractor
                and record.get("definition") == feature_definition(ctx.cfg.audio_extractor))
        outputs = [ctx.layout.root / record.get("file", "")] if same else []
        if not outputs:
            return False
    return all(p.exists() or (p.suffix == ".png" and maps.find(p) is not None) for p in outputs)  # older clips' maps: .npy


# the fields of meta.json that are read back, and their JSON types
META_FIELDS = {"steps": dict, "source": dict, "num_frames": int, "frame_size": list, "notes": list, "tracking": dict}


def load_meta(layout: DatasetLayout) -> dict:
    """A processed clip's ``meta.json``: ``{}`` when missing, unreadable or not what we write (a field of
    another type), so that every step runs anew."""
    if not layout.meta.exists():
        return {}
    try:
        meta = json.loads(layout.meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(meta, dict) or not well_formed_meta(meta):
        return {}
    return meta


def well_formed_meta(meta: dict) -> bool:
    """Whether ``meta`` has the fields' types that :func:`run` writes (see :data:`META_FIELDS`)."""
    if any(k in meta and (not isinstance(meta[k], kind) or isinstance(meta[k], bool)) for k, kind in META_FIELDS.items()):
        return False
    if not all(isinstance(r, dict) for r in meta.get("steps", {}).values()):
        return False
    size = meta.get("frame_size", [0, 0])
    return len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in size)


FINGERPRINT_BYTES = 1 << 20
FILE_FACTS = ("bytes", "fingerprint")  # absent from meta.json files written before they were recorded


def source_record(info, source: Path) -> dict:
    """What ``meta.json`` records of the source video: its stream facts (:class:`VideoInfo`), its size in
    bytes and a SHA-256 of its first and last MiB (a file replaced under the same name differs there)."""
    size = source.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(source, "rb") as fh:
        digest.update(fh.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            fh.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            digest.update(fh.read())
    return {**info.as_dict(), "bytes": size, "fingerprint": digest.hexdigest()}


def same_video(recorded: dict, current: dict, source: Path) -> bool:
    """Whether ``meta.json``'s recorded source is the video being processed: the same size, content
    fingerprint and streams, wherever it lies (a processed folder may be moved or copied). A record
    written before sizes and fingerprints were kept also needs the same path or file name."""
    facts = [k for k in current if k != "path"]
    if any(recorded.get(k, current[k]) != current[k] for k in facts):
        return False
    streams = [k for k in facts if k not in FILE_FACTS]
    if not streams or any(k not in recorded for k in streams):
        return False
    if all(k in recorded and k in current for k in FILE_FACTS):
        return True
    old_path = Path(recorded.get("path", ""))
    return old_path.name == source.name or old_path.resolve() == source.resolve()


def _refuse_stale_user_au(layout: DatasetLayout, cfg: ProcessConfig, old_meta: dict, source: Path) -> None:
    """A user's OpenFace csv of the folder's previous video is neither deleted nor used for another video."""
    if cfg.au_csv or not layout.au_csv.exists():
        return
    if old_meta.get("steps", {}).get("au", {}).get("source") == "user":
        old = old_meta.get("source", {}).get("path", "another video")
        raise InstagError(f"{layout.au_csv}: the OpenFace csv of {old}, which this folder was processed from, not of "
                          f"{source}; move or delete it (or give this video's csv with --au_csv) and run again")


PER_FRAME_FILE = re.compile(r"^(frame_)?[0-9]+\.[A-Za-z0-9]+$")


def _old_video_outputs(layout: DatasetLayout, old_meta: dict) -> list[Path]:
    """The files the steps derived from the folder's previous video (the step table's whole-clip files, its
    audio features and every per-frame file); an au.csv only when we estimated it."""
    steps = old_meta.get("steps", {})
    doomed = [p for step in STEPS if step.name != "au" for p in step.outputs(layout, 0)]
    if steps.get("au", {}).get("source") == "estimated":
        doomed.append(layout.au_csv)
    feature_file = steps.get("audio_features", {}).get("file")
    if feature_file in AUDIO_FEATURE_FILES.values():
        doomed += [layout.root / feature_file, (layout.root / feature_file).with_suffix(".json")]
    for folder in (layout.ori_dir, layout.parsing_dir, layout.gt_dir, layout.torso_dir, layout.teeth_dir,
                   layout.depth_dir, layout.normal_dir, layout.debug_dir):
        if folder.is_dir():
            doomed += [p for p in folder.iterdir() if PER_FRAME_FILE.match(p.name)]
    return [p for p in doomed if p.is_file()]


def _models_reading(layout: DatasetLayout, old_meta: dict) -> list[Path]:
    """Trained models in ``output/`` (of the working folder, and of the project the clip lies in: data/<ID> ->
    output/) that were adapted on the folder's previous video."""
    from instag.model.talking_head import models_trained_on

    fingerprint = old_meta.get("source", {}).get("fingerprint")
    searched = [Path.cwd() / "output", layout.root.resolve().parent.parent / "output"]
    return models_trained_on(layout.root, fingerprint if isinstance(fingerprint, str) else None, searched)


def _check_replacing_old_video(layout: DatasetLayout, cfg: ProcessConfig, old_meta: dict, source: Path,
                               doomed: list[Path], models: list[Path]) -> None:
    """Refuse to delete another video's processed data unless ``--force`` says to (a model trained on it reads it)."""
    if not doomed or cfg.force:
        return
    old = old_meta.get("source", {}).get("path", "another video")
    readers = f"; the model(s) {', '.join(map(str, models))} adapted on it render with it" if models else ""
    raise InstagError(f"{layout.root} holds the processed data of {old} ({len(doomed)} files{readers}); processing "
                      f"{source} there would delete it: give another --out (e.g. --out {layout.root.parent / source.stem}), "
                      "or --force to replace that data")


def run(cfg: ProcessConfig) -> dict:
    """Run the pipeline for ``cfg``; return the meta record.

    One run at a time per folder (:func:`instag.io.folders.locked`). A folder that holds anything but
    the video is snapshotted before the first step changes it and put back as it was if the run fails
    in any way (a killed run's snapshot is restored by the next run); a first run into a folder holding
    at most the video removes what it created when it fails, and keeps its finished steps on Ctrl-C.
    """
    from instag.io.video import MIN_SIDE, probe

    source = Path(cfg.path)
    info = probe(source, min_side=MIN_SIDE)  # refuses not-a-video, truncated headers and missing audio before anything is written
    root = Path(cfg.out) if cfg.out else source.parent
    fresh_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    with folders.locked(root):
        return _run_locked(cfg, info, source, DatasetLayout.of(root), fresh_root)


def _run_locked(cfg: ProcessConfig, info, source: Path, layout: DatasetLayout, fresh_root: bool) -> dict:
    root = layout.root
    if folders.recover(root):
        print(f"instag process: {root}: put back as it was before an interrupted run", flush=True)
    remove_stale_temporaries(root)  # left by a run killed mid-write
    current = source_record(info, source)
    old_meta = load_meta(layout)
    damaged_meta = layout.meta.exists() and not old_meta
    new_video = bool(old_meta) and not same_video(old_meta.get("source", {}), current, source)
    doomed: list[Path] = []
    models: list[Path] = []
    if new_video:
        _refuse_stale_user_au(layout, cfg, old_meta, source)
        doomed = _old_video_outputs(layout, old_meta)
        models = _models_reading(layout, old_meta) if doomed else []
        _check_replacing_old_video(layout, cfg, old_meta, source, doomed, models)
    meta = {"steps": {}} if new_video else {"steps": {}, **old_meta}
    meta["source"] = current  # a moved folder keeps its steps
    meta["notes"] = []
    ctx = Context(cfg, layout, info, meta)
    if damaged_meta:
        ctx.log(f"{layout.meta}: unreadable or not written by instag process; every step runs anew")
    if new_video:
        old_path = str(old_meta.get("source", {}).get("path"))
        ctx.log(f"{source} differs from the video meta.json recorded ({old_path}: size, content or streams)"
                if Path(old_path).resolve() == source.resolve() else
                f"{source} is not the video this folder was processed from ({old_path}, recorded in meta.json)")
        ctx.log("processing it as a new video (--force)" if doomed else "processing it as a new video")
        if doomed and models:
            ctx.log(f"the models {', '.join(map(str, models))} were adapted on the previous video; they no longer match "
                    "this folder (adapt them again, or keep a copy of the old folder to render them)")
    selected = [find_step(cfg.task)] if cfg.task.strip() != "-1" else STEPS
    before = {p for p in root.iterdir() if not folders.reserved(p.name)}
    protect = any(p.resolve() != source.resolve() and not p.name.startswith(".") for p in before)
    snapshot = None
    started = False
    try:
        rerun_rest = cfg.force
        for step in selected:
            if len(selected) > 1 and not rerun_rest and _done(step, ctx):
                print(f"instag process: [{step.task:>2}] {step.name}: done before, skipped (--force redoes it)", flush=True)
                continue
            if not started:  # only now: a run that skips every step changes nothing
                started = True
                snapshot = folders.Snapshot.take(root) if protect else None
                if doomed:
                    for path in doomed:
                        path.unlink(missing_ok=True)
                    ctx.log(f"removed {len(doomed)} files derived from the previous video")
            rerun_rest = True
            t0 = time.perf_counter()
            result = step.run(ctx) or {}
            seconds = time.perf_counter() - t0
            meta["steps"][step.name] = {"done": True, "seconds": round(seconds, 3), **result}
            write_json(layout.meta, meta)
            print(f"instag process: [{step.task:>2}] {step.name}: {seconds:.1f} s", flush=True)
    except BaseException as err:
        if snapshot is not None:
            snapshot.restore()
        elif isinstance(err, Exception):  # Ctrl-C keeps a first run's finished steps for the next run
            _remove_new(root, before, fresh_root)
        raise
    if snapshot is not None:
        snapshot.discard()
    return meta


def _remove_new(root: Path, before: set[Path], fresh_root: bool) -> None:
    """Delete what a failed first run created, so bad input leaves no partial dataset."""
    if fresh_root:
        shutil.rmtree(root, ignore_errors=True)
        return
    if not root.exists():
        return
    for entry in root.iterdir():
        if entry not in before and not folders.reserved(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
