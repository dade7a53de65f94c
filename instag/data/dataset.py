"""Training data of processed clips, streamed from disk.

:class:`Clip` holds what is small and whole-clip (cameras, per-frame scalars, audio
features, lip boxes); :class:`FrameDataset` reads the per-frame images, masks and priors when
a frame is asked for (in DataLoader workers), keeping a bounded LRU cache per worker, so RAM
stays flat as the video grows.

Masks (from ``parsing/<i>.png`` and ``teeth_mask/<i>.png``), as bits of one uint8 map:
face = head \\ teeth, hair, mouth = inner mouth ∪ teeth (METHOD §1.11 with the intended
semantics instead of upstream's XOR).
"""

from __future__ import annotations

import glob
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from instag.data import maps
from instag.data.cameras import FrameCamera, load_cameras
from instag.data.format import (
    EXPRESSION_AUS,
    LEGACY_EXPRESSION_AUS,
    PARSING_BGR,
    SLOW_AU_FRAMES,
    SLOW_AUS,
    DatasetLayout,
)
from instag.errors import InstagError
from instag.io.checks import check_values
from instag.io.safe_load import load_npy, load_torch

FACE, HAIR, MOUTH = 1, 2, 4
AU_EXP_COLUMNS = tuple(f"{a}_r" for a in EXPRESSION_AUS)  # the face field's AU condition, AU45 last
AU45 = len(AU_EXP_COLUMNS) - 1  # column of au_exp holding the blink
_AU_REQUIRED = tuple(f"{a}_r" for a in LEGACY_EXPRESSION_AUS) + ("AU25_r",)  # the others default to 0
LIP_OUTER = slice(48, 60)
LIP_INNER = slice(60, 68)
PRIOR_HINT = "rerun the priors step (instag process --task priors) or delete the file"
LANDMARKS_HINT = "rerun the landmark step (instag process --task landmarks)"
PIXEL_LIMIT = 1e5  # landmark coordinates in pixels: beyond this a file is damaged


def read_lms(path: Path) -> np.ndarray:
    """68 (x, y) pixel landmarks ``[68,2]`` from an upstream ``.lms`` text file."""
    try:
        pts = np.loadtxt(path, dtype=np.float32)
    except (OSError, ValueError) as err:
        raise InstagError(f"cannot read landmarks {path} ({err}); re-run preprocessing") from err
    if pts.shape != (68, 2):
        raise InstagError(f"{path} holds landmarks of shape {pts.shape}, expected 68 rows of x y; re-run preprocessing")
    check_values(path, pts, "landmark", "re-run the landmark step (instag process --task landmarks)", limit=PIXEL_LIMIT,
                 where=lambda i: f"{i[0]} ({'xy'[i[1]]})")
    return pts


