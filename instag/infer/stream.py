"""Chunked real-time synthesis: audio arrives in pieces, frames leave as soon as they are determined.

Frame ``i`` sees the audio items ``i-4 .. i+3`` (METHOD §1.7). A ``mel`` item ``j`` holds the mel rows of
``j·40 ms − 160 ms .. j·40 ms + 140 ms`` (plus half an STFT window), so frame ``i`` is final once ``i·40 ms + 292 ms``
of audio have arrived; a ``whisper`` item ``j`` depends on the audio up to ``j·40 ms + 200 ms`` (its window's right
side, :mod:`instag.audio.whisper`), so frame ``i`` is final after ``i·40 ms + 323 ms``: that is the look-ahead. Features are
built block by block (:class:`instag.infer.features.MelFeatureBuilder`), poses, backgrounds and
AUs follow the same ping-pong plan as offline synthesis, and frames are rendered through the
same :func:`instag.infer.synthesize.render_frames`, so for the same audio and level reference
the stream yields the frames offline synthesis writes (bit for bit when both render with the
same batch size; batched float rounding may otherwise move a pixel value by one step).

``lookahead_ms`` (``--lookahead_ms``) trades that identity for latency: frame ``i`` is emitted as
soon as ``i·40 ms + lookahead_ms`` of audio are in, the audio not yet heard counting as silence
in its window. With 100 ms the first frame follows the first 200-ms chunk; the frames then
differ slightly from offline ones around the mouth (``bench/stream.py`` measures by how much).

The mel level reference must be fixed before the first frame: it is measured on the audio
received by then (or given with ``--reference_db``) and printed, so an offline run can match.

A performance (:mod:`instag.infer.performance`: ``--performance``, ``--expression``, ``--blink``, ``--pose``,
``--au_csv``) drives the stream as it drives offline synthesis, and events can arrive while it runs
(:meth:`StreamSynthesizer.add_event`; ``--stdin_events``: one JSON event a line on stdin, e.g.
``{"expression": "happy", "intensity": 0.8, "duration": 3}``): an event without a time starts at the next
frame to be made, one whose start has passed starts there too, and frames already made never change. Pauses
are decided frame by frame (:class:`instag.audio.activity.SilenceTracker`), by the same local rule as offline
synthesis, so pauses do not make a stream differ from it.

API::

    synth = StreamSynthesizer.from_paths("data/<ID>", "output/<ID>")
    for chunk in microphone_chunks():          # float32 16 kHz mono, any length
        for frame in synth.push(chunk):        # uint8 [H,W,3] RGB
            show(frame)
    for frame in synth.finish():
        show(frame)

or ``for frame in stream_frames(synth, chunks): ...``.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from instag.config import parse
from instag.data.format import AUDIO_SAMPLE_RATE, FPS, DatasetLayout
from instag.errors import InstagError
from instag.infer.delivery import DELIVERY_MODES, Controls, mouth_scaler
from instag.infer.performance import Performance, parse_event, performance_from_options
from instag.infer.synthesize import Backgrounds, Director, Plan, load_model, render_frames

LOOKAHEAD_ITEMS = 3  # frame i needs items up to i+3
STREAMING_EXTRACTORS = ("whisper", "mel")


class StreamSynthesizer:
    """Incremental synthesis for one model and its training clip (pose/background source)."""

    def __init__(self, model, clip, *, dilate: bool = False, reference_db: float | None = None, seed: int = 0,
                 batch: int = 8, lookahead_ms: float | None = None, performance: Performance | None = None,
                 pauses: bool = True, controls: Controls | None = None):
        from instag.audio.activity import SilenceTracker
        from instag.infer.features import MelFeatureBuilder, WhisperFeatureBuilder  # torch, kept out of --help

        if model.audio_extractor not in STREAMING_EXTRACTORS:
            raise InstagError(f"streaming needs a model trained on {' or '.join(STREAMING_EXTRACTORS)} features; this one "
                              f"uses {model.audio_extractor!r}, whose features need the whole clip: use `instag synthesize` instead")
        if lookahead_ms is not None and lookahead_ms < 0:
            raise InstagError("--lookahead_ms must be at least 0")
        self.model = model
        self.clip = clip
        self.lookahead_ms = lookahead_ms
        self.dilate = dilate
        self.batch = batch
        self.seed = seed
        self.features = MelFeatureBuilder(reference_db) if model.audio_extractor == "mel" else WhisperFeatureBuilder()
        self.next_frame = 0
        cam0 = clip.frames[0].camera
        self.backgrounds = Backgrounds(clip.layout, (cam0.height, cam0.width))
        self.director = Director(clip, performance, seed, pauses, controls)
        self.mouth = mouth_scaler(model, clip, self.director.controls)
        self.silence = SilenceTracker() if pauses else None
        self.first_frame_audio_s: float | None = None
        self.lip_gap: list[float] = []  # per delivered frame: the model's predicted lip opening (session logs)

    @classmethod
    def from_paths(cls, source_path: str | Path, model_path: str | Path, device: str | None = None, **kw) -> StreamSynthesizer:
        from instag.data.dataset import load_clip

        root = DatasetLayout.of(source_path).root
        model = load_model(model_path, None, device, source=root)
        return cls(model, load_clip(root, "train", model.audio_extractor), **kw)

    @property
    def reference_db(self) -> float | None:
        return self.features.reference_db

    def add_event(self, event: dict | str, where: str = "event") -> None:
        """A timeline event (a dict or one JSON line, :func:`instag.infer.performance.parse_event`) for the frames
        still to come; a bad one raises :class:`InstagError` naming ``where``."""
        if isinstance(event, str):
            try:
                event = json.loads(event)
            except ValueError as err:
                raise InstagError(f"{where}: not valid JSON ({err})") from err
        self.director.performer.add(parse_event(event, where, self.next_frame / FPS), self.next_frame)

    def _render_upto(self, stop: int) -> Iterator[np.ndarray]:
        if stop <= self.next_frame:
            return
        if self.first_frame_audio_s is None:
            self.first_frame_audio_s = self.features.samples.shape[0] / AUDIO_SAMPLE_RATE
        items_needed = stop + LOOKAHEAD_ITEMS if not self.features.finished else self.features.total_frames()
        items = self.features.items(items_needed, provisional=self.lookahead_ms is not None)
        silent = self.silence.decided(max(items.shape[0], stop)) if self.silence is not None else None
        items = self.director.quiet_items(items, silent, self.model.audio_extractor)
        start = self.next_frame
        plan = self.director.plan(start, stop, silent)
        for frame in render_frames(self.model, plan, items, self.backgrounds, self.dilate, self.batch, lip_gap=self.lip_gap,
                                   mouth=self.mouth):
            self.next_frame += 1
            yield frame

    def delivered_plan(self) -> Plan:
        """Plan of the frames delivered so far (events and pause decisions made later do not change them)."""
        silent = self.silence.decided(self.next_frame) if self.silence is not None else None
        return self.director.plan(0, self.next_frame, silent)

    def push(self, samples: np.ndarray) -> Iterator[np.ndarray]:
        """Add 16 kHz mono float32 samples; yields the frames (uint8 [H,W,3] RGB) they complete."""
        from instag.audio.mel import frame_count

        self.features.push(samples)
        if self.silence is not None:
            self.silence.push(samples)
        ready = self.features.ready_frames() - LOOKAHEAD_ITEMS
        if self.lookahead_ms is not None:  # frame i once i·40 ms + lookahead of audio is in
            received_ms = 1000.0 * self.features.samples.shape[0] / AUDIO_SAMPLE_RATE
            early = int((received_ms - self.lookahead_ms) // (1000.0 / FPS)) + 1
            ready = max(ready, min(early, frame_count(self.features.samples.shape[0])))
        yield from self._render_upto(ready)

    def finish(self) -> Iterator[np.ndarray]:
        """End of audio: yields the remaining frames."""
        self.features.finish()
        if self.silence is not None:
            self.silence.finish()
        yield from self._render_upto(self.features.total_frames())
        self.backgrounds.close()


def stream_frames(synth: StreamSynthesizer, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Frames of ``synth`` for an iterable of audio chunks, then the tail at its end."""
    for chunk in chunks:
        yield from synth.push(chunk)
    yield from synth.finish()


