"""Rasterization of 3D Gaussians: one :func:`rasterize` over a gsplat (CUDA) and a pure-PyTorch backend."""

from instag.render.camera import Camera
from instag.render.rasterize import RenderOutput, composite, rasterize, rasterize_batch

__all__ = ["Camera", "RenderOutput", "composite", "rasterize", "rasterize_batch"]
