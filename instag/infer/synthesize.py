"""Offline synthesis: a trained head driven by new speech -> mp4 with that sound.

``python synthesize_fuse.py -S data/<ID> -M output/<ID> --audio new.wav`` (or ``instag synthesize``)
writes ``output/<ID>/inference/<audio name>.mp4``:

- audio: a wav (features extracted with the model's extractor; mel block by block so that
  streaming gives the same frames, :mod:`instag.infer.features`) or a feature ``.npy``;
- a performance (:mod:`instag.infer.performance`): ``--expression happy:0.7@2-4.5``, ``--blink auto|off|N``,
  ``--pose pingpong|train|still|FILE`` (:mod:`instag.infer.pose`), ``--au_csv``, nod/shake/tilt gestures and
  blinks on request, all in one ``--performance perf.json``; by default the training frames play forward then
  backward (ping-pong) for pose, torso, background and AUs, with generated blinks, and in pauses of the speech
  the mouth closes and the face relaxes (``--pauses false`` turns that off);
- ``--dilate`` (on by default; ``--dilate false`` turns it off): 13×13 dilation of the mouth alpha (METHOD §2.10); ``--full_frame``: paste the
  rendered crop back into the source video's framing (``crop.json``); ``--save_frames``: PNGs too.

:func:`render_frames` is the one rendering path: the evaluation split (``instag evaluate``,
adaptation's final evaluation) and streaming use it too.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from tqdm import tqdm

from instag.audio.registry import EXTRACTORS as AUDIO_EXTRACTORS
from instag.config import parse
from instag.data.format import EXPRESSION_AUS, FPS, SLOW_AUS, DatasetLayout
from instag.errors import InstagError
from instag.infer.delivery import DELIVERY_MODES, Controls, smooth_items
from instag.infer.performance import Performance, Performer, blend_toward_silence, performance_from_options
from instag.infer.pose import PoseTrack, cameras_with_poses, gesture_angles, with_gestures

if TYPE_CHECKING:  # torch loads in the functions that use it, so that `instag synthesize --help` answers at once
    import torch

    from instag.render import Camera


@dataclass
class SynthesizeConfig:
    """Render a trained talking head driven by new audio into an mp4 with that sound."""

    source_path: str = field(metadata={"flags": ("-S", "-s"), "help": "processed clip data/<ID>"})
    model_path: str = field(metadata={"flags": ("-M", "-m"), "help": "trained model folder output/<ID>"})
    audio: str = field(metadata={"help": "driving speech: a .wav, or a feature .npy made by the model's extractor"})
    audio_extractor: str | None = field(default=None, metadata={
        "help": "extractor of the features (default: the one recorded in the model; a mismatch is refused)",
        "choices": tuple(AUDIO_EXTRACTORS)})
    output: str | None = field(default=None, metadata={"help": "output mp4 (default output/<ID>/inference/<audio name>.mp4)"})
    dilate: bool = field(default=True, metadata={"help": "dilate the mouth alpha 13x13 before compositing, as upstream's scripts do"})
    full_frame: bool = field(default=False, metadata={"help": "paste the render back into the source video's framing (crop.json)"})
    save_frames: bool = field(default=False, metadata={"help": "also write every frame as PNG beside the video"})
    performance: str | None = field(default=None, metadata={
        "help": "JSON timeline of the performance: settings (blink, pose, au_csv, pauses) and events (expression, aus, "
                "blink, gesture); the flags below override its settings"})
    expression: str | None = field(default=None, metadata={
        "help": "expressions over time, NAME[:INTENSITY 0-1][@START[-END] s], comma-separated, e.g. "
                "happy:0.7@2.0-4.5,surprised:0.5@6-7 (happy, sad, surprised, angry, brows_up, neutral; AU12:2@1-2 for one AU)"})
    blink: str | None = field(default=None, metadata={"help": "auto (the training clip's rate), off, or blinks per minute (default: auto)"})
    pose: str | None = field(default=None, metadata={
        "help": "head pose: pingpong, train (forward, looped), still, or a pose driver: another processed clip of the person, "
                "a track_params.pt or a pose csv (default: pingpong)"})
    au_csv: str | None = field(default=None, metadata={"help": "OpenFace-format AU csv, one row per frame, replacing the default AUs of the columns it holds"})
    pauses: bool | None = field(default=None, metadata={"help": "in pauses of the speech close the mouth and relax the face (default: true)"})
    reference_db: float | None = field(default=None, metadata={"help": "mel level reference in dB (default: the clip's own; streaming prints the one it used)"})
    delivery: str | None = field(default=None, metadata={
        "help": "auto: the model's delivery policy (logs/delivery.json) picks the controls below and the session log "
                "records its arm, for feedback to update it; off (default): the controls as given",
        "choices": DELIVERY_MODES})
    mouth_scale: float = field(default=1.0, metadata={
        "help": "mouth motion around its silence value, 0.6-1.5, cut back per frame to the lip gap the model gives "
                "its training footage"})
    smoothing: float = field(default=0.0, metadata={"help": "causal smoothing of the audio drive over frames, 0-0.6 (EMA weight)"})
    expression_intensity: float = field(default=1.0, metadata={"help": "multiplier on requested expressions, 0-1.5"})
    seed: int = field(default=0, metadata={"min": 0, "max": 2**32 - 1, "help": "seed of the blink timing"})
    batch: int = field(default=8, metadata={"min": 1, "help": "frames rendered per batch"})
    device: str | None = field(default=None, metadata={"help": "cuda or cpu (default: cuda when available)"})
    quiet: bool = field(default=False, metadata={"help": "no progress bar"})


# ---------------------------------------------------------------------------------------- planning
VISIBLE_PX = 0.5  # an AU that moves no face Gaussian this far on screen has no visible effect


@dataclass
class Plan:
    """What drives each output frame: cameras, the frame index giving torso/background (and the
    source frame for ``--full_frame``), the AU condition [T, len(EXPRESSION_AUS)] and the audio item index."""

    cameras: list[Camera]
    background_index: list[int]
    au_exp: np.ndarray
    audio_index: list[int]

    def __len__(self) -> int:
        return len(self.cameras)


class Director:
    """Everything but the audio that drives the output frames of one performance on one training clip (``clip``:
    :func:`instag.data.dataset.load_clip`): head pose, torso/background frame and AU condition. Frame ``k`` of a
    plan depends on the events and pause flags up to ``k`` only, so streams and offline runs agree."""

    def __init__(self, clip, performance: Performance | None = None, seed: int = 0, pauses: bool = True,
                 controls: Controls | None = None):
        performance = performance if performance is not None else Performance()
        self.clip = clip
        self.controls = controls if controls is not None else Controls()
        self.performer = Performer(clip.au_exp, clip.has_au, performance, seed, pauses, self.controls.expression_intensity)
        self.poses = PoseTrack([f.camera for f in clip.frames], performance.pose or "pingpong")
        self.held = [EXPRESSION_AUS.index(a) for a in SLOW_AUS]
        self._silence_item = None

    @property
    def performance(self) -> Performance:
        return self.performer.performance

    def unshowable(self, model) -> str | None:
        """A one-line notice when ``model`` cannot show what the performance asks of the face (expressions, blinks,
        an AU csv): the AUs that move no visible Gaussian by :data:`VISIBLE_PX` (probed with
        :meth:`instag.model.talking_head.TalkingHead.au_response` on the clip's first camera); None when it can."""
        import torch

        asked = self.performer.requested_aus()
        if not asked:
            return None
        moved = model.au_response(torch.from_numpy(np.asarray(self.performer.rest, np.float32)),
                                  {name: value for name, (value, _) in asked.items()}, self.clip.frames[0].camera)
        faint = [name for name, px in moved.items() if px < VISIBLE_PX]
        if not faint:
            return None
        known = model.face_field.expression.columns
        what = sorted({asked[name][1] for name in faint})
        details = ", ".join(f"{name} {moved[name]:.2f} px" if name in known else f"{name} not in its AU condition"
                            for name in faint)
        return (f"this model cannot show the requested {', '.join(what)}: the face barely moves for them ({details}; "
                f"visible from {VISIBLE_PX:g} px); expressions and blinks need a pre-training whose face field learnt "
                "the AUs (the default recipe on many identities, not the CPU recipe's tiny one)")

    def plan(self, start: int, stop: int, silent: np.ndarray | None = None) -> Plan:
        """Plan of output frames ``start..stop-1``; ``silent`` [>= stop] pause flags from frame 0 (None: no pauses)."""
        frames = np.arange(start, stop)
        rots, trans, pos = self.poses.at(frames)
        rots, trans = with_gestures(rots, trans, gesture_angles(self.performance.gestures, frames))
        default = self.clip.au_exp[pos].copy()  # brows and lids as they moved in training
        default[:, self.held] = self.performer.rest[self.held]  # the mouth corners moved with the training speech
        if self.poses.mode == "still":
            default[:] = self.performer.rest
        au = self.performer.au(default, frames, silent)
        cameras = cameras_with_poses([self.clip.frames[p].camera for p in pos], rots, trans)
        return Plan(cameras, [self.clip.frames[p].index for p in pos], au, frames.tolist())

    def quiet_items(self, items: torch.Tensor, silent: np.ndarray | None, extractor: str) -> torch.Tensor:
        """Audio items [T,C,W] of ``extractor`` smoothed by the delivery controls (:mod:`instag.infer.delivery`) and
        blended toward its silence item over pauses (``silent`` [>= T])."""
        items = smooth_items(items, self.controls.smoothing)
        if silent is None:
            return items
        weights = self.performer.item_weights(np.asarray(silent[: items.shape[0]], bool))
        if not (weights > 0).any():
            return items
        if self._silence_item is None:
            from instag.infer.features import silence_items

            self._silence_item = silence_items(8, extractor)[4]  # the middle one: no edge of the audio in its window
        return blend_toward_silence(items, weights, self._silence_item)


def pingpong_plan(clip, num_frames: int, seed: int = 0) -> Plan:
    """Plan of the default performance without pause handling (ping-pong pose, training AUs, generated blinks)."""
    return Director(clip, seed=seed, pauses=False).plan(0, num_frames)


def split_plan(clip) -> Plan:
    """Plan of a split as recorded (evaluation): its cameras, backgrounds, AUs and audio ids."""
    return Plan([f.camera for f in clip.frames], [f.index for f in clip.frames], clip.au_exp.astype(np.float32),
                [f.aud_id for f in clip.frames])


# ---------------------------------------------------------------------------------------- rendering
class Backgrounds:
    """Torso-over-plate backgrounds RGB float [3,H,W] per frame index, read ahead in threads with a small cache."""

    def __init__(self, layout: DatasetLayout, size: tuple[int, int], cache: int = 64, workers: int = 4):
        from instag.data.dataset import read_background

        self.layout = layout
        self.size = size  # (H, W)
        plate = cv2.imread(str(layout.background)) if layout.background.exists() else None
        self._plate = plate
        self._read = read_background
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._limit = cache
        self._pool = ThreadPoolExecutor(max_workers=workers)
        self._pending: dict[int, object] = {}

    def _load(self, index: int) -> np.ndarray:
        bgr = self._read(self.layout, index, self._plate)
        h, w = self.size
        if bgr.shape[:2] != (h, w):
            bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(bgr[:, :, ::-1])

    def prefetch(self, indices: list[int]) -> None:
        for i in indices:
            if i not in self._cache and i not in self._pending:
                self._pending[i] = self._pool.submit(self._load, i)

    def get(self, index: int) -> np.ndarray:
        """uint8 [H,W,3] RGB."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        fut = self._pending.pop(index, None)
        img = fut.result() if fut is not None else self._load(index)
        self._cache[index] = img
        if len(self._cache) > self._limit:
            self._cache.popitem(last=False)
        return img

    def batch(self, indices: list[int], device: torch.device) -> torch.Tensor:
        import torch

        imgs = np.stack([self.get(i) for i in indices])
        return torch.from_numpy(imgs).to(device).permute(0, 3, 1, 2).float().div_(255.0)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] float in [0,1] -> uint8 [B,H,W,3] RGB on the CPU."""
    import torch

    return images.clamp(0, 1).mul(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def render_frames(model, plan: Plan, items: torch.Tensor, backgrounds: Backgrounds, dilate: bool = False,
                  batch: int = 8, start: int = 0, stop: int | None = None,
                  lip_gap: list[float] | None = None, mouth=None) -> Iterator[np.ndarray]:
    """Frames ``start..stop-1`` of ``plan`` as uint8 [H,W,3] RGB; ``items`` [T,C,W] audio items. ``lip_gap``: a list
    that receives each frame's predicted lip opening (the model's FM-hook gap) as the frames are rendered.
    ``mouth``: a :class:`instag.infer.delivery.MouthScaler` applied to each frame's audio window (None: as is)."""
    import torch

    from instag.audio.windows import frame_windows

    dev = model.device
    items = items.to(dev, torch.float32)
    au = torch.from_numpy(np.asarray(plan.au_exp, np.float32)).to(dev)
    stop = len(plan) if stop is None else stop
    backgrounds.prefetch(plan.background_index[start : start + 2 * batch])
    for s in range(start, stop, batch):
        e = min(stop, s + batch)
        backgrounds.prefetch(plan.background_index[e : e + 2 * batch])
        idx = torch.tensor(plan.audio_index[s:e], device=dev)
        windows = frame_windows(items, idx)
        out = model.render_frames(plan.cameras[s:e], windows if mouth is None else mouth(windows), au[s:e],
                                  backgrounds.batch(plan.background_index[s:e], dev), dilate=dilate)
        if lip_gap is not None:
            lip_gap.extend(out["lip_gap"].tolist())
        yield from to_uint8(out["image"])


def load_model(model_path: str | Path, audio_extractor: str | None, device: str | None, source: str | Path | None = None):
    """The fused head, refusing an extractor other than the one it was trained with (and, with ``source``, a
    model adapted on another clip than that processed clip)."""
    from instag.model.talking_head import TalkingHead

    model = TalkingHead.load(model_path, device=device, source=source)
    if audio_extractor is not None and audio_extractor != model.audio_extractor:
        raise InstagError(f"{model_path} was trained with --audio_extractor {model.audio_extractor}, not {audio_extractor}; "
                          f"pass --audio_extractor {model.audio_extractor} (and features made by it)")
    return model


# ---------------------------------------------------------------------------------------- full frame
class FullFrame:
    """Pastes rendered crops back into the source video's frames (``crop.json``)."""

    def __init__(self, layout: DatasetLayout, indices: list[int]):
        import json

        if not layout.crop.exists():
            raise InstagError(f"--full_frame needs {layout.crop}; re-run preprocessing (it records the crop)")
        crop = json.loads(layout.crop.read_text(encoding="utf-8"))
        self.applied = bool(crop.get("applied", False))
        self.box = [int(v) for v in crop["box"]]
        self._frames: dict[int, bytes] = {}
        if not self.applied:
            return
        from instag.io.video import iter_frames, probe

        if not layout.video.exists():
            raise InstagError(f"--full_frame needs the source video {layout.video} (the crop is pasted into its frames)")
        wanted = set(indices)
        last = max(wanted)
        for i, frame in enumerate(iter_frames(probe(layout.video, require_audio=False))):
            if i in wanted:  # kept JPEG-compressed in memory: a few hundred kB per source frame
                self._frames[i] = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
            if i >= last:
                break

    def paste(self, rgb: np.ndarray, index: int) -> np.ndarray:
        if not self.applied:
            return rgb
        data = self._frames.get(index)
        if data is None:
            raise InstagError(f"source frame {index} of the video is missing; re-run preprocessing")
        full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1].copy()
        x, y, w, h = self.box
        full[y : y + h, x : x + w] = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_CUBIC if w > rgb.shape[1] else cv2.INTER_AREA)
        return full


