"""Speed of the pure-PyTorch reference rasterizer on the CPU, per-tile loop (before) against tiles composited
together (now), and how far their pixels and gradients lie apart.

    python bench/reference_raster.py [--gaussians 14000] [--size 1.0] [--resolution 512] [--threads 2]
                                     [--out bench/results/reference_raster.json]

The cloud is a head: Gaussians on (85 %) and just under (15 %) an ellipsoid 0.2 x 0.25 x 0.21 units, flat
discs tangent to it with log-normal radii (sigma 0.5) whose median is ``--size`` times the spacing of the
points (3.3 mm for 14 000: about 5 px at 512², median bounding radius 18 px), 60 % nearly opaque and the rest
spread over [0.05, 0.8], SH degree 1 skin colours; the camera looks at it from 0.7 units with the
synthetic clip's focal length (1100 px at 512²). Rows, each through :func:`instag.render.rasterize` on the
torch backend (``before`` swaps in the per-tile loop this change replaced, kept below as the baseline):

- ``preview``: no grad, colour + alpha + depth (what synthesis renders);
- ``all channels``: no grad, with normals and two extra channels (what training composites);
- ``forward+backward``: the same with a loss on every channel and ``backward()`` (CPU training).

Differences are the largest over all pixels, in grey levels (x255) for colour, alpha, normals and extras and
in scene units for depth; for ``forward+backward`` the largest gradient difference relative to the largest
gradient of each parameter.

On a machine shared with other jobs, torch's OpenMP threads spin-wait for each other and stall whenever one
of them loses its core (seconds per frame, the per-tile loop worst): run with ``OMP_WAIT_POLICY=PASSIVE``
there, or compare ``cpu_ms``.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _synthetic import RESULTS, device_name, table  # noqa: E402

from instag.config import parse  # noqa: E402
from instag.io.atomic import write_json  # noqa: E402
from instag.render import Camera, rasterize, reference  # noqa: E402
from instag.render.sh import rgb_to_sh  # noqa: E402

HEAD_AXES = (0.1, 0.125, 0.105)  # semi-axes of the head ellipsoid, scene units
CHANNELS = ("color", "alpha", "depth", "normal", "extras")


@dataclass
class BenchConfig:
    """Reference (CPU) rasterizer benchmark: per-tile loop against tiles composited together."""

    gaussians: int = field(default=14000, metadata={"help": "Gaussians in the head"})
    size: float = field(default=1.0, metadata={"help": "median disc radius (1 sigma) over the spacing of the points"})
    resolution: int = field(default=512, metadata={"help": "square image size in pixels"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    iters: int = field(default=5, metadata={"help": "timed calls per row (median reported)"})
    warmup: int = field(default=1, metadata={"help": "untimed calls per row"})
    backward: bool = field(default=True, metadata={"help": "also time forward+backward"})
    out: str = field(default=str(RESULTS / "reference_raster.json"), metadata={"help": "JSON output path"})


def head_cloud(num: int, size: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A head-like cloud -> means ``[N,3]``, quats ``[N,4]``, scales ``[N,3]``, opacities ``[N]``, SH ``[N,4,3]``."""
    gen = torch.Generator().manual_seed(seed)
    axes = torch.tensor(HEAD_AXES)
    direction = torch.nn.functional.normalize(torch.randn(num, 3, generator=gen), dim=-1)
    normal = torch.nn.functional.normalize(direction / axes, dim=-1)
    inner = torch.rand(num, generator=gen) < 0.15
    depth = torch.rand(num, generator=gen) * torch.where(inner, 0.02, 0.002) + torch.where(inner, 0.01, 0.0)
    means = direction * axes - normal * depth[:, None]
    # Knud Thomsen's ellipsoid area, p = 1.6
    a, b, c = HEAD_AXES
    area = 4 * math.pi * (((a * b) ** 1.6 + (a * c) ** 1.6 + (b * c) ** 1.6) / 3) ** (1 / 1.6)
    tangent = size * math.sqrt(area / num) * torch.exp(0.5 * torch.randn(num, 2, generator=gen))
    thin = tangent.amin(-1, keepdim=True) * (0.1 + 0.2 * torch.rand(num, 1, generator=gen))
    scales = torch.cat([tangent, thin], -1)
    # rotate local z onto the normal (half-angle quaternion), after a random twist about z
    half = torch.nn.functional.normalize(normal + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    align = torch.cat([half[:, 2:3], torch.linalg.cross(torch.tensor([0.0, 0.0, 1.0]).expand_as(half), half)], -1)
    twist = torch.rand(num, generator=gen) * math.pi
    w1, x1, y1, z1 = align.unbind(-1)
    w2, z2 = torch.cos(twist), torch.sin(twist)
    quats = torch.stack([w1 * w2 - z1 * z2, x1 * w2 + y1 * z2, y1 * w2 - x1 * z2, w1 * z2 + z1 * w2], -1)
    opaque = torch.rand(num, generator=gen) < 0.6
    opacities = torch.where(
        opaque, 0.8 + 0.2 * torch.rand(num, generator=gen), 0.05 + 0.75 * torch.rand(num, generator=gen)
    )
    skin = torch.tensor([0.8, 0.6, 0.5]) + 0.08 * torch.randn(num, 3, generator=gen)
    sh = 0.05 * torch.randn(num, 4, 3, generator=gen)
    sh[:, 0] = rgb_to_sh(skin)
    return means, quats, scales, opacities, sh


def _per_tile_composite(
    pix: torch.Tensor,  # [P, 2] pixel centres
    means2d: torch.Tensor,  # [n, 2] depth-sorted
    conics: torch.Tensor,  # [n, 3]
    opacities: torch.Tensor,  # [n]
    values: torch.Tensor,  # [n, D+1] features and depth
) -> tuple[torch.Tensor, torch.Tensor]:
    d = means2d[:, None, :] - pix[None]  # [n,P,2]
    dx, dy = d[..., 0], d[..., 1]
    sigma = 0.5 * (conics[:, None, 0] * dx * dx + conics[:, None, 2] * dy * dy) + conics[:, None, 1] * dx * dy
    alpha = torch.clamp(opacities[:, None] * torch.exp(-sigma), max=reference.ALPHA_MAX)
    alpha = torch.where((sigma >= 0) & (alpha >= reference.ALPHA_MIN), alpha, torch.zeros_like(alpha))
    with torch.no_grad():
        alive = torch.cumprod(1 - alpha, dim=0) > reference.TRANSMITTANCE_MIN
    alpha = torch.where(alive, alpha, torch.zeros_like(alpha))
    trans = torch.cumprod(1 - alpha, dim=0)
    before = torch.cat([torch.ones_like(trans[:1]), trans[:-1]], dim=0)
    return (alpha * before).transpose(0, 1) @ values, 1 - trans[-1]


def per_tile_rasterize_features(
    means, quats, scales, opacities, features, viewmats, Ks, width, height, near=0.01, far=100.0, batched=True
) -> reference.RasterResult:
    """The reference rasterizer before this change: a Python loop over 16x16 tiles, each composited on its own
    over all the Gaussians whose bounding box touches it (commit 9d0d44a), kept as the baseline."""
    tile_size = 16
    bsz, _, dim = features.shape
    means2d, conics, depths, radii = reference.project(
        means, quats, scales, opacities, viewmats, Ks, width, height, near, far
    )
    exposed, means2d = reference.expose_means2d(means2d, batched)
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    dtype, device = features.dtype, features.device
    local = torch.arange(tile_size, dtype=dtype, device=device) + 0.5
    values = torch.cat([features, depths[..., None].to(dtype)], -1)
    images, alphas = [], []
    for bi in range(bsz):
        with torch.no_grad():
            r = radii[bi].to(dtype)
            ids = torch.nonzero((r > 0).any(-1)).squeeze(1)
            ids = ids[torch.sort(depths[bi, ids], stable=True).indices]
            m2, rr = means2d[bi, ids].detach(), r[ids]
            lo = torch.floor((m2 - rr) / tile_size).clamp_min(0)
            hi = torch.ceil((m2 + rr) / tile_size)
        out = torch.zeros(tiles_y, tiles_x, tile_size, tile_size, dim + 1, dtype=dtype, device=device)
        acc = torch.zeros(tiles_y, tiles_x, tile_size, tile_size, dtype=dtype, device=device)
        tiles_out, tiles_acc, where = [], [], []
        for ty in range(tiles_y):
            rows = (lo[:, 1] <= ty) & (hi[:, 1] > ty)
            for tx in range(tiles_x):
                sel = ids[rows & (lo[:, 0] <= tx) & (hi[:, 0] > tx)]
                if sel.numel() == 0:
                    continue
                py, px = torch.meshgrid(ty * tile_size + local, tx * tile_size + local, indexing="ij")
                pix = torch.stack([px.reshape(-1), py.reshape(-1)], -1)
                val, a = _per_tile_composite(
                    pix, means2d[bi, sel], conics[bi, sel], opacities[bi, sel], values[bi, sel]
                )
                tiles_out.append(val.reshape(tile_size, tile_size, dim + 1))
                tiles_acc.append(a.reshape(tile_size, tile_size))
                where.append(ty * tiles_x + tx)
        if where:
            index = torch.tensor(where, device=device)
            out = out.reshape(-1, tile_size, tile_size, dim + 1).index_put((index,), torch.stack(tiles_out))
            acc = acc.reshape(-1, tile_size, tile_size).index_put((index,), torch.stack(tiles_acc))
        out = out.reshape(tiles_y, tiles_x, tile_size, tile_size, dim + 1).permute(4, 0, 2, 1, 3)
        out = out.reshape(dim + 1, tiles_y * tile_size, tiles_x * tile_size)[:, :height, :width]
        acc = acc.reshape(tiles_y, tiles_x, tile_size, tile_size).permute(0, 2, 1, 3)
        acc = acc.reshape(1, tiles_y * tile_size, tiles_x * tile_size)[:, :height, :width]
        images.append(out)
        alphas.append(acc)
    image, alpha = torch.stack(images), torch.stack(alphas)
    depth = image[:, dim:] / alpha.clamp_min(1e-10)
    return reference.RasterResult(image[:, :dim], alpha, depth, exposed, radii)


@contextlib.contextmanager
def per_tile_loop():
    """Route the torch backend through the baseline for the duration."""
    tiled = reference.rasterize_features
    reference.rasterize_features = per_tile_rasterize_features
    try:
        yield
    finally:
        reference.rasterize_features = tiled


def _timed(fn, iters: int, warmup: int) -> dict[str, float]:
    """Median and best wall milliseconds per call, and the median process CPU time (all threads; on a shared
    machine the wall time also counts waiting for a core, the CPU time does not)."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(iters):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - start) * 1000.0)
        cpu.append((time.process_time() - start_cpu) * 1000.0)
    return {"ms": sorted(wall)[len(wall) // 2], "best_ms": min(wall), "cpu_ms": sorted(cpu)[len(cpu) // 2]}


def _modes(cloud, extras, cam):
    """name -> (function returning the render, or the leaves' gradients after backward)."""

    def preview():
        with torch.no_grad():
            return rasterize(*cloud, cam, sh_degree=1, compute_normals=False, backend="torch")

    def all_channels():
        with torch.no_grad():
            return rasterize(*cloud, cam, sh_degree=1, extras=extras, backend="torch")

    def forward_backward():
        leaves = [t.clone().requires_grad_(True) for t in (*cloud, extras)]
        out = rasterize(*leaves[:5], cam, sh_degree=1, extras=leaves[5], backend="torch")
        loss = out.color.mean() + out.alpha.mean() + out.depth.mean() + out.normal.mean() + out.extras.mean()
        loss.backward()
        return [t.grad for t in leaves]

    return {"preview": preview, "all channels": all_channels, "forward+backward": forward_backward}


def _differences(before, after) -> dict[str, float]:
    if isinstance(before, list):
        names = ("means", "quats", "scales", "opacities", "sh", "extras")
        return {f"grad_{n}": float((b - a).abs().max() / b.abs().max()) for n, b, a in zip(names, before, after)}
    diff = {}
    for name in CHANNELS:
        b, a = getattr(before, name), getattr(after, name)
        if b is not None:
            scale = 1.0 if name == "depth" else 255.0
            diff[name] = float((b - a).abs().max()) * scale
    return diff


def _cpu_model() -> str | None:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def main(argv: list[str] | None = None) -> int:
    cfg = parse(BenchConfig, argv, prog="bench/reference_raster.py")
    torch.set_num_threads(cfg.threads)
    res = cfg.resolution
    cloud = head_cloud(cfg.gaussians, cfg.size)
    extras = torch.rand(cfg.gaussians, 2, generator=torch.Generator().manual_seed(1))
    cam = Camera.look_at((0.0, 0.0, 0.7), (0.0, 0.0, 0.0), focal=1100.0 * res / 512, width=res, height=res)
    rows = []
    for name, fn in _modes(cloud, extras, cam).items():
        if name == "forward+backward" and not cfg.backward:
            continue
        with per_tile_loop():
            before = fn()
            before_times = _timed(fn, cfg.iters, cfg.warmup)
        after = fn()
        after_times = _timed(fn, cfg.iters, cfg.warmup)
        row = {"mode": name}
        row.update({f"before_{k}": v for k, v in before_times.items()})
        row.update({f"after_{k}": v for k, v in after_times.items()})
        row["before_fps"], row["after_fps"] = 1000.0 / before_times["ms"], 1000.0 / after_times["ms"]
        row["speedup"] = before_times["ms"] / after_times["ms"]
        row.update(_differences(before, after))
        rows.append(row)
        print(f"{name}: {before_times['ms']:.0f} -> {after_times['ms']:.0f} ms", flush=True)

    with torch.no_grad():
        visible = int(rasterize(*cloud, cam, sh_degree=1, compute_normals=False, backend="torch").visible.sum())
    info = {
        "device": device_name(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": cfg.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "resolution": res,
        "gaussians": cfg.gaussians,
        "size": cfg.size,
        "visible": visible,
        "iters": cfg.iters,
        "tile": reference.TILE,
        "chunk": reference.CHUNK,
        "rows": rows,
        "note": "ms: median wall time of iters calls (fps from it), best_ms: the shortest, cpu_ms: median process CPU "
        "time (all threads); differences: grey levels (x255) for colour, alpha, normal and extras, scene units for "
        "depth, max |grad difference| / max |grad| for gradients",
    }
    print(
        f"\nreference rasterizer at {res}x{res}, {cfg.gaussians} Gaussians ({visible} visible), {cfg.threads} threads "
        f"on {info['cpu_model'] or info['device']} ({info['cpu_count']} CPUs, load {info['load_average'][0]:.1f}, "
        f"OMP_WAIT_POLICY={info['omp_wait_policy']})"
    )
    timings = ["before_ms", "after_ms", "before_fps", "after_fps", "speedup", "before_cpu_ms", "after_cpu_ms"]
    print(table(rows, ["mode", *timings]))
    keys = sorted({k for r in rows for k in r if k in CHANNELS or k.startswith("grad_")})
    print("\nlargest differences, before vs after")
    print(table([{k: f"{v:.1e}" if k in keys else v for k, v in r.items()} for r in rows], ["mode", *keys]))
    write_json(cfg.out, info)
    print(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
