"""Sapiens depth and normal priors from the Sapiens-lite TorchScript models (optional upstream tool).

Upstream runs Sapiens-lite's demo scripts in a separate conda env on exactly 4 GPUs. Here the
same TorchScript files (``sapiens_0.3b_*_torchscript.pt2``) are loaded with ``torch.jit.load`` and
run on any number of GPUs (one process per GPU, frames split evenly) or on the CPU.

Per frame (METHOD §1.10): the BGR image is resized to 1024×768 (H×W, bilinear), converted to RGB,
normalised with mean (123.5, 116.5, 103.5) / std (58.5, 57.0, 57.5); the model output is resized
bilinearly back to H×W. Frames are ``gt_imgs/<i>.jpg`` (upstream's input) or, when absent,
``ori_imgs/<i>.jpg``; all frames by default (upstream stops at 500: ``--max_frames 500``).

Two layouts are written:

- upstream's: ``sapiens/depth/<model>/<i>.npy`` float32 [H,W] raw depth and
  ``sapiens/normal/<model>/<i>.npy`` float32 [H,W,3] unit normals in Sapiens's axes, so
  upstream's loader (which globs ``sapiens/{depth,normal}/sapiens_*``) reads them unchanged;
- ours (``DatasetLayout.depth_prior(i)`` / ``normal_prior(i)``, :mod:`instag.data.maps`, 0 = no prior): only on
  person pixels (non-background in ``parsing/<i>.png``; every pixel when there is no parsing).
  Normals are converted to OpenCV camera axes (x right, y down, z forward; a surface facing the
  camera has n_z < 0). Sapiens predicts camera-space normals with x right, y up and z toward the
  camera (its visualisation maps camera-facing surfaces to blue, and its normals differ from
  Metric3D's OpenCV-axis normals by the signs of y and z), so the conversion is
  (x, y, z) -> (x, -y, -z); ``--normal_axes opencv`` skips it for a model that already uses
  OpenCV axes. Sapiens depth is *relative* (larger = farther, unknown scale and offset): it is
  stored as predicted, shifted to be positive on person pixels when needed, and ``priors.json``
  records ``"depth": "relative"`` so a loss compares it up to scale and shift.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from instag.errors import InstagError

INPUT_HW = (1024, 768)
MEAN_RGB = (123.5, 116.5, 103.5)
STD_RGB = (58.5, 57.0, 57.5)
SAPIENS_TO_OPENCV = np.array([1.0, -1.0, -1.0], dtype=np.float32)


def preprocess(bgr: np.ndarray) -> torch.Tensor:
    """BGR uint8 [H,W,3] -> normalised RGB float32 [3,1024,768]."""
    import cv2

    resized = cv2.resize(bgr, (INPUT_HW[1], INPUT_HW[0]), interpolation=cv2.INTER_LINEAR)
    rgb = torch.from_numpy(np.ascontiguousarray(resized[..., ::-1])).permute(2, 0, 1).float()
    mean = torch.tensor(MEAN_RGB).view(3, 1, 1)
    std = torch.tensor(STD_RGB).view(3, 1, 1)
    return (rgb - mean) / std


def run_model(model, batch: torch.Tensor) -> torch.Tensor:
    """Model output [B,C,h,w] for a normalised batch [B,3,1024,768] (already on the model's device)."""
    with torch.no_grad():
        out = model(batch)
    if isinstance(out, (list, tuple)):
        out = out[0]
    if out.ndim == 3:
        out = out[:, None]
    return out.float()


def to_frame(out: torch.Tensor, height: int, width: int) -> np.ndarray:
    """One output [C,h,w] resized bilinearly to [H,W,C] float32 (C squeezed when 1)."""
    resized = F.interpolate(out[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    arr = resized.permute(1, 2, 0).cpu().numpy().astype(np.float32)
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def unit_normals(normal: np.ndarray) -> np.ndarray:
    """Upstream's normalisation: n / (|n| + 1e-5), [H,W,3]."""
    return normal / (np.linalg.norm(normal, axis=-1, keepdims=True) + 1e-5)


def model_name(checkpoint: Path) -> str:
    """``sapiens_0.3b`` from ``sapiens_0.3b_render_people_epoch_100_torchscript.pt2``."""
    found = re.match(r"(sapiens_[0-9.]+b)", checkpoint.name)
    return found.group(1) if found else checkpoint.stem.split("_torchscript")[0]


def person_mask(layout, i: int, height: int, width: int) -> np.ndarray:
    """bool [H,W]: non-background pixels of ``parsing/<i>.png``; all True without parsing."""
    import cv2

    from instag.data.format import PARSING_BGR

    parsing = cv2.imread(str(layout.parsing(i))) if layout.parsing(i).is_file() else None
    if parsing is None or parsing.shape[:2] != (height, width):
        return np.ones((height, width), dtype=bool)
    return np.any(parsing != np.array(PARSING_BGR["background"], dtype=np.uint8), axis=-1)


def priors_info_path(layout) -> Path:
    return layout.root / "priors.json"


@dataclass
class SapiensJob:
    """Everything one worker needs (picklable, for one process per GPU)."""

    root: str
    frames: list[int]
    checkpoints: dict[str, str]  # task ("depth" | "normal") -> TorchScript file
    device: str
    batch_size: int = 1
    normal_axes: str = "sapiens"
    force: bool = False
    progress: bool = True


def _frame_source(layout, i: int) -> Path:
    gt = layout.gt_image(i)
    return gt if gt.is_file() else layout.ori_image(i)


def _outputs(layout, task: str, name: str, i: int) -> tuple[Path, Path]:
    upstream = layout.root / "sapiens" / task / name / f"{i}.npy"
    ours = layout.depth_prior(i) if task == "depth" else layout.normal_prior(i)
    return upstream, ours


def _write(layout, task: str, name: str, i: int, pred: np.ndarray, mask: np.ndarray, normal_axes: str) -> None:
    from instag.data.maps import write_depth, write_normal
    from instag.io.atomic import save_npy

    upstream, ours = _outputs(layout, task, name, i)
    if task == "depth":
        save_npy(upstream, pred.astype(np.float32))
        prior = np.zeros_like(pred)
        values = pred[mask]
        if values.size and values.min() <= 0:  # keep 0 meaning "no prior"; a shift is harmless for relative depth
            values = values - values.min() + 1e-3
        prior[mask] = values
        write_depth(ours, prior)
    else:
        normal = unit_normals(pred)
        save_npy(upstream, normal.astype(np.float32))
        camera = normal * SAPIENS_TO_OPENCV if normal_axes == "sapiens" else normal
        prior = np.zeros_like(camera)
        prior[mask] = camera[mask]
        write_normal(ours, prior)


def run_job(job: SapiensJob) -> int:
    """Run the models of ``job`` over its frames; returns the number of frames written."""
    import cv2
    from tqdm import tqdm

    from instag.data.format import DatasetLayout
    from instag.data.maps import find

    layout = DatasetLayout.of(job.root)
    done = 0
    for task, checkpoint in job.checkpoints.items():
        name = model_name(Path(checkpoint))
        todo = [i for i in job.frames if job.force or not all(find(p) is not None for p in _outputs(layout, task, name, i))]
        if not todo:
            continue
        try:
            model = torch.jit.load(checkpoint, map_location=job.device).eval()
        except (RuntimeError, ValueError, OSError) as err:
            raise InstagError(
                f"cannot load the Sapiens {task} model {checkpoint} ({' '.join(str(err).split())[:200]}); "
                "it must be a Sapiens-lite *_torchscript.pt2 file"
            ) from err
        desc = f"sapiens {task} ({job.device})"
        for start in tqdm(range(0, len(todo), job.batch_size), desc=desc, disable=not job.progress):
            chunk = todo[start : start + job.batch_size]
            images = []
            for i in chunk:
                bgr = cv2.imread(str(_frame_source(layout, i)))
                if bgr is None:
                    raise InstagError(f"cannot read frame {_frame_source(layout, i)}; re-run process.py")
                images.append(bgr)
            batch = torch.stack([preprocess(b) for b in images]).to(job.device)
            out = run_model(model, batch)
            want = 1 if task == "depth" else 3
            if out.shape[1] != want:
                raise InstagError(
                    f"the Sapiens {task} model {checkpoint} gave {out.shape[1]} channels, expected {want}; "
                    f"is it the {task} checkpoint?"
                )
            for k, i in enumerate(chunk):
                h, w = images[k].shape[:2]
                _write(layout, task, name, i, to_frame(out[k], h, w), person_mask(layout, i, h, w), job.normal_axes)
            done += len(chunk)
        del model
    return done


def _worker(rank: int, jobs: list[SapiensJob]) -> None:
    run_job(jobs[rank])


def devices_for(spec: str) -> list[str]:
    """``all`` -> every visible GPU (or the CPU), ``cpu``, or a list like ``0,1``."""
    if spec == "cpu" or (spec == "all" and not torch.cuda.is_available()):
        return ["cpu"]
    if spec == "all":
        return [f"cuda:{k}" for k in range(torch.cuda.device_count())]
    try:
        ids = [int(tok) for tok in spec.split(",") if tok.strip()]
    except ValueError:
        raise InstagError(f"--gpus {spec!r}: give 'all', 'cpu' or GPU ids like 0,1") from None
    if not torch.cuda.is_available() or max(ids) >= torch.cuda.device_count():
        raise InstagError(f"--gpus {spec}: only {torch.cuda.device_count()} CUDA GPUs are visible")
    return [f"cuda:{k}" for k in ids]


def run_sapiens(
    layout,
    checkpoints: dict[str, Path],
    *,
    devices: list[str],
    max_frames: int = 0,
    batch_size: int = 1,
    normal_axes: str = "sapiens",
    force: bool = False,
    progress: bool = True,
) -> int:
    """Write Sapiens priors for the frames of ``layout``, split across ``devices``; returns the frame count."""
    from instag.io.atomic import write_json

    n = layout.num_frames()
    if n == 0:
        raise InstagError(f"no frames in {layout.ori_dir}; run python data_utils/process.py first")
    frames = list(range(n if max_frames <= 0 else min(n, max_frames)))
    jobs = [
        SapiensJob(
            str(layout.root),
            frames[k :: len(devices)],
            {t: str(p) for t, p in checkpoints.items()},
            dev,
            batch_size,
            normal_axes,
            force,
            progress and k == 0,
        )
        for k, dev in enumerate(devices)
    ]
    if len(jobs) == 1:
        run_job(jobs[0])
    else:
        import torch.multiprocessing as mp

        try:
            mp.spawn(_worker, args=(jobs,), nprocs=len(jobs), join=True)
        except mp.ProcessRaisedException as err:
            last = [line for line in str(err).strip().splitlines() if line.strip()][-1]
            raise InstagError(f"a Sapiens worker failed: {last}") from err
    names = {task: model_name(Path(p)) for task, p in checkpoints.items()}
    write_json(
        priors_info_path(layout),
        {
            "source": names,
            "frames": len(frames),
            "depth": "relative" if "depth" in checkpoints else None,
            "normal_axes": "opencv camera: x right, y down, z forward" if "normal" in checkpoints else None,
        },
    )
    return len(frames)


@dataclass
class SapiensConfig:
    """Sapiens depth/normal priors (optional upstream tool; needs the Sapiens-lite TorchScript models)."""

    path: str = field(metadata={"help": "processed dataset folder data/<ID>"})
    tasks: list[str] = field(default_factory=lambda: ["depth", "normal"], metadata={"help": "depth and/or normal"})
    depth_model: str | None = field(
        default=None, metadata={"help": "depth TorchScript .pt2 (default from the weights registry)"}
    )
    normal_model: str | None = field(
        default=None, metadata={"help": "normal TorchScript .pt2 (default from the weights registry)"}
    )
    gpus: str = field(default="all", metadata={"help": "'all' (every visible GPU, else CPU), 'cpu', or ids like 0,1"})
    max_frames: int = field(default=0, metadata={"min": 0, "help": "only the first N frames (upstream: 500); 0 = all"})
    batch_size: int = field(default=1, metadata={"min": 1, "help": "frames per forward pass"})
    normal_axes: str = field(
        default="sapiens", metadata={"help": "axes of the model's normals", "choices": ["sapiens", "opencv"]}
    )
    force: bool = field(default=False, metadata={"help": "recompute frames whose priors exist"})


def main(argv: list[str] | None = None) -> int:
    from instag.config import parse
    from instag.data.format import DatasetLayout
    from instag.preprocess import weights
    from instag.preprocess.weights import positional_as_flag

    cfg = parse(SapiensConfig, positional_as_flag(argv, "path"), prog="data_utils/sapiens/run.sh")
    unknown = sorted(set(cfg.tasks) - {"depth", "normal"})
    if unknown or not cfg.tasks:
        raise InstagError(f"--tasks {' '.join(cfg.tasks)}: choose from depth, normal")
    layout = DatasetLayout.of(cfg.path)
    overrides = {"depth": cfg.depth_model, "normal": cfg.normal_model}
    checkpoints = {
        task: weights.require(f"sapiens_{task}", overrides[task]) for task in ("depth", "normal") if task in cfg.tasks
    }
    devices = devices_for(cfg.gpus)
    done = run_sapiens(
        layout,
        checkpoints,
        devices=devices,
        max_frames=cfg.max_frames,
        batch_size=max(1, cfg.batch_size),
        normal_axes=cfg.normal_axes,
        force=cfg.force,
    )
    print(
        f"sapiens priors for {done} frames on {', '.join(devices)}; wrote {layout.depth_dir}, {layout.normal_dir} "
        f"and {layout.root / 'sapiens'}"
    )
    return 0
