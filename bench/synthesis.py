"""End-to-end synthesis time: 12 s of new audio -> mp4 with sound (DESIGN §4 bar: <= 10 s on an H100).

    python bench/synthesis.py [-S data/<ID> -M output/<ID>] [--audio x.wav] [--seconds 12] [--out ...]

Without -S/-M a synthetic 512² clip and a randomly initialised head (--face/--mouth Gaussians)
are made in a temporary folder (a device machine carries no dataset). The same synthesis is run
twice in one process: ``cold`` includes model loading and first-call CUDA/library start-up,
``warm`` is a second request to the loaded program. Rows: features, rendering (motion fields +
rasterization + compositing, including reading backgrounds), encoding, muxing and the total.
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
    """12-s synthesis benchmark."""

    source_path: str | None = field(default=None, metadata={"flags": ("-S",), "help": "processed clip (default: synthetic)"})
    model_path: str | None = field(default=None, metadata={"flags": ("-M",), "help": "trained model (default: random init)"})
    audio: str | None = field(default=None, metadata={"help": "speech wav (default: 12 s of shared speech or a synthetic signal)"})
    seconds: float = field(default=12.0, metadata={"help": "audio length"})
    resolution: int = field(default=512, metadata={"help": "frame size of the synthetic clip"})
    face: int = field(default=20000, metadata={"help": "face Gaussians of the random head"})
    mouth: int = field(default=5000, metadata={"help": "mouth Gaussians of the random head"})
    batch: int = field(default=16, metadata={"help": "frames per render batch"})
    dilate: bool = field(default=True, metadata={"help": "dilate the mouth alpha (as the scripts do)", })
    workdir: str | None = field(default=None, metadata={"help": "keep the synthetic clip, model and wav here (default: a temporary folder)"})
    out: str = field(default=str(RESULTS / "synthesis.json"), metadata={"help": "JSON output path"})


def main(argv: list[str] | None = None) -> int:
    from instag.infer.synthesize import SynthesizeConfig, synthesize
    from instag.io.wav import write_wav

    cfg = parse(BenchConfig, argv, prog="bench/synthesis.py")
    with tempfile.TemporaryDirectory(prefix="instag-bench-") as tmp:
        tmp = Path(cfg.workdir or tmp)
        source = Path(cfg.source_path) if cfg.source_path else make_clip(tmp / "data" / "synthetic", n_val=0, size=cfg.resolution)
        model = Path(cfg.model_path) if cfg.model_path else random_model(tmp / "output" / "synthetic", cfg.face, cfg.mouth)
        if cfg.audio:
            wav = Path(cfg.audio)
        else:
            wav = tmp / "speech.wav"
            write_wav(wav, speech(cfg.seconds), 16000)
        rows = []
        for run in ("cold", "warm"):
            scfg = SynthesizeConfig(source_path=str(source), model_path=str(model), audio=str(wav), dilate=cfg.dilate,
                                    batch=cfg.batch, output=str(tmp / f"{run}.mp4"))
            t0 = time.perf_counter()
            res = synthesize(scfg, log=lambda *_: None)
            wall = time.perf_counter() - t0
            rows.append({"run": run, "frames": res["frames"], "features_s": res["time_features"],
                         "render_s": res["time_render"], "encode_s": res["time_encode"], "mux_s": res["time_mux"],
                         "total_s": wall, "render_fps": res["render_fps"], "audio_muxed": res["audio_muxed"]})
        info = {"device": device_name(), "model": cfg.model_path or "random init",
                "data": cfg.source_path or f"synthetic {cfg.resolution}x{cfg.resolution}", **model_counts(model),
                "audio_seconds": cfg.seconds if not cfg.audio else None, "batch": cfg.batch, "dilate": cfg.dilate,
                "bar_total_s": 10.0, "rows": rows}
    print(f"synthesis of {rows[0]['frames']} frames on {info['device']} ({info['model']} head, "
          f"{info['face_gaussians']}+{info['mouth_gaussians']} Gaussians, {info['data']} clip)")
    print(table(rows, ["run", "frames", "features_s", "render_s", "encode_s", "mux_s", "total_s", "render_fps", "audio_muxed"]))
    write_json(cfg.out, info)
    print(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
