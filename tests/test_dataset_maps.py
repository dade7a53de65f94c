"""Per-frame maps on disk (:mod:`instag.data.maps`): PNGs that decode to what was written (depth exactly as
float16, normals within 1/254, masks exactly), "no prior" kept as 0, and the older ``.npy`` read in their place."""

from __future__ import annotations

import numpy as np
import pytest

from instag.data import maps
from instag.errors import InstagError


def face_like(h: int = 96, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """A depth map of a sphere cap (0 around it) and its unit normals (facing the camera: z < 0)."""
    y, x = np.mgrid[:h, :w]
    u, v = (x - w / 2) / (0.4 * w), (y - h / 2) / (0.4 * h)
    r2 = u**2 + v**2
    inside = r2 < 1
    depth = np.where(inside, 0.6 - 0.1 * np.sqrt(np.clip(1 - r2, 0, 1)), 0).astype(np.float32)
    normal = np.stack([u, v, -np.sqrt(np.clip(1 - r2, 0, 1))], -1)
    normal = np.where(inside[..., None], normal / np.linalg.norm(normal, axis=-1, keepdims=True), 0).astype(np.float32)
    return depth, normal


def test_maps_round_trip(tmp_path):
    depth, normal = face_like()
    maps.write_depth(tmp_path / "d.png", depth)
    maps.write_normal(tmp_path / "n.png", normal)
    mask = depth > 0.55
    maps.write_mask(tmp_path / "m.png", mask)
    np.testing.assert_array_equal(maps.read_depth(tmp_path / "d.png", ""), depth.astype(np.float16).astype(np.float32))
    back = maps.read_normal(tmp_path / "n.png", "")
    assert (back[depth == 0] == 0).all() and (np.abs(back - normal).max() <= 1 / 254 + 1e-6)
    np.testing.assert_array_equal(maps.read_mask(tmp_path / "m.png", ""), mask)
    raw = depth.astype(np.float16).nbytes + normal.astype(np.float16).nbytes
    assert sum((tmp_path / f).stat().st_size for f in ("d.png", "n.png")) < raw / 4


def test_older_npy_maps_are_read_and_replaced(tmp_path):
    depth, normal = face_like()
    np.save(tmp_path / "3.npy", depth.astype(np.float16))
    assert maps.find(tmp_path / "3.png") == tmp_path / "3.npy"
    np.testing.assert_array_equal(maps.read_depth(tmp_path / "3.png", ""), depth.astype(np.float16).astype(np.float32))
    maps.write_depth(tmp_path / "3.png", depth)  # a new write drops the older array
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3.png"]
    np.save(tmp_path / "4.npy", normal[..., :2])  # damaged: two channels
    with pytest.raises(InstagError, match="4.npy"):
        maps.read_normal(tmp_path / "4.png", "rerun the priors step")
    (tmp_path / "5.png").write_bytes(b"not a png")
    with pytest.raises(InstagError, match="5.png.*rerun"):
        maps.read_depth(tmp_path / "5.png", "rerun the priors step")