# ---------------------------------------------------------------------------------------- output
def frames_contents(out_mp4: Path) -> str:
    """What ``--save_frames`` puts in the folder beside ``out_mp4``, as error messages name it."""
    return f"the frames of {out_mp4} (--save_frames)"


def write_outputs(frames: Iterator[np.ndarray], out_mp4: Path, wav: Path | None, frames_dir: Path | None = None,
                  samples: np.ndarray | None = None) -> dict:
    """Encode ``frames`` to ``out_mp4`` and mux ``wav`` (or ``samples`` at 16 kHz) into it; times in seconds."""
    from instag.io.atomic import write_image
    from instag.io.encode import VideoWriter, ffmpeg_exe, mux_audio
    from instag.io.folders import replace_folder, staging

    times = {"render_encode": 0.0, "mux": 0.0}
    count = 0
    t0 = time.perf_counter()
    can_mux = (wav is not None or samples is not None) and ffmpeg_exe() is not None
    with staging(out_mp4.parent) as tmp:
        silent = tmp / "video.mp4" if can_mux else out_mp4
        staged_frames = tmp / "frames"  # PNGs move into place only once the video is complete
        try:
            with VideoWriter(silent, fps=FPS, background=True) as writer:
                for frame in frames:
                    writer.write(frame)
                    if frames_dir is not None:
                        write_image(staged_frames / f"{count:05d}.png", frame[:, :, ::-1])
                    count += 1
        except InstagError as err:  # name the user's outputs, not the staging folder
            if str(tmp) not in str(err):
                raise
            reason = str(err).split(": ", 1)[-1]
            frames_note = f" and its frames {frames_dir}" if frames_dir is not None else ""
            raise InstagError(f"cannot write {out_mp4}{frames_note}: {reason}") from err
        times["render_encode"] = time.perf_counter() - t0
        if can_mux:
            t1 = time.perf_counter()
            if wav is None or wav.suffix.lower() != ".wav":
                from instag.io.wav import write_wav

                wav = tmp / "audio.wav"
                write_wav(wav, samples, 16000)
            mux_audio(silent, wav, out_mp4)
            times["mux"] = time.perf_counter() - t1
        if frames_dir is not None and count:
            replace_folder(staged_frames, frames_dir, frames_contents(out_mp4))
    return {"frames": count, "muxed": can_mux, **times}


