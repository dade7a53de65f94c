"""Real spherical harmonics (degrees 0-3) in plain PyTorch.

Same basis, ordering and signs as 3DGS and gsplat: coefficient ``k`` of degree ``l`` sits at
index ``l*l + (m + l)``; colour = ``sum_k basis_k(dir) * coeff_k + 0.5``, clamped at 0, with
``dir`` the unit vector from the camera centre to the Gaussian mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SH_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)
MAX_SH_DEGREE = 3


def num_sh_coeffs(degree: int) -> int:
    """Number of coefficients per colour channel up to ``degree`` inclusive."""
    return (degree + 1) ** 2


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """The DC coefficient that renders as ``rgb`` (any shape)."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(dc: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_sh` (view-independent part of the colour)."""
    return dc * SH_C0 + 0.5


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Basis values at unit directions ``dirs [..., 3]`` -> ``[..., (degree+1)^2]``."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            _C2[0] * x * y,
            _C2[1] * y * z,
            _C2[2] * (2.0 * zz - xx - yy),
            _C2[3] * x * z,
            _C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            _C3[0] * y * (3.0 * xx - yy),
            _C3[1] * x * y * z,
            _C3[2] * y * (4.0 * zz - xx - yy),
            _C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            _C3[4] * x * (4.0 * zz - xx - yy),
            _C3[5] * z * (xx - yy),
            _C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Evaluate SH colours.

    Args:
        degree: degree to use; ``(degree+1)^2 <= K``.
        dirs: view directions ``[..., 3]`` (normalised here).
        coeffs: ``[..., K, 3]``.

    Returns:
        ``[..., 3]`` RGB = basis . coeffs + 0.5, clamped at 0 (gsplat's and 3DGS's convention).
    """
    k = num_sh_coeffs(degree)
    if coeffs.shape[-2] < k:
        raise ValueError(f"SH degree {degree} needs {k} coefficients, got {coeffs.shape[-2]}")
    basis = sh_basis(degree, F.normalize(dirs, dim=-1))
    return torch.clamp_min((basis[..., None] * coeffs[..., :k, :]).sum(-2) + 0.5, 0.0)