@dataclass
class StreamConfig:
    """Chunked real-time synthesis of a wav (simulating live audio), with latency and FPS."""

    source_path: str = field(metadata={"flags": ("-S", "-s"), "help": "processed clip data/<ID>"})
    model_path: str = field(metadata={"flags": ("-M", "-m"), "help": "trained model folder output/<ID>"})
    audio: str = field(metadata={"help": "speech .wav fed in chunks"})
    chunk_ms: int = field(default=200, metadata={"min": 1, "help": "audio chunk length in ms"})
    realtime: bool = field(default=False, metadata={"help": "feed chunks at the speed of speech (else as fast as possible)"})
    output: str | None = field(default=None, metadata={"help": "output mp4 (default output/<ID>/inference/<audio name>_stream.mp4)"})
    dilate: bool = field(default=True, metadata={"help": "dilate the mouth alpha 13x13 before compositing, as upstream's scripts do"})
    reference_db: float | None = field(default=None, metadata={"help": "mel level reference in dB (default: measured on the first audio)"})
    lookahead_ms: float | None = field(default=None, metadata={"min": 0,
        "help": "emit frame i after i*40 ms + this much audio, unheard audio as silence (default: the features' whole look-ahead, 292 ms for mel and 323 ms for whisper: frames identical to offline)"})
    seed: int = field(default=0, metadata={"min": 0, "max": 2**32 - 1, "help": "seed of the blink timing"})
    batch: int = field(default=8, metadata={"min": 1, "help": "largest number of frames rendered at once"})
    device: str | None = field(default=None, metadata={"help": "cuda or cpu (default: cuda when available)"})
    quiet: bool = field(default=False, metadata={"help": "no progress bar"})
    performance: str | None = field(default=None, metadata={"help": "JSON timeline of the performance (see instag synthesize --help)"})
    expression: str | None = field(default=None, metadata={"help": "expressions over time, e.g. happy:0.7@2.0-4.5,surprised:0.5@6-7"})
    blink: str | None = field(default=None, metadata={"help": "auto, off, or blinks per minute (default: auto)"})
    pose: str | None = field(default=None, metadata={"help": "pingpong, train, still, or a clip folder, track_params.pt or pose csv (default: pingpong)"})
    au_csv: str | None = field(default=None, metadata={"help": "OpenFace-format AU csv replacing the default AUs of the columns it holds"})
    pauses: bool | None = field(default=None, metadata={"help": "in pauses close the mouth and relax the face (default: true)"})
    stdin_events: bool = field(default=False, metadata={
        "help": 'read timeline events from stdin while streaming, one JSON object a line, e.g. {"gesture": "nod"}'})
    delivery: str | None = field(default=None, metadata={
        "help": "auto: the model's delivery policy picks the controls below (see instag synthesize --help)", "choices": DELIVERY_MODES})
    mouth_scale: float = field(default=1.0, metadata={"help": "mouth motion around its silence value, 0.6-1.5, within the training footage's"})
    smoothing: float = field(default=0.0, metadata={"help": "causal smoothing of the audio drive over frames, 0-0.6"})
    expression_intensity: float = field(default=1.0, metadata={"help": "multiplier on requested expressions, 0-1.5"})


