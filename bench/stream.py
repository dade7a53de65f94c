"""Streaming latency and throughput (DESIGN §4 bar: first frame <= 150 ms after the first 200 ms
of audio, then keeps up with 25 FPS).

    python bench/stream.py [-S data/<ID> -M output/<ID>] [--seconds 12] [--chunks 200 40] [--out ...]

For each chunk length, audio is fed in real time (a chunk every chunk length) and as fast as
possible. Reported: ``first_audio_ms``, the audio that had arrived when the first frame was due
(frame 0 needs 292 ms of look-ahead, so 400 ms with 200-ms chunks); ``first_latency_ms``, from the
arrival of that chunk to the frame being ready; ``max_lag_ms`` (real time only), the largest delay
of a frame behind the audio that completed it; and the sustained FPS of the as-fast-as-possible run.
Rows with ``lookahead_ms`` run the low-latency mode (frames after i·40 ms + that much audio, the
rest of the window as silence) and report ``psnr_vs_offline``, the mean PSNR of its frames
against offline synthesis of the same audio (from the MSE over all frames; ``inf`` = identical,
as the exact mode must be). Pause handling is off in both (a stream decides pauses against the loudness heard so
far, offline synthesis against the whole clip's).
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _synthetic import RESULTS, device_name, make_clip, model_counts, random_model, speech, table  # noqa: E402

from instag.config import parse  # noqa: E402
from instag.io.atomic import write_json  # noqa: E402


@dataclass
class BenchConfig:
    """Streaming benchmark."""

    source_path: str | None = field(default=None, metadata={"flags": ("-S",), "help": "processed clip (default: synthetic)"})
    model_path: str | None = field(default=None, metadata={"flags": ("-M",), "help": "trained model (default: random init)"})
    seconds: float = field(default=12.0, metadata={"help": "audio length"})
    chunks: list[int] = field(default_factory=lambda: [200, 40], metadata={"help": "chunk lengths in ms"})
    lookahead_ms: float = field(default=100.0, metadata={"help": "look-ahead of the low-latency rows"})
    resolution: int = field(default=512, metadata={"help": "frame size of the synthetic clip"})
    face: int = field(default=20000, metadata={"help": "face Gaussians of the random head"})
    mouth: int = field(default=5000, metadata={"help": "mouth Gaussians of the random head"})
    batch: int = field(default=8, metadata={"help": "largest frame batch per render call"})
    out: str = field(default=str(RESULTS / "stream.json"), metadata={"help": "JSON output path"})


def _realtime(synth, samples, chunk: int) -> dict:
    """Feed chunks on the audio clock; per frame, its delay behind the chunk that completed it."""
    import torch

    sync = torch.cuda.synchronize if synth.model.device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    lags = []
    first = None
    for s in range(0, samples.shape[0], chunk):
        arrival = t0 + (s + chunk) / 16000
        time.sleep(max(0.0, arrival - time.perf_counter()))
        arrival = max(arrival, time.perf_counter())
        for _ in synth.push(samples[s : s + chunk]):
            sync()
            lag = time.perf_counter() - arrival
            lags.append(lag)
            if first is None:
                first = (lag, synth.first_frame_audio_s)
    tail = list(synth.finish())
    return {"frames": len(lags) + len(tail), "first_latency_ms": 1000 * first[0], "first_audio_ms": 1000 * first[1],
            "max_lag_ms": 1000 * max(lags), "mean_lag_ms": 1000 * sum(lags) / len(lags)}


def _offline(synth, samples, batch: int) -> list:
    """Offline synthesis frames of ``samples`` with the stream's level reference (mel) or features (any extractor)."""
    from instag.infer.features import items_from_samples
    from instag.infer.synthesize import Backgrounds, pingpong_plan, render_frames

    items, _ = items_from_samples(samples, synth.model.audio_extractor, synth.reference_db)
    cam = synth.clip.frames[0].camera
    plan = pingpong_plan(synth.clip, items.shape[0], seed=synth.seed)
    return list(render_frames(synth.model, plan, items, Backgrounds(synth.clip.layout, (cam.height, cam.width)), batch=batch))


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from instag.infer.stream import StreamSynthesizer, run_stream
    from instag.metrics.image import mse, psnr_from_mse

    cfg = parse(BenchConfig, argv, prog="bench/stream.py")
    with tempfile.TemporaryDirectory(prefix="instag-bench-") as tmp:
        tmp = Path(tmp)
        source = Path(cfg.source_path) if cfg.source_path else make_clip(tmp / "data" / "synthetic", n_val=0, size=cfg.resolution)
        model = Path(cfg.model_path) if cfg.model_path else random_model(tmp / "output" / "synthetic", cfg.face, cfg.mouth)
        samples = speech(cfg.seconds)
        warm = StreamSynthesizer.from_paths(source, model, batch=cfg.batch)
        run_stream(warm, samples[: 16000 * 2], 200)  # start-up (CUDA context, kernels) outside the timings
        rows = []
        offline: dict[float, list] = {}
        for lookahead in (None, cfg.lookahead_ms):
            for chunk_ms in cfg.chunks:
                chunk = int(chunk_ms * 16)
                synth = StreamSynthesizer(warm.model, warm.clip, batch=cfg.batch, lookahead_ms=lookahead, pauses=False)
                row = {"chunk_ms": chunk_ms, "lookahead_ms": 292 if lookahead is None else lookahead,
                       **_realtime(synth, samples, chunk)}
                frames = []
                fast_synth = StreamSynthesizer(warm.model, warm.clip, batch=cfg.batch, lookahead_ms=lookahead, pauses=False)
                fast = run_stream(fast_synth, samples, chunk_ms, on_frame=frames.append)
                row["fast_fps"] = fast["fps"]
                row["fast_first_latency_ms"] = 1000 * fast["first_frame_latency_s"]
                ref = fast_synth.reference_db
                if ref not in offline:
                    offline[ref] = _offline(fast_synth, samples, cfg.batch)
                # over all frames at once: one identical frame must not make the mean infinite
                row["psnr_vs_offline"] = psnr_from_mse(float(np.mean([mse(a, b) for a, b in zip(frames, offline[ref])])))
                row["max_abs_diff"] = int(max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(frames, offline[ref])))
                rows.append(row)
        info = {"device": device_name(), "model": cfg.model_path or "random init",
                "data": cfg.source_path or f"synthetic {cfg.resolution}x{cfg.resolution}", **model_counts(model),
                "audio_seconds": cfg.seconds, "lookahead_ms": 292, "bar_first_frame_ms": 150, "bar_fps": 25, "rows": rows}
    print(f"streaming on {info['device']} ({info['model']} head, {info['face_gaussians']}+{info['mouth_gaussians']} Gaussians)")
    print(table(rows, ["chunk_ms", "lookahead_ms", "frames", "first_audio_ms", "first_latency_ms", "max_lag_ms",
                       "mean_lag_ms", "fast_fps", "fast_first_latency_ms", "psnr_vs_offline", "max_abs_diff"]))
    write_json(cfg.out, info)
    print(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