def lips_rect(lms: np.ndarray, height: int, width: int) -> np.ndarray:
    """Square box around the outer lips (landmarks 48–59): [row_min, row_max, col_min, col_max]."""
    lips = lms[LIP_OUTER]
    xmin, xmax = lips[:, 0].min(), lips[:, 0].max()
    ymin, ymax = lips[:, 1].min(), lips[:, 1].max()
    cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
    half = int(max(xmax - xmin, ymax - ymin) // 2)
    r0, r1 = int(np.clip(cy - half, 0, height)), int(np.clip(cy + half, 0, height))
    c0, c1 = int(np.clip(cx - half, 0, width)), int(np.clip(cx + half, 0, width))
    return np.array([r0, r1, c0, c1], dtype=np.int64)


def _read_au(layout: DatasetLayout, num: int) -> dict[str, np.ndarray] | None:
    if not layout.au_csv.exists():
        return None
    from instag.preprocess.au import read_au_csv

    table = {k.strip(): np.asarray(v, dtype=np.float32) for k, v in read_au_csv(layout.au_csv).items()}
    missing = [c for c in _AU_REQUIRED if c not in table]
    if missing:
        raise InstagError(f"{layout.au_csv} lacks columns {missing}; re-run AU estimation (instag process --task au)")
    out = {}  # an AU of the condition that a trimmed csv lacks (AU02, AU12, AU15) stays 0, neutral
    for col in AU_EXP_COLUMNS + ("AU25_r",):
        v = table.get(col, np.zeros(num, np.float32))
        if len(v) < num:
            v = np.concatenate([v, np.full(num - len(v), v[-1] if len(v) else 0.0, np.float32)])
        out[col] = slow_part(v) if col[:-2] in SLOW_AUS else v
    return out


def slow_part(values: np.ndarray, frames: int = SLOW_AU_FRAMES) -> np.ndarray:
    """Centred moving average of ``values`` [n] over ``frames`` (edges mirrored): an AU's slow (expression) part."""
    if len(values) < 2:
        return values
    half = min(frames // 2, len(values) - 1)
    padded = np.pad(np.asarray(values, np.float64), half, mode="reflect")
    return (np.convolve(padded, np.ones(2 * half + 1) / (2 * half + 1), mode="valid")).astype(np.float32)


def _find_prior_dir(layout: DatasetLayout, kind: str) -> tuple[Path | None, bool]:
    """Folder of ``kind`` ("depth" | "normal") priors and whether it is Sapiens' (upstream) layout."""
    ours = layout.depth_dir if kind == "depth" else layout.normal_dir
    if ours.is_dir():
        return ours, False
    found = sorted(glob.glob(str(layout.root / "sapiens" / kind / "sapiens_*")))
    return (Path(found[-1]), True) if found else (None, False)


@dataclass
class Clip:
    """One processed clip's whole-clip data, for one split.

    frames: cameras of the split (after ``n_views``); size (H, W) the training resolution;
    features ``[T,C,W]`` audio items; ``au_exp [n,9]`` (:data:`AU_EXP_COLUMNS`), ``blink [n]``, ``au25 [n]``,
    ``opening [n]`` (inner-lip gap in px at native size), ``lips_rect [n,4]`` at training size;
    ``lip_target [n,80]`` (normalised lip landmarks minus the clip mean) and ``lip_valid [n]``.
    """

    layout: DatasetLayout
    split: str
    frames: list[FrameCamera]
    size: tuple[int, int]
    native_size: tuple[int, int]
    features: np.ndarray
    au_exp: np.ndarray
    blink: np.ndarray
    au25: np.ndarray
    opening: np.ndarray
    lips_rect: np.ndarray
    lip_target: np.ndarray
    lip_valid: np.ndarray
    has_au: bool
    depth_dir: Path | None = None
    normal_dir: Path | None = None
    sapiens: bool = False
    stats: dict = field(default_factory=dict)
    mouth_px: np.ndarray | None = None  # [n] inner-lip polygon area in px at native size (≈ mouth-mask pixels)
    lip_anchor: np.ndarray | None = None  # [40,3] the tracked lip landmarks in the head frame (head units)
    lip_flow: np.ndarray | None = None  # [n,40,2] non-rigid lip motion per frame, px at training size (see _lip_flow)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def name(self) -> str:
        return self.layout.name

    def audio_window(self, pos: int) -> np.ndarray:
        from instag.audio.windows import frame_window

        return frame_window(self.features, self.frames[pos].aud_id)


def inner_lip_area(lms: np.ndarray) -> np.ndarray:
    """Area in px² of the inner-lip polygon (landmarks 60–67) of ``lms`` ``[n,68,2]``: ``[n]``. The parsing's
    mouth class is this polygon (from the same landmarks), so it stands for the mouth-mask pixel count."""
    ring = np.asarray(lms, np.float64)[:, LIP_INNER]
    x, y = ring[..., 0], ring[..., 1]
    return (0.5 * np.abs((x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1))).astype(np.float32)


def training_size(native: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """Resolution for training: native, or scaled so the longer side is ``max_side`` (even sizes)."""
    h, w = native
    if not max_side or max(h, w) <= max_side:
        return native
    s = max_side / max(h, w)
    return max(2, int(round(h * s / 2)) * 2), max(2, int(round(w * s / 2)) * 2)


def lip_targets(layout: DatasetLayout, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per frame of ``indices``: the 40 lip landmarks, mean-centred, over the inter-ocular distance, centred over
    the clip and scaled ×10 (``[n, 80]``, the lip-head regression target), and whether the frame has them."""
    from instag.metrics.lips import EYE_OUTER_LEFT, EYE_OUTER_RIGHT, LIP_INDICES

    n = len(indices)
    target = np.zeros((n, 2 * len(LIP_INDICES)), np.float32)
    valid = np.zeros(n, bool)
    if not layout.landmarks.exists():
        return target, valid
    lm = load_npy(layout.landmarks, LANDMARKS_HINT, mmap_mode="r", shape=(None, 478, 3))
    for k, i in enumerate(indices):
        if i >= len(lm):
            continue
        pts = np.asarray(lm[i, :, :2], np.float32)
        if not np.isfinite(pts).all():
            continue
        iod = float(np.linalg.norm(pts[EYE_OUTER_RIGHT] - pts[EYE_OUTER_LEFT]))
        if iod <= 1e-6:
            continue
        lips = pts[list(LIP_INDICES)]
        target[k] = ((lips - lips.mean(0)) / iod).ravel()
        valid[k] = True
    if valid.any():
        target[valid] -= target[valid].mean(0)
        target[valid] *= 10.0  # ~unit scale for the regression
    return target, valid


def _lip_flow(layout: DatasetLayout, frames: list, size: tuple[int, int], native: tuple[int, int]):
    """Non-rigid lip motion: ``(anchor [40,3], flow [n,40,2], ok [n])`` or ``(None, None, None)`` without tracking.

    ``anchor`` holds the 40 lip points of the tracked landmark shape (head frame). Per frame, the
    observed MediaPipe lip landmarks minus the anchor projected through that frame's camera is the
    lip motion that the head pose does not explain; the clip's mean is removed, so the canonical
    lips sit at the mean lip shape. Pixels at the training size; frames without finite landmarks
    get zero flow and ``ok`` False.
    """
    from instag.metrics.lips import LIP_INDICES

    if not (layout.track_params.exists() and layout.landmarks.exists()):
        return None, None, None
    params = load_torch(layout.track_params, "re-run the tracking step (instag process --task tracking)")
    shape = params.get("shape") if isinstance(params, dict) else None
    if shape is None or tuple(shape.shape) != (478, 3):
        return None, None, None
    idx = list(LIP_INDICES)
    anchor = shape.detach().cpu().to(torch.float64)[idx]
    lm = load_npy(layout.landmarks, LANDMARKS_HINT, mmap_mode="r", shape=(None, 478, 3))
    scale = np.array([size[1] / native[1], size[0] / native[0]])
    flow = np.zeros((len(frames), len(idx), 2))
    ok = np.zeros(len(frames), bool)
    for k, f in enumerate(frames):
        if f.index >= len(lm):
            continue
        obs = np.asarray(lm[f.index][idx, :2], np.float64) * scale
        if not np.isfinite(obs).all():
            continue
        flow[k] = obs - f.camera.project(anchor).numpy()
        ok[k] = True
    if ok.any():
        flow[ok] -= flow[ok].mean(0)
    return anchor.numpy().astype(np.float32), flow.astype(np.float32), ok


def load_clip(
    root: str | Path,
    split: str,
    extractor: str,
    n_views: int = -1,
    max_side: int | None = None,
    with_priors: bool = False,
) -> Clip:
    """Read a processed clip's whole-clip data for ``split`` ("train" | "val")."""
    from instag.audio.windows import load_features

    layout = DatasetLayout.of(root).require()
    frames = load_cameras(layout, split, n_views=n_views)
    native = (frames[0].camera.height, frames[0].camera.width)
    size = training_size(native, max_side)
    if size != native:
        frames = load_cameras(layout, split, size=size, n_views=n_views)
    indices = [f.index for f in frames]
    total = max(layout.num_frames(), max(indices) + 1)
    feats = load_features(layout.audio_features(extractor), extractor, total)
    lms = np.stack([read_lms(layout.lms(i)) for i in indices])  # [n,68,2]
    inner = lms[:, LIP_INNER, 1]
    opening = (inner.max(1) - inner.min(1)).astype(np.float32)
    sy, sx = size[0] / native[0], size[1] / native[1]
    scaled = lms * np.array([sx, sy], np.float32)
    rects = np.stack([lips_rect(p, size[0], size[1]) for p in scaled])
    au = _read_au(layout, total)
    if au is not None:
        au_exp = np.stack([au[c][indices] for c in AU_EXP_COLUMNS], axis=1).astype(np.float32)
        au_exp[:, AU45] = np.clip(au_exp[:, AU45], 0, 2)
        blink = au_exp[:, AU45] / 2.0
        au25 = au["AU25_r"][indices].astype(np.float32)
    else:
        print(f"instag: {layout.au_csv} missing: AU conditions are zero and mouth curriculum uses lip opening", file=sys.stderr)
        au_exp = np.zeros((len(indices), len(AU_EXP_COLUMNS)), np.float32)
        blink = np.zeros(len(indices), np.float32)
        au25 = opening.copy()
    p95 = float(np.percentile(au25, 95)) if len(au25) else 0.0
    au25 = np.clip(au25, 0, max(p95, 1e-6))
    lip_target, lip_valid = lip_targets(layout, indices)
    lip_anchor, lip_flow, flow_ok = _lip_flow(layout, frames, size, native)
    if flow_ok is not None:
        lip_valid &= flow_ok
    depth_dir = normal_dir = None
    sapiens = False
    if with_priors:
        depth_dir, sapiens = _find_prior_dir(layout, "depth")
        normal_dir, _ = _find_prior_dir(layout, "normal")
    stats = {
        "open_lo": float(opening.min()),
        "open_hi": float(opening.max()),
        "au25_p25": float(np.percentile(au25, 25)),
        "au25_p75": float(np.percentile(au25, 75)),
        "au25_max": float(au25.max()),
    }
    return Clip(
        layout, split, frames, size, native, feats, au_exp, blink, au25, opening, rects, lip_target, lip_valid,
        au is not None, depth_dir, normal_dir, sapiens, stats, inner_lip_area(lms), lip_anchor, lip_flow,
    )


def _imread(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    if img is None:
        raise InstagError(f"cannot read image {path}; the file is missing or corrupt, re-run preprocessing")
    return img


def resize_to(img: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """``img`` at ``size`` (H, W): area-averaged, or nearest-neighbour for labels and masks; unchanged when it fits."""
    if img.shape[:2] == size:
        return img
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(img, (size[1], size[0]), interpolation=interp)


def _colour(parsing: np.ndarray, bgr: tuple[int, int, int]) -> np.ndarray:
    return (np.abs(parsing.astype(np.int16) - np.array(bgr, np.int16)).sum(-1) < 30)


def read_masks(layout: DatasetLayout, index: int) -> np.ndarray:
    """Mask bits ``uint8 [H,W]`` (FACE, HAIR, MOUTH) of frame ``index`` at native size."""
    parsing = _imread(layout.parsing(index))
    head = _colour(parsing, PARSING_BGR["head"])
    inner = _colour(parsing, PARSING_BGR["mouth"])
    hair = _colour(parsing, PARSING_BGR["hair"])
    teeth = np.zeros_like(head)
    tpath = layout.teeth_mask(index)
    if maps.find(tpath) is not None:
        t = maps.read_mask(tpath, "delete it or re-run the teeth-mask step (instag process --task teeth)")
        if t.shape == head.shape:
            teeth = t
    masks = np.zeros(head.shape, np.uint8)
    masks[head & ~teeth] |= FACE
    masks[hair] |= HAIR
    masks[inner | teeth] |= MOUTH
    return masks


def read_background(layout: DatasetLayout, index: int, plate: np.ndarray | None) -> np.ndarray:
    """Torso RGBA of frame ``index`` composited over the background plate: BGR uint8 [H,W,3]."""
    tpath = layout.torso_image(index)
    if plate is None and not tpath.exists():
        raise InstagError(f"neither {layout.background} nor {tpath} exists; re-run preprocessing")
    if not tpath.exists():
        return plate
    torso = _imread(tpath, cv2.IMREAD_UNCHANGED)
    if torso.ndim == 2 or torso.shape[2] != 4:
        return torso[..., :3] if torso.ndim == 3 else cv2.cvtColor(torso, cv2.COLOR_GRAY2BGR)
    if plate is None:
        plate = np.zeros(torso.shape[:2] + (3,), np.uint8)
    a = torso[..., 3:4].astype(np.float32) / 255.0
    return (torso[..., :3].astype(np.float32) * a + plate.astype(np.float32) * (1 - a)).round().astype(np.uint8)


class FrameDataset(torch.utils.data.Dataset):
    """Frames of several clips, indexed by ``(clip, position)``; reads from disk with an LRU cache.

    A sample is a dict: clip, pos, index (ints); image, background uint8 ``[3,H,W]`` (RGB);
    masks uint8 ``[H,W]`` (FACE|HAIR|MOUTH bits); audio float32 ``[8,C,W]``; au float32 ``[9]`` (AU_EXP_COLUMNS);
    lips_rect int64 ``[4]``; lip_target float32 ``[80]``, lip_valid bool; lip_flow float32 ``[40,2]`` when
    the clip is tracked; and with priors
    depth float32 ``[1,H,W]``, normal float32 ``[3,H,W]`` (camera space, OpenCV axes; 0 = none).
    """

    def __init__(self, clips: list[Clip], cache_bytes: int = 256 << 20, with_priors: bool = False):
        self.clips = clips
        self.cache_bytes = cache_bytes
        self.with_priors = with_priors
        self._cache: OrderedDict[tuple[int, int], dict] = OrderedDict()
        self._cached = 0
        self._plates: dict[int, np.ndarray | None] = {}

    def __len__(self) -> int:
        return sum(len(c) for c in self.clips)

    def _plate(self, c: int) -> np.ndarray | None:
        if c not in self._plates:
            path = self.clips[c].layout.background
            self._plates[c] = _imread(path) if path.exists() else None
        return self._plates[c]

    def _load_pixels(self, c: int, pos: int) -> dict:
        clip = self.clips[c]
        layout, index, size = clip.layout, clip.frames[pos].index, clip.size
        image = _imread(layout.gt_image(index))
        native = image.shape[:2]
        if native != clip.native_size:
            raise InstagError(f"{layout.gt_image(index)} is {native[1]}x{native[0]} but the clip's frames are "
                              f"{clip.native_size[1]}x{clip.native_size[0]} (frame {clip.frames[0].index}); re-run "
                              "preprocessing (instag process --task gt_torso), or put that frame back")
        plate = self._plate(c)
        if plate is not None and plate.shape[:2] != native:
            plate = cv2.resize(plate, (native[1], native[0]), interpolation=cv2.INTER_AREA)
        background = read_background(layout, index, plate)
        masks = read_masks(layout, index)
        if masks.shape != native:
            raise InstagError(f"{layout.parsing(index)} is {masks.shape[1]}x{masks.shape[0]} but frame {index} is {native[1]}x{native[0]}; re-run preprocessing")
        out = {
            "image": torch.from_numpy(np.ascontiguousarray(resize_to(image, size)[..., ::-1].transpose(2, 0, 1))),
            "background": torch.from_numpy(np.ascontiguousarray(resize_to(background, size)[..., ::-1].transpose(2, 0, 1))),
            "masks": torch.from_numpy(resize_to(masks, size, nearest=True)),
        }
        if self.with_priors:
            out.update(self._load_priors(clip, index, size))
        return out

    def _load_priors(self, clip: Clip, index: int, size: tuple[int, int]) -> dict:
        depth = np.zeros(size, np.float32)
        normal = np.zeros((3,) + size, np.float32)
        name = f"{index}.png"  # maps.find also finds <index>.npy: older clips and Sapiens' upstream layout
        if clip.depth_dir is not None and maps.find(clip.depth_dir / name) is not None:
            depth = resize_to(maps.read_depth(clip.depth_dir / name, PRIOR_HINT), size, nearest=True)
        if clip.normal_dir is not None and maps.find(clip.normal_dir / name) is not None:
            n = resize_to(maps.read_normal(clip.normal_dir / name, PRIOR_HINT), size, nearest=True)
            if clip.sapiens:  # Sapiens normals: y up, z toward the viewer -> OpenCV camera axes
                n = n * np.array([1.0, -1.0, -1.0], np.float32)
            normal = n.transpose(2, 0, 1)
        return {"depth": torch.from_numpy(np.ascontiguousarray(depth))[None], "normal": torch.from_numpy(np.ascontiguousarray(normal))}

    def pixels(self, c: int, pos: int) -> dict:
        key = (c, pos)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        data = self._load_pixels(c, pos)
        nbytes = sum(t.numel() * t.element_size() for t in data.values())
        if nbytes <= self.cache_bytes:
            self._cache[key] = data
            self._cached += nbytes
            while self._cached > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached -= sum(t.numel() * t.element_size() for t in old.values())
        return data

    def __getitem__(self, key: tuple[int, int]) -> dict:
        c, pos = int(key[0]), int(key[1])
        clip = self.clips[c]
        sample = dict(self.pixels(c, pos))
        sample.update(
            clip=c,
            pos=pos,
            index=clip.frames[pos].index,
            audio=torch.from_numpy(np.ascontiguousarray(clip.audio_window(pos), dtype=np.float32)),
            au=torch.from_numpy(clip.au_exp[pos]),
            lips_rect=torch.from_numpy(clip.lips_rect[pos]),
            lip_target=torch.from_numpy(clip.lip_target[pos]),
            lip_valid=bool(clip.lip_valid[pos]),
        )
        if clip.lip_flow is not None:
            sample["lip_flow"] = torch.from_numpy(clip.lip_flow[pos])
        return sample


__all__ = [
    "FACE",
    "HAIR",
    "MOUTH",
    "Clip",
    "FrameDataset",
    "load_clip",
    "read_masks",
    "read_background",
    "lips_rect",
    "read_lms",
    "training_size",
    "merge_clips",
]


def merge_clips(a: Clip, b: Clip) -> Clip:
    """Frames of ``a`` then ``b`` (same clip, two splits) as one training clip (``--all_for_train``)."""
    if a.layout.root != b.layout.root or a.size != b.size:
        raise InstagError(f"cannot merge splits of different clips or sizes ({a.layout.root}, {b.layout.root})")
    cat = np.concatenate
    merged = Clip(
        a.layout, f"{a.split}+{b.split}", a.frames + b.frames, a.size, a.native_size, a.features,
        cat([a.au_exp, b.au_exp]), cat([a.blink, b.blink]), cat([a.au25, b.au25]), cat([a.opening, b.opening]),
        cat([a.lips_rect, b.lips_rect]), cat([a.lip_target, b.lip_target]), cat([a.lip_valid, b.lip_valid]),
        a.has_au, a.depth_dir, a.normal_dir, a.sapiens, dict(a.stats),
        None if a.mouth_px is None or b.mouth_px is None else cat([a.mouth_px, b.mouth_px]),
        a.lip_anchor if b.lip_flow is not None else None,
        None if a.lip_flow is None or b.lip_flow is None else cat([a.lip_flow, b.lip_flow]),
    )
    merged.stats.update(
        open_lo=float(merged.opening.min()), open_hi=float(merged.opening.max()),
        au25_p25=float(np.percentile(merged.au25, 25)), au25_p75=float(np.percentile(merged.au25, 75)),
        au25_max=float(merged.au25.max()),
    )
    return merged