def read_events(lines: Iterable[str], events: queue.Queue) -> None:
    """Put each non-empty line of ``lines`` (e.g. stdin) on ``events`` as (where, line); runs in a thread."""
    for number, line in enumerate(lines, 1):
        if line.strip():
            events.put((f"stdin line {number}", line))


def run_stream(synth: StreamSynthesizer, samples: np.ndarray, chunk_ms: int = 200, realtime: bool = False,
               on_frame=None, events: queue.Queue | None = None) -> dict:
    """Feed ``samples`` in chunks; returns latency and throughput figures.

    ``first_frame_latency_s``: from the arrival of the chunk that completed the first frame to
    that frame being ready. ``first_frame_audio_s``: audio received when the first frame was due.
    ``events``: a queue of (where, JSON line) timeline events, taken before each chunk; a bad one is reported
    on stderr and skipped.
    """
    import torch

    chunk = max(1, int(round(chunk_ms * AUDIO_SAMPLE_RATE / 1000)))
    sync = torch.cuda.synchronize if synth.model.device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    first_latency = None
    count = 0
    latency_ms: list[float] = []  # per frame, from the arrival of the audio that completed it
    for s in range(0, samples.shape[0], chunk):
        if realtime:
            due = t0 + (s + chunk) / AUDIO_SAMPLE_RATE
            time.sleep(max(0.0, due - time.perf_counter()))
        while events is not None and not events.empty():
            where, line = events.get_nowait()
            try:
                synth.add_event(line, where)
            except InstagError as err:
                print(f"instag stream: event skipped: {err}", file=sys.stderr)
        t_chunk = time.perf_counter()
        for frame in synth.push(samples[s : s + chunk]):
            if first_latency is None:
                sync()
                first_latency = time.perf_counter() - t_chunk
            latency_ms.append(1000 * (time.perf_counter() - t_chunk))
            count += 1
            if on_frame is not None:
                on_frame(frame)
    t_end = time.perf_counter()
    for frame in synth.finish():
        if first_latency is None:
            first_latency = time.perf_counter() - t0
        latency_ms.append(1000 * (time.perf_counter() - t_end))
        count += 1
        if on_frame is not None:
            on_frame(frame)
    sync()
    total = time.perf_counter() - t0
    audio_s = samples.shape[0] / AUDIO_SAMPLE_RATE
    return {"frames": count, "audio_seconds": audio_s, "wall_seconds": total, "fps": count / max(total, 1e-9),
            "first_frame_latency_s": first_latency, "first_frame_audio_s": synth.first_frame_audio_s,
            "chunk_ms": chunk_ms, "realtime": realtime, "reference_db": synth.reference_db, "latency_ms": latency_ms}


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from instag.infer.delivery import resolve, settings_entry
    from instag.infer.sessionlog import SessionRecorder, write_session
    from instag.io.encode import VideoWriter, check_video_output, ffmpeg_exe, mux_audio
    from instag.io.folders import staging
    from instag.io.wav import load_audio_16k_mono

    cfg = parse(StreamConfig, argv, prog="instag stream")
    from instag.audio.mel import frame_count  # imports torch: after the flags, so that --help answers at once

    performance = performance_from_options(cfg.performance, cfg.expression, cfg.blink, cfg.pose, cfg.au_csv,
                                           cfg.source_path)
    pauses = cfg.pauses if cfg.pauses is not None else performance.pauses is not False
    out = Path(cfg.output) if cfg.output else Path(cfg.model_path) / "inference" / f"{Path(cfg.audio).stem}_stream.mp4"
    check_video_output(out, inputs={"--audio": cfg.audio, "--performance": cfg.performance, "--au_csv": cfg.au_csv,
                                    "--pose": cfg.pose})  # before any work
    arm, controls = resolve(cfg.model_path, cfg.delivery, Controls(cfg.mouth_scale, cfg.smoothing, cfg.expression_intensity))
    samples = load_audio_16k_mono(cfg.audio)
    num_frames = frame_count(samples.shape[0])
    if num_frames == 0:
        raise InstagError(f"{cfg.audio} is too short to drive a single frame ({samples.shape[0] / AUDIO_SAMPLE_RATE:.3f} s; "
                          f"a frame is {1000 // FPS} ms)")
    synth = StreamSynthesizer.from_paths(cfg.source_path, cfg.model_path, cfg.device, dilate=cfg.dilate,
                                         reference_db=cfg.reference_db, seed=cfg.seed, batch=cfg.batch,
                                         lookahead_ms=cfg.lookahead_ms, performance=performance, pauses=pauses,
                                         controls=controls)
    notice = synth.director.unshowable(synth.model)
    if notice:
        print(f"instag stream: note: {notice}")
    events: queue.Queue | None = None
    if cfg.stdin_events:
        events = queue.Queue()
        threading.Thread(target=read_events, args=(sys.stdin, events), daemon=True).start()
    cam0 = synth.clip.frames[0].camera
    print(f"instag stream: {num_frames} frames ({samples.shape[0] / AUDIO_SAMPLE_RATE:.2f} s) at {cam0.width}x{cam0.height} "
          f"on {synth.model.device} in {cfg.chunk_ms}-ms chunks{' at the speed of speech' if cfg.realtime else ''} -> {out}")
    bar = tqdm(total=num_frames, desc="stream", unit="frame", file=sys.stderr, disable=cfg.quiet)

    def on_frame(frame: np.ndarray) -> None:
        writer.write(frame)
        bar.update(1)

    session = SessionRecorder(cfg.model_path, "stream", audio_name=Path(cfg.audio).name, settings={
        "chunk_ms": cfg.chunk_ms, "realtime": cfg.realtime, "lookahead_ms": cfg.lookahead_ms, "dilate": cfg.dilate},
        source_path=DatasetLayout.of(cfg.source_path).root, output=out, performance=synth.director.performance)
    with staging(out.parent) as tmp:  # the silent video lives there until its sound is muxed in
        silent = tmp / "video.mp4" if ffmpeg_exe() is not None else out
        with bar, VideoWriter(silent, fps=FPS) as writer:
            stats = run_stream(synth, samples, cfg.chunk_ms, cfg.realtime, on_frame, events)
        if silent != out:
            mux_audio(silent, cfg.audio, out)
        else:
            print(f"instag stream: {out} has no sound: no ffmpeg binary (pip install imageio-ffmpeg)", file=sys.stderr)
    print(f"instag stream: wrote {out} ({stats['frames']} frames); first frame {1000 * stats['first_frame_latency_s']:.0f} ms "
          f"after its audio arrived (needs {1000 * (stats['first_frame_audio_s'] or 0):.0f} ms of audio with "
          f"{cfg.chunk_ms}-ms chunks); {stats['fps']:.1f} FPS overall" + (
              f"; mel reference {stats['reference_db']:.2f} dB (pass --reference_db to synthesize for identical frames)"
              if stats["reference_db"] is not None else ""))
    session.latency_ms = stats["latency_ms"]
    session.settings["delivery"] = settings_entry(arm, controls, synth.mouth)
    write_session(session, samples, None, synth.delivered_plan(), synth.lip_gap)
    return 0


if __name__ == "__main__":
    sys.exit(main())
