"""Rasterizer and tri-plane encoder speed on one GPU: prints a table and writes JSON.

    python bench/render.py [--sizes 10000 50000 200000] [--resolution 512] [--batch 8] [--out bench/results/render.json]

Rows per cloud size (SH degree 1, a head-sized cloud 0.7 units in front of the camera):
- ``forward``: :func:`instag.render.rasterize` as in training (colour, alpha, depth, normals), no grad;
- ``forward+backward``: the same with a loss on colour, depth and normals and ``backward()``;
- ``forward, no normals``: inference settings (colour, alpha, depth);
- ``batch B, no normals``: :func:`instag.render.rasterize_batch` on B differently deformed copies of the
  cloud, reported per frame;
- ``gsplat.rasterization RGB``: the library call alone, for the wrapper's overhead.
Then the tri-plane encoder forward and forward+backward for as many points.
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from instag.config import parse
from instag.io.atomic import write_json
from instag.model.triplane import TriPlaneEncoder
from instag.render import Camera, rasterize, rasterize_batch

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class BenchConfig:
    """Rasterizer / grid-encoder benchmark."""

    sizes: list[int] = field(default_factory=lambda: [10000, 50000, 200000], metadata={"help": "Gaussian counts"})
    resolution: int = field(default=512, metadata={"help": "square image size in pixels"})
    batch: int = field(default=8, metadata={"help": "frames per rasterize_batch call"})
    iters: int = field(default=100, metadata={"help": "timed iterations per row"})
    warmup: int = field(default=10, metadata={"help": "untimed iterations per row"})
    out: str = field(default=str(RESULTS / "render.json"), metadata={"help": "JSON output path"})


def _timed(fn, iters: int, warmup: int) -> float:
    """Mean milliseconds per call of ``fn`` (CUDA-synchronised)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000.0 / iters


def _scene(num: int, gen: torch.Generator):
    spacing = 0.2 / num ** (1 / 3)
    means = (torch.rand(num, 3, generator=gen) * 2 - 1) * 0.1
    quats = torch.randn(num, 4, generator=gen)
    scales = spacing * (0.5 + torch.rand(num, 3, generator=gen))
    opacities = 0.1 + 0.8 * torch.rand(num, generator=gen)
    sh = torch.randn(num, 4, 3, generator=gen) * 0.3
    return [t.cuda() for t in (means, quats, scales, opacities, sh)]


def _bench_size(num: int, cam: Camera, cfg: BenchConfig, gen: torch.Generator) -> dict[str, float]:
    """Milliseconds per frame of each rasterizer mode for one cloud of ``num`` Gaussians."""
    import gsplat

    means, quats, scales, opacities, sh = _scene(num, gen)
    leaves = [t.clone().requires_grad_(True) for t in (means, quats, scales, opacities, sh)]
    frames = means[None] + torch.randn(cfg.batch, num, 3, device="cuda") * 0.002
    cams = [cam] * cfg.batch
    viewmat, K = cam.world_to_camera[None], cam.K()[None]

    def forward(normals: bool = True):
        with torch.no_grad():
            rasterize(means, quats, scales, opacities, sh, cam, sh_degree=1, compute_normals=normals)

    def forward_backward():
        out = rasterize(*leaves, cam, sh_degree=1)
        (out.color.mean() + out.depth.mean() + out.normal.mean()).backward()

    def batched():
        with torch.no_grad():
            rasterize_batch(frames, quats, scales, opacities, sh, cams, sh_degree=1, compute_normals=False)

    def library():
        with torch.no_grad():
            gsplat.rasterization(
                means, quats, scales, opacities, sh, viewmat, K, cam.width, cam.height, sh_degree=1, packed=False
            )

    return {
        "forward": _timed(forward, cfg.iters, cfg.warmup),
        "forward+backward": _timed(forward_backward, cfg.iters, cfg.warmup),
        "forward, no normals": _timed(lambda: forward(False), cfg.iters, cfg.warmup),
        f"batch {cfg.batch}, no normals": _timed(batched, cfg.iters, cfg.warmup) / cfg.batch,
        "gsplat.rasterization RGB": _timed(library, cfg.iters, cfg.warmup),
    }


def bench_rasterizer(cfg: BenchConfig) -> list[dict]:
    res = cfg.resolution
    cam = Camera.look_at((0.0, 0.0, 0.7), (0.0, 0.0, 0.0), focal=res * 2.3, width=res, height=res).to("cuda")
    gen = torch.Generator().manual_seed(0)
    rows = []
    for num in cfg.sizes:
        for name, ms in _bench_size(num, cam, cfg, gen).items():
            rows.append({"gaussians": num, "mode": name, "ms_per_frame": round(ms, 4), "fps": round(1000.0 / ms, 1)})
    return rows


def _bench_points(enc: TriPlaneEncoder, num: int, cfg: BenchConfig) -> dict[str, float]:
    x = ((torch.rand(num, 3, device="cuda") * 2 - 1) * 0.12).requires_grad_(True)

    def forward():
        with torch.no_grad():
            enc(x)

    def forward_backward():
        enc(x).square().sum().backward()

    return {
        "triplane forward": _timed(forward, cfg.iters, cfg.warmup),
        "triplane forward+backward": _timed(forward_backward, cfg.iters, cfg.warmup),
    }


def bench_triplane(cfg: BenchConfig) -> list[dict]:
    enc = TriPlaneEncoder().cuda()
    rows = []
    for num in cfg.sizes:
        for name, ms in _bench_points(enc, num, cfg).items():
            rows.append({"points": num, "mode": name, "ms": round(ms, 4)})
    return rows


def main(argv: list[str] | None = None) -> int:
    cfg = parse(BenchConfig, argv, prog="bench/render.py")
    if not torch.cuda.is_available():
        print("bench/render.py needs a CUDA GPU (gsplat backend)", file=sys.stderr)
        return 2
    import gsplat

    start = time.perf_counter()
    rasterize(*_scene(100, torch.Generator().manual_seed(1))[:4], torch.rand(100, 3, device="cuda"),
              Camera.look_at((0, 0, 0.7), (0, 0, 0), 100.0, 64, 64).to("cuda"))  # fmt: skip
    torch.cuda.synchronize()
    first_call_s = time.perf_counter() - start

    raster = bench_rasterizer(cfg)
    grid = bench_triplane(cfg)
    print(f"\nrasterizer at {cfg.resolution}x{cfg.resolution} on {torch.cuda.get_device_name()}")
    print(f"{'gaussians':>10}  {'mode':<28} {'ms/frame':>9} {'FPS':>9}")
    for row in raster:
        print(f"{row['gaussians']:>10}  {row['mode']:<28} {row['ms_per_frame']:>9.3f} {row['fps']:>9.1f}")
    print(f"\n{'points':>10}  {'mode':<28} {'ms':>9}")
    for row in grid:
        print(f"{row['points']:>10}  {row['mode']:<28} {row['ms']:>9.3f}")
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "gsplat": gsplat.__version__,
        "python": platform.python_version(),
        "resolution": cfg.resolution,
        "batch": cfg.batch,
        "iters": cfg.iters,
        "first_call_seconds": round(first_call_s, 1),
        "rasterizer": raster,
        "triplane": grid,
        "note": "ms_per_frame for batch rows is the batch call time divided by the batch size",
    }
    write_json(cfg.out, result)
    print(f"\nfirst call (includes gsplat's JIT build if not cached): {first_call_s:.1f} s; wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
