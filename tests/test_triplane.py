"""Tri-plane grid encoder: level sizes, bilinear interpolation, out-of-bound zeros, gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from instag.model.triplane import PLANES, TriPlaneEncoder, level_resolutions


def test_level_resolutions_follow_method_table():
    assert level_resolutions(12, 16, 38.4) == [16, 18, 19, 21, 22, 24, 26, 28, 31, 33, 36, 39]
    assert level_resolutions(12, 64, 57.6) == [64, 64, 63, 63, 62, 62, 61, 60, 60, 59, 59, 58]
    enc = TriPlaneEncoder()
    assert enc.output_dim == 36 and enc.embeddings.shape == (36, 1, 39, 39)
    assert enc.embeddings.abs().max() <= 1e-4
    mouth = TriPlaneEncoder(base_resolution=64, finest_resolution=57.6, features_per_level=2)
    assert mouth.output_dim == 72 and mouth(torch.zeros(4, 5, 3)).shape == (4, 5, 72)


def _level_grid(enc: TriPlaneEncoder, plane: int, level: int) -> torch.Tensor:
    """The embedding grid of one plane/level as ``[C, rows=v, cols=u]``."""
    res = enc.resolutions[level]
    return enc.embeddings[plane * enc.num_levels + level, :, :res, :res]


def test_hand_computed_bilinear_value():
    enc = TriPlaneEncoder(bound=1.0, num_levels=1, base_resolution=3, finest_resolution=3).double()
    with torch.no_grad():  # plane p, vertex (row v, col u) holds 9p + 3v + u
        enc.embeddings.copy_(torch.arange(27, dtype=torch.float64).reshape(3, 1, 3, 3))
    x = torch.tensor([[0.5, -0.5, 0.0]], dtype=torch.float64)
    # xy plane: u = 0.75 -> 1.5 cells, v = 0.25 -> 0.5 cells: corners (1,0)=1 (2,0)=2 (1,1)=4 (2,1)=5, weights 1/4 each
    # yz plane: u = 0.25 -> 0.5, v = 0.5 -> 1.0: corners (0,1)=12 (1,1)=13 (0,2)=15 (1,2)=16, weights (1/2,1/2,0,0)
    # xz plane: u = 1.5, v = 1.0: corners (1,1)=22 (2,1)=23 (1,2)=25 (2,2)=26, weights (1/2,1/2,0,0)
    expected = torch.tensor([[(1 + 2 + 4 + 5) / 4, (12 + 13) / 2, (22 + 23) / 2]], dtype=torch.float64)
    assert torch.allclose(enc(x), expected)


def test_matches_grid_sample_on_every_level():
    gen = torch.Generator().manual_seed(0)
    enc = TriPlaneEncoder(features_per_level=2).double()
    with torch.no_grad():
        enc.embeddings.copy_(torch.randn(enc.embeddings.shape, generator=gen, dtype=torch.float64))
    x = (torch.rand(200, 3, generator=gen, dtype=torch.float64) * 2 - 1) * 0.15
    out = enc(x).reshape(200, 3, enc.num_levels, 2)
    u = (x + 0.15) / 0.3
    for p, (a, b) in enumerate(PLANES):
        coords = (u[:, [a, b]] * 2 - 1)[None, :, None, :]  # grid_sample wants (x=col, y=row) in [-1, 1]
        for level in range(enc.num_levels):
            ref = F.grid_sample(_level_grid(enc, p, level)[None], coords, mode="bilinear", align_corners=True)
            assert torch.allclose(out[:, p, level], ref[0, :, :, 0].T, atol=1e-12), (p, level)


def test_outside_bound_gives_zero_for_that_plane():
    enc = TriPlaneEncoder(bound=0.15)
    with torch.no_grad():
        enc.embeddings.fill_(1.0)
    x = torch.tensor([[0.0, 0.0, 0.2], [0.16, 0.0, 0.0], [0.0, 0.0, 0.0], [0.15, -0.15, 0.15]])
    out = enc(x).reshape(4, 3, 12)
    assert out[0, 0].eq(1).all() and out[0, 1].eq(0).all() and out[0, 2].eq(0).all()  # z outside: only xy
    assert out[1, 0].eq(0).all() and out[1, 1].eq(1).all() and out[1, 2].eq(0).all()  # x outside: only yz
    assert torch.allclose(out[2], torch.ones(3, 12)) and torch.allclose(out[3], torch.ones(3, 12))  # edges are inside
    x = x.clone().requires_grad_(True)
    enc(x).sum().backward()
    assert x.grad[0, 2] == 0 and x.grad[1, 0] == 0


def test_gradients_match_finite_differences():
    gen = torch.Generator().manual_seed(1)
    enc = TriPlaneEncoder(num_levels=3, base_resolution=4, finest_resolution=9, features_per_level=2).double()
    with torch.no_grad():
        enc.embeddings.copy_(torch.randn(enc.embeddings.shape, generator=gen, dtype=torch.float64))
    x = ((torch.rand(6, 3, generator=gen, dtype=torch.float64) * 2 - 1) * 0.12).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda pts, emb: _with_embeddings(enc, emb, pts), (x, enc.embeddings), eps=1e-7, atol=1e-6
    )


def _with_embeddings(enc: TriPlaneEncoder, emb: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    return torch.func.functional_call(enc, {"embeddings": emb}, (pts,))
