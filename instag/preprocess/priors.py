"""Depth and normal priors rendered from the tracked face mesh (MediaPipe's tessellation).

Per frame, the tracked landmark shape is posed in OpenCV camera space and its triangles are
rasterised with a z-buffer (vectorised in torch, one frame at a time): ``depth/<i>.png`` =
camera z of the nearest surface ([H,W], 0 off the face), ``normal/<i>.png`` = interpolated
vertex normals in camera space ([H,W,3], x right, y down, z forward; they face the camera, so
z < 0; 0 off the face), encoded as :mod:`instag.data.maps` describes.
"""

from __future__ import annotations

import numpy as np
import torch

from instag.data.format import DatasetLayout
from instag.data.maps import write_depth, write_normal
from instag.preprocess import tracking
from instag.preprocess.mesh import triangles
from instag.preprocess.workers import for_each_frame

HEAD_CENTRE = np.array([0.0, 0.0, -0.08])  # head units, behind the face surface: normals point away from it


def oriented_triangles(shape: np.ndarray) -> np.ndarray:
    """Triangles [F,3] wound so their normals point away from the head centre (outward)."""
    tris = triangles()
    v = shape[:468]
    n = np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]])
    out = v[tris].mean(1) - HEAD_CENTRE
    flip = (n * out).sum(-1) < 0
    tris = tris.copy()
    tris[flip] = tris[flip][:, [0, 2, 1]]
    return tris


def vertex_normals(verts: torch.Tensor, tris: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals [V,3] of a mesh (verts [V,3], tris [F,3])."""
    fn = torch.cross(verts[tris[:, 1]] - verts[tris[:, 0]], verts[tris[:, 2]] - verts[tris[:, 0]], dim=-1)
    vn = torch.zeros_like(verts).index_add_(0, tris.reshape(-1), fn.repeat_interleave(3, 0))
    return torch.nn.functional.normalize(vn, dim=-1)


def rasterize(verts_cam: torch.Tensor, normals_cam: torch.Tensor, tris: torch.Tensor, focal: float,
              width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Z-buffered rasterisation of a camera-space mesh (OpenCV axes).

    verts_cam [V,3], normals_cam [V,3], tris [F,3] -> depth [H,W] (0 = empty), normal [H,W,3].
    """
    z = verts_cam[:, 2].clamp_min(1e-4)
    uv = focal * verts_cam[:, :2] / z[:, None] + torch.tensor([width / 2, height / 2], dtype=verts_cam.dtype)
    tri_uv = uv[tris]  # [F,3,2]
    lo = tri_uv.min(1).values.floor().clamp(min=0)
    hi = tri_uv.max(1).values.ceil()
    hi[:, 0].clamp_(max=width - 1)
    hi[:, 1].clamp_(max=height - 1)
    keep = (hi >= lo).all(-1) & (verts_cam[tris, 2] > 1e-3).all(-1)
    tris, tri_uv, lo, hi = tris[keep], tri_uv[keep], lo[keep], hi[keep]
    depth = torch.zeros(height * width, dtype=verts_cam.dtype)
    normal = torch.zeros(height * width, 3, dtype=verts_cam.dtype)
    if tris.shape[0] == 0:
        return depth.reshape(height, width), normal.reshape(height, width, 3)
    spans = (hi - lo).max(-1).values + 1
    pieces = []
    lower = 0
    for bound in (8, 16, 32, None):  # buckets by triangle size: most triangles are small
        sel = spans > lower if bound is None else (spans > lower) & (spans <= bound)
        lower = bound or lower
        if sel.any():
            size = bound if bound is not None else int(spans[sel].max().item())
            pieces.append(_cover(tri_uv[sel], lo[sel], torch.nonzero(sel).squeeze(1), size, z[tris[sel]], width, height))
    f_idx = torch.cat([p[0] for p in pieces])
    flat = torch.cat([p[1] for p in pieces])
    pix_depth = torch.cat([p[2] for p in pieces])
    bary = torch.cat([p[3] for p in pieces])
    zbuf = torch.full((height * width,), float("inf"), dtype=verts_cam.dtype)
    zbuf.scatter_reduce_(0, flat, pix_depth, reduce="amin")
    win = pix_depth <= zbuf[flat]
    flat_w = flat[win]
    nt = normals_cam[tris[f_idx[win]]]  # [P,3,3]
    n = torch.nn.functional.normalize((bary[win][..., None] * nt).sum(1), dim=-1)
    depth[flat_w] = zbuf[flat_w]
    normal[flat_w] = n
    return depth.reshape(height, width), normal.reshape(height, width, 3)


def _cover(tri_uv: torch.Tensor, lo: torch.Tensor, tri_ids: torch.Tensor, span: int, zt: torch.Tensor,
           width: int, height: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixels covered by triangles (tri_uv [F,3,2], bbox corner lo [F,2], bbox side <= span).

    Returns (triangle id [P], flat pixel index [P], depth [P], barycentrics [P,3]).
    """
    offs = torch.arange(span, dtype=tri_uv.dtype)
    px = (lo[:, None, None, 0] + offs[None, None, :]).expand(-1, span, span) + 0.5  # [F,S,S]
    py = (lo[:, None, None, 1] + offs[None, :, None]).expand(-1, span, span) + 0.5
    a, b, c = tri_uv[:, 0], tri_uv[:, 1], tri_uv[:, 2]

    def edge(p, q, x, y):
        return (q[:, 0, None, None] - p[:, 0, None, None]) * (y - p[:, 1, None, None]) - \
            (q[:, 1, None, None] - p[:, 1, None, None]) * (x - p[:, 0, None, None])

    area = edge(a, b, c[:, 0, None, None], c[:, 1, None, None])  # [F,1,1]
    safe = torch.where(area.abs() < 1e-9, torch.ones_like(area), area)
    w0 = edge(b, c, px, py) / safe
    w1 = edge(c, a, px, py) / safe
    w2 = edge(a, b, px, py) / safe
    inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0) & (area.abs() >= 1e-9) & (px < width) & (py < height)
    f, yy, xx = torch.nonzero(inside, as_tuple=True)
    bary = torch.stack([w0[f, yy, xx], w1[f, yy, xx], w2[f, yy, xx]], -1)
    depth = 1.0 / (bary / zt[f]).sum(-1)  # perspective-correct: interpolate 1/z
    flat = py[f, yy, xx].long() * width + px[f, yy, xx].long()
    return tri_ids[f], flat, depth, bary


def run(layout: DatasetLayout) -> None:
    params = tracking.load(layout)
    width, height = (int(v) for v in params["image_size"])
    shape = params["shape"].double().numpy()
    focal = float(params["focal"].reshape(-1)[0])
    r_cv, t_cv = tracking.head_to_camera_cv(params)
    tris_np = oriented_triangles(shape)
    tris = torch.as_tensor(tris_np)
    verts_head = torch.as_tensor(shape[:468])
    normals_head = vertex_normals(verts_head, tris)
    layout.depth_dir.mkdir(parents=True, exist_ok=True)
    layout.normal_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one kernel thread per worker thread

    def work(i: int, _state) -> None:
        rot = torch.as_tensor(r_cv[i])
        verts = verts_head @ rot.T + torch.as_tensor(t_cv[i])
        depth, normal = rasterize(verts, normals_head @ rot.T, tris, focal, width, height)
        write_depth(layout.depth_prior(i), depth.numpy())
        write_normal(layout.normal_prior(i), normal.numpy())

    try:
        for_each_frame(len(r_cv), work, "priors")
    finally:
        torch.set_num_threads(threads)
