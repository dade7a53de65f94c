"""Rendering speed of the talking head at 512²: motion fields + rasterization + compositing.

    python bench/render_fps.py [-M output/<ID>] [--batches 1 2 4 8 16 32] [--out bench/results/render_fps.json]

DESIGN §4 bar: >= 300 FPS sustained for one stream on one H100 (small frame batches or CUDA
graphs allowed), single-frame latency reported too. Rows per batch size B:

- ``render_frames``: :meth:`TalkingHead.render_frames` exactly as synthesis calls it (fields, both
  clouds rasterized with normals, compositing over the background), frames per second and ms per call;
- ``no normals``: the same steps with the rasterizer's normal channels off (inference needs none);
- ``fields`` / ``raster`` / ``composite``: the stages of the ``no normals`` path timed alone;
- ``fields graph``: the motion fields replayed from a captured CUDA graph (static shapes), when capture works.

Without -M a randomly initialised head of --face/--mouth Gaussians is used.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _synthetic import RESULTS, device_name, table  # noqa: E402

from instag.config import parse  # noqa: E402
from instag.io.atomic import write_json  # noqa: E402
from instag.render import Camera, rasterize_batch  # noqa: E402

DILATE = 13


@dataclass
class BenchConfig:
    """Talking-head render FPS benchmark."""

    model_path: str | None = field(default=None, metadata={"flags": ("-M",), "help": "trained model (default: random init)"})
    face: int = field(default=20000, metadata={"help": "face Gaussians of the random head"})
    mouth: int = field(default=5000, metadata={"help": "mouth Gaussians of the random head"})
    resolution: int = field(default=512, metadata={"help": "square image size"})
    batches: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32], metadata={"help": "frame batch sizes"})
    iters: int = field(default=50, metadata={"help": "timed calls per row"})
    warmup: int = field(default=5, metadata={"help": "untimed calls per row"})
    out: str = field(default=str(RESULTS / "render_fps.json"), metadata={"help": "JSON output path"})


def _timed(fn, iters: int, warmup: int) -> float:
    """Mean milliseconds per call (CUDA-synchronised)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) * 1000.0 / iters


def _graph_ms(fn, iters: int, warmup: int) -> float:
    """Replay time of ``fn`` captured in a CUDA graph (raises when capture fails)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return _timed(graph.replay, iters, warmup)


def bench_batch(head, cam: Camera, bsz: int, res: int, cfg: BenchConfig, gen: torch.Generator) -> dict:
    """One row: timings of the whole render and of its stages for ``bsz`` frames per call."""
    dev = head.device
    cams = [cam] * bsz
    c, w = head.item_shape
    windows = torch.randn(bsz, 8, c, w, device=dev, generator=gen)
    au = torch.rand(bsz, 6, device=dev, generator=gen)
    bg = torch.rand(bsz, 3, res, res, device=dev, generator=gen)

    def full():
        return head.render_frames(cams, windows, au, bg, dilate=True)

    @torch.no_grad()
    def fields():
        face_audio = head.face_field.audio(windows)
        face = head.deform_face(face_audio, au, align=head.align)
        mouth = head.deform_mouth(head.mouth_field.audio(windows), head.hook(face_audio, head.align), align=head.align)
        return face, mouth

    @torch.no_grad()
    def raster(face, mouth):
        return [rasterize_batch(d.means, d.quats, d.scales, d.opacities[None].expand(bsz, -1), d.colors, cams,
                                sh_degree=d.sh_degree, compute_normals=False) for d in (face, mouth)]

    def compose(rf, rm):
        mouth_alpha = F.max_pool2d(rm.alpha, DILATE, stride=1, padding=DILATE // 2)
        return (rf.color + (1 - rf.alpha) * (rm.color + (1 - mouth_alpha) * bg)).clamp(0, 1)

    def no_normals():
        return compose(*raster(*fields()))

    face, mouth = fields()
    rf, rm = raster(face, mouth)
    row = {"batch": bsz}
    for name, fn in (("render_frames", full), ("no_normals", no_normals), ("fields", fields),
                     ("raster", lambda: raster(face, mouth)), ("composite", lambda: compose(rf, rm))):
        ms = _timed(fn, cfg.iters, cfg.warmup)
        row[f"{name}_ms"] = ms
        row[f"{name}_fps"] = 1000.0 * bsz / ms
    row["fields_graph_ms"] = None
    if dev.type == "cuda":
        try:
            row["fields_graph_ms"] = _graph_ms(fields, cfg.iters, cfg.warmup)
        except Exception as err:  # capture is optional: report why it did not work
            row["fields_graph_error"] = f"{type(err).__name__}: {' '.join(str(err).split())[:120]}"
    return row


def main(argv: list[str] | None = None) -> int:
    from instag.model.talking_head import TalkingHead

    cfg = parse(BenchConfig, argv, prog="bench/render_fps.py")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.model_path:
        head = TalkingHead.load(cfg.model_path, device=dev)
    else:
        head = TalkingHead.create("mel", (80, 16), face_init=cfg.face, mouth_init=cfg.mouth,
                                  generator=torch.Generator().manual_seed(0)).to(dev).eval()
    res = cfg.resolution
    cam = Camera.look_at((0.0, 0.0, 0.7), (0.0, 0.0, 0.0), focal=1100.0 * res / 512, width=res, height=res).to(dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    rows = [bench_batch(head, cam, bsz, res, cfg, gen) for bsz in cfg.batches]
    info = {"device": device_name(), "resolution": res, "model": "trained" if cfg.model_path else "random init",
            "face_gaussians": int(head.face.xyz.shape[0]), "mouth_gaussians": int(head.mouth.xyz.shape[0]),
            "single_frame_latency_ms": rows[0]["render_frames_ms"] if rows and rows[0]["batch"] == 1 else None,
            "best_fps": max(r["no_normals_fps"] for r in rows), "bar_fps": 300.0, "rows": rows}
    print(f"talking-head rendering at {res}x{res} on {info['device']} ({info['model']}, "
          f"{info['face_gaussians']}+{info['mouth_gaussians']} Gaussians)")
    print(table(rows, ["batch", "render_frames_fps", "render_frames_ms", "no_normals_fps", "fields_ms", "raster_ms",
                       "composite_ms", "fields_graph_ms"]))
    for r in rows:
        if "fields_graph_error" in r:
            print(f"  batch {r['batch']}: CUDA graph capture failed: {r['fields_graph_error']}")
    write_json(cfg.out, info)
    print(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
