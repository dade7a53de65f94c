"""Per-frame maps of a processed clip on disk: teeth masks and the depth and normal priors.

Stored as PNG images (a tenth of a raw array's size and less; a 5-s clip's priors as ``.npy`` took 250 MB):

===========================  ======================================================================
``teeth_mask/<i>.png``       uint8 [H,W]: 255 on teeth, 0 elsewhere
``depth/<i>.png``            uint16 [H,W]: the bits of the float16 camera-space depth (0 = no prior).
                             Lossless against the float16 arrays of before; positive float16 values
                             order like their bits, so PNG's predictors compress them well
``normal/<i>.png``           uint8 [H,W,3]: unit normal ``n`` (camera space, OpenCV axes, channels
                             x y z in that order) as ``round(127 n) + 128``; (0, 0, 0) = no prior.
                             At most 1/254 off per component (under half a degree)
===========================  ======================================================================

Clips processed before keep loading: each reader falls back to the older ``<i>.npy`` beside the PNG's
name (bool masks, float16 depth and normals), so :func:`find` is what to ask whether a map exists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from instag.errors import InstagError

NORMAL_SCALE = 127.0
LEGACY_SUFFIX = ".npy"


def find(path: Path) -> Path | None:
    """``path`` (a map's PNG name), or the older ``.npy`` beside it, whichever exists; None when neither does."""
    if path.exists():
        return path
    legacy = path.with_suffix(LEGACY_SUFFIX)
    return legacy if legacy.exists() else None


def _read_png(path: Path, hint: str) -> np.ndarray:
    import cv2

    data = np.fromfile(path, np.uint8) if path.is_file() else None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data is not None and data.size else None
    if img is None:
        raise InstagError(f"cannot read {path}: missing or not a PNG image; {hint}")
    return img


def _read_legacy(path: Path, hint: str, shape: tuple[int | None, ...]) -> np.ndarray:
    from instag.io.safe_load import load_npy

    return load_npy(path, hint, shape=shape)


def _write_png(path: Path, image: np.ndarray) -> None:
    """Write ``image`` as ``path`` (PNG) and drop an older ``.npy`` of the same map."""
    import cv2

    from instag.io.atomic import write_image

    write_image(path, image, [cv2.IMWRITE_PNG_COMPRESSION, 3])  # level 6 is a sixth smaller and twice as slow
    path.with_suffix(LEGACY_SUFFIX).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------- teeth
def write_mask(path: Path, mask: np.ndarray) -> None:
    """A bool ``[H,W]`` mask as ``path`` (PNG, 255 = True)."""
    _write_png(path, np.where(np.asarray(mask, bool), 255, 0).astype(np.uint8))


def read_mask(path: Path, hint: str) -> np.ndarray:
    """The bool ``[H,W]`` mask stored as ``path`` (or its older ``.npy``)."""
    found = find(path) or path
    if found.suffix == LEGACY_SUFFIX:
        return _read_legacy(found, hint, (None, None)).astype(bool)
    img = _read_png(found, hint)
    return (img if img.ndim == 2 else img[..., 0]) > 127


# ------------------------------------------------------------------------------------------------- depth
def write_depth(path: Path, depth: np.ndarray) -> None:
    """A depth map float ``[H,W]`` (0 = no prior; finite, non-negative) as ``path``: float16 bits in a 16-bit PNG."""
    half = np.nan_to_num(np.asarray(depth, np.float32), nan=0.0, posinf=0.0, neginf=0.0).clip(0).astype(np.float16)
    _write_png(path, half.view(np.uint16))


def read_depth(path: Path, hint: str) -> np.ndarray:
    """The depth map float32 ``[H,W]`` stored as ``path`` (or its older ``.npy``); 0 = no prior."""
    found = find(path) or path
    if found.suffix == LEGACY_SUFFIX:
        return np.nan_to_num(_read_legacy(found, hint, (None, None)).astype(np.float32))
    img = _read_png(found, hint)
    if img.dtype != np.uint16 or img.ndim != 2:
        raise InstagError(f"{found} is not a 16-bit one-channel PNG (a depth prior); {hint}")
    return np.nan_to_num(img.view(np.float16).astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)


# ------------------------------------------------------------------------------------------------- normals
def write_normal(path: Path, normal: np.ndarray) -> None:
    """A normal map float ``[H,W,3]`` (unit vectors; 0 = no prior) as ``path``: 8 bits per component."""
    n = np.nan_to_num(np.asarray(normal, np.float32))
    empty = ~np.any(n != 0, axis=-1)
    coded = np.clip(np.round(n * NORMAL_SCALE) + 128.0, 1, 255).astype(np.uint8)
    coded[empty] = 0
    _write_png(path, coded)


def read_normal(path: Path, hint: str) -> np.ndarray:
    """The normal map float32 ``[H,W,3]`` stored as ``path`` (or its older ``.npy``); 0 = no prior."""
    found = find(path) or path
    if found.suffix == LEGACY_SUFFIX:
        return np.nan_to_num(_read_legacy(found, hint, (None, None, 3)).astype(np.float32))
    img = _read_png(found, hint)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise InstagError(f"{found} is not an 8-bit three-channel PNG (a normal prior); {hint}")
    normal = (img.astype(np.float32) - 128.0) / NORMAL_SCALE
    normal[~np.any(img != 0, axis=-1)] = 0.0
    return normal