def synthesize(cfg: SynthesizeConfig, log=print) -> dict:
    """Run synthesis for ``cfg``; returns paths, frame count and timings."""
    from instag.data.dataset import load_clip
    from instag.infer.delivery import mouth_scaler, resolve, settings_entry
    from instag.infer.features import audio_items
    from instag.infer.sessionlog import SessionRecorder, write_session
    from instag.io.encode import check_video_output
    from instag.io.folders import check_replaceable

    t_start = time.perf_counter()
    out = Path(cfg.output) if cfg.output else Path(cfg.model_path) / "inference" / f"{Path(cfg.audio).stem}.mp4"
    check_video_output(out, inputs={"--audio": cfg.audio, "--performance": cfg.performance, "--au_csv": cfg.au_csv,
                                    "--pose": cfg.pose})  # before any work, like the frames folder below
    frames_dir = out.with_suffix("") if cfg.save_frames else None
    if frames_dir is not None:  # before any work: a folder instag did not write is never replaced
        check_replaceable(frames_dir, frames_contents(out))
    performance = performance_from_options(cfg.performance, cfg.expression, cfg.blink, cfg.pose, cfg.au_csv,
                                           cfg.source_path)
    layout = DatasetLayout.of(cfg.source_path)
    model = load_model(cfg.model_path, cfg.audio_extractor, cfg.device, source=layout.root)
    extractor = model.audio_extractor
    t0 = time.perf_counter()
    items, info = audio_items(cfg.audio, extractor, cfg.reference_db)
    t_features = time.perf_counter() - t0
    num_frames = int(items.shape[0])
    if num_frames == 0:
        raise InstagError(f"{cfg.audio} is too short to drive a single frame")
    clip = load_clip(layout.root, "train", extractor)
    pauses = cfg.pauses if cfg.pauses is not None else performance.pauses is not False
    arm, controls = resolve(cfg.model_path, cfg.delivery, Controls(cfg.mouth_scale, cfg.smoothing, cfg.expression_intensity), log)
    director = Director(clip, performance, cfg.seed, pauses, controls)
    notice = director.unshowable(model)
    if notice:
        log(f"instag synthesize: note: {notice}")
    mouth = mouth_scaler(model, clip, controls)
    silent = pause_flags(info, num_frames) if pauses else None
    if pauses and silent is None:
        log(f"instag synthesize: no sound beside {cfg.audio}: pauses are not handled (give the wav)")
    items = director.quiet_items(items, silent, extractor)
    plan = director.plan(0, num_frames, silent)
    out.parent.mkdir(parents=True, exist_ok=True)
    cam0 = plan.cameras[0]
    log(f"instag synthesize: {num_frames} frames ({num_frames / FPS:.2f} s) at {cam0.width}x{cam0.height} on "
        f"{model.device} -> {out}")
    backgrounds = Backgrounds(layout, (cam0.height, cam0.width))
    paste = FullFrame(layout, sorted(set(plan.background_index))) if cfg.full_frame else None
    render_time = [0.0]
    bar = tqdm(total=num_frames, desc="synthesize", unit="frame", file=sys.stderr, disable=cfg.quiet)
    session = SessionRecorder(cfg.model_path, "synthesize", audio_name=Path(cfg.audio).name,
                              settings={"dilate": cfg.dilate, "seed": cfg.seed, "batch": cfg.batch},
                              source_path=layout.root, output=out, performance=director.performance)
    lip_gap: list[float] = []

    def frames() -> Iterator[np.ndarray]:
        it = render_frames(model, plan, items, backgrounds, cfg.dilate, cfg.batch, lip_gap=lip_gap, mouth=mouth)
        k = 0
        while True:
            t = time.perf_counter()
            frame = next(it, None)
            render_time[0] += time.perf_counter() - t
            if frame is None:
                return
            session.frame(1000 * (time.perf_counter() - t))
            yield paste.paste(frame, plan.background_index[k]) if paste is not None else frame
            bar.update(1)
            k += 1

    try:
        stats = write_outputs(frames(), out, info.get("wav"), frames_dir, info.get("samples"))
    finally:
        bar.close()
        backgrounds.close()
    total = time.perf_counter() - t_start
    result = {
        "output": str(out), "frames": stats["frames"], "seconds_of_video": stats["frames"] / FPS,
        "audio_muxed": stats["muxed"], "reference_db": info.get("reference_db"),
        "time_features": t_features, "time_render": render_time[0],
        "time_encode": stats["render_encode"] - render_time[0], "time_mux": stats["mux"], "time_total": total,
        "render_fps": stats["frames"] / max(render_time[0], 1e-9),
    }
    log(f"instag synthesize: wrote {out} ({stats['frames']} frames, {stats['frames'] / FPS:.2f} s"
        f"{'' if stats['muxed'] else ', no audio: ffmpeg unavailable or no wav'}); rendering {result['render_fps']:.1f} FPS, "
        f"end to end {total:.2f} s (features {t_features:.2f}, render {render_time[0]:.2f}, "
        f"encode {result['time_encode']:.2f}, mux {stats['mux']:.2f})")
    session.settings["delivery"] = settings_entry(arm, controls, mouth)
    write_session(session, info.get("samples"), info.get("wav"), plan, lip_gap)
    return result


def pause_flags(info: dict, num_frames: int) -> np.ndarray | None:
    """Pause flags [T] of the driving sound (:func:`instag.audio.activity.silent_frames`), None without its samples."""
    from instag.audio.activity import silent_frames

    samples = info.get("samples")
    if samples is None and info.get("wav") is not None:
        from instag.io.wav import load_audio_16k_mono

        samples = load_audio_16k_mono(info["wav"])
    return None if samples is None else silent_frames(samples, num_frames)


def main(argv: list[str] | None = None) -> int:
    cfg = parse(SynthesizeConfig, argv, prog="instag synthesize")
    synthesize(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
