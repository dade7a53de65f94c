"""Basel Face Model 2009 in plain PyTorch: conversion, 68 keypoints and a landmark tracker.

This is the optional upstream-compatible tracker (DESIGN §3): used only when the user has the
licence-gated ``01_MorphableModel.mat``. Nothing here needs pytorch3d.

**Files.** ``convert_BFM.py`` (run in ``data_utils/face_tracking`` like upstream) turns
``3DMM/01_MorphableModel.mat`` plus AD-NeRF's helper files into ``3DMM/3DMM_info.npz``: plain
arrays under upstream's key names (``mu_shape, b_shape, sig_shape, mu_exp, b_exp, sig_exp,
mu_tex, b_tex, sig_tex``) plus the keypoint tables of ``keys_info.npy`` (``keyinds,
left_contour, right_contour, rigid_ids``) and, when ``sub_mesh.obj`` is there, ``tris``
(0-based). Upstream writes ``3DMM_info.npy``, a *pickled* dict; loading a pickle can run code,
so we never call ``np.load(allow_pickle=True)``. Upstream's pickled ``.npy`` files (theirs, and
AD-NeRF's ``exp_info.npy`` / ``keys_info.npy`` / ``topology_info.npy``) are read with an
unpickler that only admits numpy's array and scalar constructors (the same idea as
``torch.load(weights_only=True)``): a file holding anything else is refused, so reading it never
executes code. ``convert_BFM.py --upstream_npy`` also writes upstream's pickled file for
upstream's own tools.

**Model** (upstream's ``facemodel.py`` conventions): mean = mu_shape + mu_exp, centred per axis;
mean and bases divided by 1e5 (tracker units: the head is ~1.5 wide); coefficients are in
standard deviations (multiplied by ``sig_*``); 100 identity and 79 expression components.

**Camera** (upstream's tracker): OpenGL-like, looking down -z; a head point p maps to
p_cam = R(euler)·p + trans and projects to u = -f·X/Z + cx, v = f·Y/Z + cy, cx = W/2, cy = H/2.
R = Rx(θ)·Ry(φ)·Rz(-ψ) for euler = (θ, φ, ψ), as the face-tracking ``euler2rot`` of the
AD-NeRF / ER-NeRF code that upstream ships. ``camera_to_world`` turns a track into
``transforms_*.json`` matrices exactly as upstream: [Rᵀ | -Rᵀ·trans/10] in OpenGL axes.

**Tracker** (landmarks only; no photometric stage, so no renderer is needed): focal search on a
few frames (upstream's grid 600..1400 px, scaled by image size /512, refined by a parabola
through the best grid point), then all frames jointly: pose, one identity and per-frame
expressions, with upstream's id/exp regularisers and a temporal second-difference penalty on the
camera-space keypoints (pose smoothness) and on the expressions.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from instag.errors import InstagError

ID_DIM = 100
EXP_DIM = 79
UNIT_SCALE = 1e5  # BFM micrometres -> tracker units
MESH_KEYS = ("mu_shape", "b_shape", "sig_shape", "mu_exp", "b_exp", "sig_exp", "mu_tex", "b_tex", "sig_tex")
KEY_KEYS = ("keyinds", "left_contour", "right_contour", "rigid_ids")

# ------------------------------------------------------------------------------------------------
# reading upstream's pickled .npy dictionaries without executing code

_NUMPY_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype")}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS or (module.startswith("numpy") and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not an array constructor")


def load_array_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a dict of arrays from ``.npz`` or from upstream's pickled-dict ``.npy``, safely."""
    path = Path(path)
    if not path.is_file():
        raise InstagError(f"missing {path}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            if not dtype.hasobject:
                raise InstagError(
                    f"{path} holds a plain array {shape}, expected a dict of arrays (upstream's 3DMM files)"
                )
            obj = _ArrayOnlyUnpickler(fh, encoding="latin1").load()
    except InstagError:
        raise
    except (pickle.UnpicklingError, ValueError, EOFError, OSError, AttributeError) as err:
        raise InstagError(f"cannot read {path} as a dict of arrays ({err}); re-download or re-create it") from err
    item = obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
    if not isinstance(item, dict) or not all(isinstance(k, str) for k in item):
        raise InstagError(f"{path} does not hold a dict of named arrays; re-download or re-create it")
    return {k: np.asarray(v) for k, v in item.items()}


def _read_obj_triangles(path: Path) -> np.ndarray:
    """Triangles of a Wavefront .obj (faces ``f a b c`` or ``f a/t/n ...``), 0-based int32 [T,3]."""
    tris = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("f "):
            idx = [int(tok.split("/")[0]) for tok in line.split()[1:4]]
            tris.append(idx)
    if not tris:
        raise InstagError(f"{path} has no triangle faces; re-download sub_mesh.obj")
    return np.asarray(tris, dtype=np.int32) - 1


# ------------------------------------------------------------------------------------------------
# convert_BFM


def convert_bfm(model_dir: str | Path = "3DMM", *, upstream_npy: bool = False) -> Path:
    """Build ``<model_dir>/3DMM_info.npz`` from the BFM .mat and AD-NeRF's helper files.

    Needs ``01_MorphableModel.mat``, ``exp_info.npy`` and ``topology_info.npy``; takes
    ``keys_info.npy`` and ``sub_mesh.obj`` when present (the tracker needs keys_info). Raises one
    :class:`InstagError` listing every missing file and where to put it.
    """
    from instag.io.atomic import atomic_path
    from instag.preprocess import weights

    model_dir = Path(model_dir)
    files = {
        "bfm": model_dir / "01_MorphableModel.mat",
        "bfm_exp_info": model_dir / "exp_info.npy",
        "bfm_topology_info": model_dir / "topology_info.npy",
    }
    optional = {"bfm_keys_info": model_dir / "keys_info.npy", "bfm_sub_mesh": model_dir / "sub_mesh.obj"}
    missing = [f"{p.name} ({weights.REGISTRY[n].how_to_get})" for n, p in files.items() if not p.is_file()]
    if missing:
        raise InstagError(
            f"convert_BFM needs in {model_dir.resolve()}/: "
            + "; ".join(missing)
            + "; or run `bash scripts/prepare.sh --fetch` for the AD-NeRF files"
        )
    try:
        from scipy.io import loadmat
    except ImportError as err:
        raise InstagError("convert_BFM needs scipy to read the .mat file: pip install scipy") from err
    try:
        mat = loadmat(str(files["bfm"]))
    except Exception as err:  # scipy raises several types for corrupt files
        raise InstagError(f"cannot read {files['bfm']} ({err}); copy the original 01_MorphableModel.mat again") from err
    need = ("shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV")
    absent = [k for k in need if k not in mat]
    if absent:
        raise InstagError(f"{files['bfm']} lacks {', '.join(absent)}; it is not the BFM 2009 01_MorphableModel.mat")
    topo = load_array_dict(files["bfm_topology_info"])
    exp_info = load_array_dict(files["bfm_exp_info"])
    if "sub_inds" not in topo:
        raise InstagError(f"{files['bfm_topology_info']} has no 'sub_inds'; re-download it")
    for key in ("mu_exp", "base_exp", "sig_exp"):
        if key not in exp_info:
            raise InstagError(f"{files['bfm_exp_info']} has no {key!r}; re-download it")
    sub = np.asarray(topo["sub_inds"]).reshape(-1).astype(np.int64)

    def per_vertex(mu: np.ndarray, pcs: np.ndarray, ev: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = pcs.shape[1]
        basis = pcs.reshape(-1, k).T.reshape(k, -1, 3)  # [K, V, 3]
        if sub.max(initial=0) >= basis.shape[1]:
            raise InstagError(
                f"{files['bfm_topology_info']} indexes vertex {sub.max()} but the model has {basis.shape[1]}"
            )
        return (
            mu.reshape(-1, 3)[sub].reshape(-1).astype(np.float32),
            basis[:, sub].reshape(k, -1).astype(np.float32),
            ev.reshape(-1).astype(np.float32),
        )

    mu_shape, b_shape, sig_shape = per_vertex(mat["shapeMU"], mat["shapePC"], mat["shapeEV"])
    mu_tex, b_tex, sig_tex = per_vertex(mat["texMU"], mat["texPC"], mat["texEV"])
    info = {
        "mu_shape": mu_shape,
        "b_shape": b_shape,
        "sig_shape": sig_shape,
        "mu_exp": np.asarray(exp_info["mu_exp"], np.float32).reshape(-1),
        "b_exp": np.asarray(exp_info["base_exp"], np.float32),
        "sig_exp": np.asarray(exp_info["sig_exp"], np.float32).reshape(-1),
        "mu_tex": mu_tex,
        "b_tex": b_tex,
        "sig_tex": sig_tex,
    }
    if info["b_exp"].shape[-1] != mu_shape.size or info["mu_exp"].size != mu_shape.size:
        raise InstagError(
            f"{files['bfm_exp_info']} has {info['b_exp'].shape[-1] // 3} vertices but topology_info selects "
            f"{mu_shape.size // 3}; the helper files do not belong together, re-download them"
        )
    if optional["bfm_keys_info"].is_file():
        keys = load_array_dict(optional["bfm_keys_info"])
        for key in KEY_KEYS:
            if key in keys:
                info[key] = np.asarray(keys[key]).astype(np.int64)
    if "tris" in topo:
        info["tris"] = np.asarray(topo["tris"]).astype(np.int32)
    elif optional["bfm_sub_mesh"].is_file():
        info["tris"] = _read_obj_triangles(optional["bfm_sub_mesh"])
    out = model_dir / "3DMM_info.npz"
    with atomic_path(out) as tmp:
        np.savez(tmp, **info)
    if upstream_npy:  # upstream's format, for upstream's own tracker (a pickled dict)
        with atomic_path(model_dir / "3DMM_info.npy") as tmp:
            np.save(tmp, {k: info[k] for k in MESH_KEYS}, allow_pickle=True)
    return out


# ------------------------------------------------------------------------------------------------
# face model


@dataclass
class FaceModel:
    """BFM geometry in tracker units; coefficients are in standard deviations."""

    mean: Tensor  # [V,3] centred mean shape (identity + expression means)
    id_basis: Tensor  # [Kid,V,3], already multiplied by sig_shape
    exp_basis: Tensor  # [Kexp,V,3], already multiplied by sig_exp
    keyinds: Tensor  # [68] long: vertex of each keypoint (jaw 0-7 and 9-16 are replaced by contours)
    left_contour: Tensor  # [8,C] long: candidate vertices of keypoints 0-7 (leftmost projection wins)
    right_contour: Tensor  # [8,C] long: candidate vertices of keypoints 9-16 (rightmost wins)
    rigid_ids: Tensor | None = None  # [R] long, vertices that move rigidly with the head
    tris: Tensor | None = None  # [T,3] long

    @classmethod
    def from_arrays(
        cls, info: dict[str, np.ndarray], id_dim: int = ID_DIM, exp_dim: int = EXP_DIM, source: str = "3DMM_info"
    ) -> FaceModel:
        missing = [
            k
            for k in (
                "mu_shape",
                "b_shape",
                "sig_shape",
                "mu_exp",
                "b_exp",
                "sig_exp",
                "keyinds",
                "left_contour",
                "right_contour",
            )
            if k not in info
        ]
        if missing:
            hint = (
                " (keys_info.npy was not beside convert_BFM.py: fetch it and convert again)"
                if "keyinds" in missing
                else ""
            )
            raise InstagError(f"{source} lacks {', '.join(missing)}{hint}")
        mean = (info["mu_shape"].reshape(-1) + info["mu_exp"].reshape(-1)).reshape(-1, 3).astype(np.float64)
        mean = mean - mean.mean(axis=0, keepdims=True)
        num_v = mean.shape[0]
        id_dim = min(id_dim, info["b_shape"].shape[0])
        exp_dim = min(exp_dim, info["b_exp"].shape[0])

        def basis(b: np.ndarray, sig: np.ndarray, k: int) -> Tensor:
            scaled = b[:k].reshape(k, num_v, 3) * sig.reshape(-1)[:k, None, None]
            return torch.from_numpy((scaled / UNIT_SCALE).astype(np.float32))

        def index(key: str) -> Tensor | None:
            return torch.from_numpy(np.asarray(info[key]).astype(np.int64)) if key in info else None

        model = cls(
            mean=torch.from_numpy((mean / UNIT_SCALE).astype(np.float32)),
            id_basis=basis(info["b_shape"], info["sig_shape"], id_dim),
            exp_basis=basis(info["b_exp"], info["sig_exp"], exp_dim),
            keyinds=index("keyinds").reshape(-1),
            left_contour=index("left_contour").reshape(8, -1),
            right_contour=index("right_contour").reshape(8, -1),
            rigid_ids=index("rigid_ids"),
            tris=index("tris"),
        )
        if model.keyinds.numel() != 68:
            raise InstagError(f"{source}: keyinds has {model.keyinds.numel()} entries, expected 68")
        return model

    @classmethod
    def load(cls, path: str | Path | None = None, **kwargs) -> FaceModel:
        """Load ``3DMM_info.npz`` (or upstream's ``3DMM_info.npy``, read without unpickling code)."""
        from instag.preprocess import weights

        found = weights.require("bfm_info", path)
        return cls.from_arrays(load_array_dict(found), source=str(found), **kwargs)

    @property
    def id_dim(self) -> int:
        return self.id_basis.shape[0]

    @property
    def exp_dim(self) -> int:
        return self.exp_basis.shape[0]

    def geometry(self, id_coef: Tensor, exp_coef: Tensor, vertices: Tensor | None = None) -> Tensor:
        """Head-frame vertices [N,V',3] for id_coef [1|N,Kid], exp_coef [N,Kexp] (``vertices`` picks V')."""
        mean, bid, bexp = self.mean, self.id_basis, self.exp_basis
        if vertices is not None:
            mean, bid, bexp = mean[vertices], bid[:, vertices], bexp[:, vertices]
        shape = mean + torch.einsum("nk,kvc->nvc", id_coef, bid)
        return shape + torch.einsum("nk,kvc->nvc", exp_coef, bexp)


def euler_to_rotation(euler: Tensor) -> Tensor:
    """Upstream's rotation for euler [N,3] = (θ, φ, ψ): Rx(θ)·Ry(φ)·Rz(-ψ), [N,3,3]."""
    c, s = torch.cos(euler), torch.sin(euler)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], -1).view(-1, 3, 3)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], -1).view(-1, 3, 3)
    rz = torch.stack([c[:, 2], s[:, 2], zero, -s[:, 2], c[:, 2], zero, zero, zero, one], -1).view(-1, 3, 3)
    return rx @ ry @ rz


def project(points_cam: Tensor, focal: Tensor | float, cx: float, cy: float) -> Tensor:
    """Upstream's projection of camera points [N,P,3] (looking down -z) to pixels [N,P,2]."""
    z = points_cam[..., 2]
    return torch.stack([-focal * points_cam[..., 0] / z + cx, focal * points_cam[..., 1] / z + cy], -1)


def camera_to_world(euler: Tensor, trans: Tensor) -> Tensor:
    """``transform_matrix`` of transforms_*.json for a track: [N,4,4] camera-to-world, OpenGL axes.

    Upstream's rule: rotation Rᵀ and translation -Rᵀ·trans/10 (tracker units /10 = head frame).
    """
    rot_t = euler_to_rotation(euler).transpose(1, 2)
    c2w = torch.eye(4, dtype=rot_t.dtype).repeat(euler.shape[0], 1, 1)
    c2w[:, :3, :3] = rot_t
    c2w[:, :3, 3] = -(rot_t @ (trans / 10.0).unsqueeze(-1)).squeeze(-1)
    return c2w


class _Keypoints:
    """The 68-keypoint part of a :class:`FaceModel`, with upstream's dynamic jaw contour."""

    def __init__(self, model: FaceModel):
        self.n_contour = model.left_contour.shape[1]
        vertices = torch.cat([model.keyinds, model.left_contour.reshape(-1), model.right_contour.reshape(-1)])
        self.mean = model.mean[vertices].reshape(1, -1)  # [1,P*3]
        self.id_basis = model.id_basis[:, vertices].reshape(model.id_dim, -1)  # [Kid,P*3]
        self.exp_basis = model.exp_basis[:, vertices].reshape(model.exp_dim, -1)  # [Kexp,P*3]

    def __call__(
        self, id_coef: Tensor, exp_coef: Tensor, euler: Tensor, trans: Tensor, focal, cx: float, cy: float
    ) -> tuple[Tensor, Tensor]:
        """(pixels [R,68,2], camera points [R,68,3]) for id_coef [G,Kid] shared by R/G consecutive rows,
        exp_coef [R,Kexp], euler and trans [R,3], focal float or [R,1]."""
        rows = exp_coef.shape[0]
        identity = (self.mean + id_coef @ self.id_basis).repeat_interleave(rows // id_coef.shape[0], 0)
        pts = (identity + exp_coef @ self.exp_basis).reshape(rows, -1, 3)
        cam = pts @ euler_to_rotation(euler).transpose(1, 2) + trans[:, None, :]
        pix = project(cam, focal, cx, cy)
        c = self.n_contour
        with torch.no_grad():  # which candidate is outermost: a discrete choice, as upstream
            offsets = torch.arange(8)[None] * c + 68
            pick_l = pix[:, 68 : 68 + 8 * c, 0].reshape(rows, 8, c).argmin(-1) + offsets
            pick_r = pix[:, 68 + 8 * c : 68 + 16 * c, 0].reshape(rows, 8, c).argmax(-1) + offsets + 8 * c
            order = torch.arange(68).repeat(rows, 1)
            order[:, 0:8] = pick_l
            order[:, 9:17] = pick_r
            gather = order[..., None]
        return pix.gather(1, gather.expand(-1, -1, 2)), cam.gather(1, gather.expand(-1, -1, 3))


# ------------------------------------------------------------------------------------------------
# tracker


@dataclass
class TrackSettings:
    """Iteration counts and weights of :func:`track_landmarks` (defaults suit 250-1000 frames)."""

    focal_grid: tuple[float, ...] = (600, 700, 800, 900, 1000, 1100, 1200, 1300, 1400)  # px at 512 px
    focal_frames: int = 16  # frames used by the focal search
    pose_iters: int = 300
    shape_iters: int = 600
    lr: float = 0.05
    id_reg: float = 0.5  # upstream's weights on mean(id²), mean(exp²)
    exp_reg: float = 0.4
    pose_smooth: float = 1e5  # mean squared second difference of camera-space keypoints (tracker units)
    exp_smooth: float = 1.0


def _initial_pose(model: FaceModel, target: Tensor, focal: Tensor, cx: float, cy: float) -> tuple[Tensor, Tensor]:
    """Frontal pose whose translation puts the mean keypoints over each frame's landmarks.

    target [R,68,2], focal [R] -> euler [R,3] (zeros), trans [R,3].
    """
    mean_kp = model.mean[model.keyinds]
    spread_model = (mean_kp[:, :2] - mean_kp[:, :2].mean(0)).norm(dim=-1).mean()
    centre = target.mean(1)
    spread_px = (target - centre[:, None]).norm(dim=-1).mean(1).clamp_min(1e-3)
    depth = focal * spread_model / spread_px
    trans = torch.stack([(centre[:, 0] - cx) * depth / focal, -(centre[:, 1] - cy) * depth / focal, -depth], -1)
    return torch.zeros_like(trans), trans


def _second_difference(x: Tensor) -> Tensor:
    """Second difference along dim 1 of x [G,n,...] (upstream's -0.5, 1, -0.5 kernel)."""
    return x[:, 1:-1] - 0.5 * (x[:, :-2] + x[:, 2:])


def _fit(
    model: FaceModel,
    kp: _Keypoints,
    target: Tensor,
    focals: Tensor,
    cx: float,
    cy: float,
    px_scale: float,
    settings: TrackSettings,
    smooth: bool,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Fit G independent hypotheses, one per focal length, to the same frames.

    target [n,68,2], focals [G] -> (landmark loss per hypothesis [G] in px², params with a
    leading G: id [G,Kid], exp [G,n,Kexp], euler [G,n,3], trans [G,n,3]). Hypotheses share no
    parameters, and Adam's steps do not depend on the loss scale, so fitting them together
    equals fitting them one by one.
    """
    g, n = focals.shape[0], target.shape[0]
    rows_target = target.repeat(g, 1, 1)  # [G*n,68,2]
    rows_focal = focals.repeat_interleave(n)  # [G*n]
    euler, trans = _initial_pose(model, rows_target, rows_focal, cx, cy)
    euler.requires_grad_(True)
    trans.requires_grad_(True)
    id_coef = torch.zeros(g, model.id_dim, requires_grad=True)
    exp_coef = torch.zeros(g * n, model.exp_dim, requires_grad=True)

    def landmark_loss() -> Tensor:  # [G]
        pix, _ = kp(id_coef, exp_coef, euler, trans, rows_focal[:, None], cx, cy)
        return (((pix - rows_target) / px_scale) ** 2).reshape(g, -1).mean(1)

    # a unit of translation moves the face further than a radian of rotation moves it: scale the steps
    pose_opt = torch.optim.Adam([{"params": [euler], "lr": settings.lr}, {"params": [trans], "lr": settings.lr * 4}])
    for _ in range(settings.pose_iters):
        pose_opt.zero_grad()
        landmark_loss().sum().backward()
        pose_opt.step()

    opt = torch.optim.Adam(
        [
            {"params": [euler], "lr": settings.lr * 0.4},
            {"params": [trans], "lr": settings.lr * 1.6},
            {"params": [id_coef, exp_coef], "lr": settings.lr * 2},
        ]
    )
    milestones = [int(settings.shape_iters * 0.6), int(settings.shape_iters * 0.85)]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, 0.2)
    for _ in range(settings.shape_iters):
        opt.zero_grad()
        loss = landmark_loss().sum()
        loss = (
            loss
            + settings.id_reg * (id_coef**2).mean(1).sum()
            + settings.exp_reg * (exp_coef**2).reshape(g, -1).mean(1).sum()
        )
        if smooth and n >= 3:
            shape = (kp.mean + id_coef @ kp.id_basis)[:, : 68 * 3].reshape(g, 68, 3)  # expression-free keypoints
            rot = euler_to_rotation(euler).reshape(g, n, 3, 3)
            cam = torch.einsum("gnij,gpj->gnpi", rot, shape) + trans.reshape(g, n, 1, 3)
            loss = loss + settings.pose_smooth * (_second_difference(cam) ** 2).reshape(g, -1).mean(1).sum()
            loss = (
                loss
                + settings.exp_smooth
                * (_second_difference(exp_coef.reshape(g, n, -1)) ** 2).reshape(g, -1).mean(1).sum()
            )
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        final = landmark_loss() * px_scale**2
    params = {
        "id": id_coef.detach(),
        "exp": exp_coef.detach().reshape(g, n, -1),
        "euler": euler.detach().reshape(g, n, 3),
        "trans": trans.detach().reshape(g, n, 3),
    }
    return final, params


def _search_focal(
    model: FaceModel, kp: _Keypoints, target: Tensor, width: int, height: int, settings: TrackSettings
) -> float:
    """Upstream's focal grid (scaled to the image size) on a few frames, refined by a parabola."""
    n = target.shape[0]
    frames = torch.linspace(0, n - 1, min(n, settings.focal_frames)).round().long().unique()
    scale = max(width, height) / 512.0
    grid = [f * scale for f in settings.focal_grid]
    losses, _ = _fit(
        model, kp, target[frames], torch.tensor(grid), width / 2.0, height / 2.0, scale, settings, smooth=False
    )
    losses = losses.tolist()
    best = int(np.argmin(losses))
    if 0 < best < len(grid) - 1:
        (f0, f1, f2), (l0, l1, l2) = grid[best - 1 : best + 2], losses[best - 1 : best + 2]
        denom = (f0 - f1) * (f0 - f2) * (f1 - f2)
        a = (f2 * (l1 - l0) + f1 * (l0 - l2) + f0 * (l2 - l1)) / denom
        b = (f2 * f2 * (l0 - l1) + f1 * f1 * (l2 - l0) + f0 * f0 * (l1 - l2)) / denom
        if a > 0:
            return float(min(max(-b / (2 * a), f0), f2))
    return float(grid[best])


def track_landmarks(
    model: FaceModel,
    landmarks: np.ndarray | Tensor,
    width: int,
    height: int,
    *,
    focal: float | None = None,
    settings: TrackSettings | None = None,
) -> dict[str, Tensor]:
    """Fit the BFM to 68-point landmarks [N,68,2] (x=column, y=row px) of a W×H clip.

    Returns upstream's ``track_params.pt`` content: id [1,Kid], exp [N,Kexp], euler [N,3]
    (radians), trans [N,3] (tracker units), focal [1] (px); float32 CPU tensors.
    """
    settings = settings or TrackSettings()
    target = torch.as_tensor(np.asarray(landmarks), dtype=torch.float32)
    if target.ndim != 3 or target.shape[1:] != (68, 2) or target.shape[0] == 0:
        raise InstagError(f"BFM tracking needs landmarks [N,68,2]; got {tuple(target.shape)}")
    finite = torch.isfinite(target).reshape(target.shape[0], -1).all(1)
    if not finite.all():
        bad = torch.nonzero(~finite).flatten().tolist()
        raise InstagError(f"landmarks of frames {bad[:10]} are not finite; re-run the landmark step")
    kp = _Keypoints(model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny steps: threading costs more than it gains
    try:
        with torch.enable_grad():
            if focal is None:
                focal = _search_focal(model, kp, target, width, height, settings)
            _, params = _fit(
                model,
                kp,
                target,
                torch.tensor([float(focal)]),
                width / 2.0,
                height / 2.0,
                max(width, height) / 512.0,
                settings,
                smooth=True,
            )
    finally:
        torch.set_num_threads(threads)
    track = {key: value[0] for key, value in params.items()}
    track["id"] = params["id"][:1]
    track["focal"] = torch.tensor([float(focal)])
    return {k: v.float().contiguous() for k, v in track.items()}


def landmark_error(
    model: FaceModel, track: dict[str, Tensor], landmarks: np.ndarray | Tensor, width: int, height: int
) -> Tensor:
    """Per-frame mean keypoint distance in px [N] of a track against landmarks [N,68,2]."""
    target = torch.as_tensor(np.asarray(landmarks), dtype=torch.float32)
    with torch.no_grad():
        pix, _ = _Keypoints(model)(
            track["id"], track["exp"], track["euler"], track["trans"], track["focal"], width / 2.0, height / 2.0
        )
    return (pix - target).norm(dim=-1).mean(-1)


def save_track_params(path: str | Path, track: dict[str, Tensor]) -> None:
    """Write ``track_params.pt`` atomically: a dict of tensors (loads with weights_only=True)."""
    from instag.io.atomic import save_torch

    save_torch(path, {k: v.detach().cpu().contiguous() for k, v in track.items()})


def read_lms(path: Path) -> np.ndarray:
    """One upstream ``.lms`` file: 68 rows of ``x y`` -> float32 [68,2]."""
    try:
        arr = np.loadtxt(path, dtype=np.float32).reshape(-1, 2)
    except (OSError, ValueError) as err:
        raise InstagError(f"cannot read landmarks {path} ({err}); re-run the landmark step") from err
    if arr.shape != (68, 2):
        raise InstagError(f"{path} has {arr.shape[0]} landmarks, expected 68; re-run the landmark step")
    return arr


def track_with_bfm(
    layout,
    landmarks68: np.ndarray | None = None,
    *,
    model_path: str | Path | None = None,
    focal: float | None = None,
    settings: TrackSettings | None = None,
    write: bool = True,
) -> dict[str, Tensor]:
    """Pipeline hook: BFM-track ``layout`` (a :class:`DatasetLayout`) and write ``track_params.pt``.

    ``landmarks68`` [N,68,2] defaults to the ``ori_imgs/<i>.lms`` files; the image size comes
    from ``ori_imgs/0.jpg``. Raises :class:`InstagError` naming the missing model file.
    """
    import cv2

    model = FaceModel.load(model_path)
    first = cv2.imread(str(layout.ori_image(0)))
    if first is None:
        raise InstagError(f"cannot read {layout.ori_image(0)}; run the frame step of process.py first")
    height, width = first.shape[:2]
    if landmarks68 is None:
        n = layout.num_frames()
        missing = [i for i in range(n) if not layout.lms(i).is_file()]
        if n == 0 or missing:
            raise InstagError(
                f"missing landmark files {[str(layout.lms(i)) for i in missing[:3]]} (frames {missing[:10]}); "
                "run the landmark step of process.py first"
            )
        landmarks68 = np.stack([read_lms(layout.lms(i)) for i in range(n)])
    track = track_landmarks(model, landmarks68, width, height, focal=focal, settings=settings)
    if write:
        save_track_params(layout.track_params, track)
    return track


# ------------------------------------------------------------------------------------------------
# commands


@dataclass
class ConvertBFMConfig:
    """Convert the Basel Face Model 2009 .mat into 3DMM/3DMM_info.npz (run inside data_utils/face_tracking)."""

    model_dir: str = field(
        default="3DMM", metadata={"help": "folder holding 01_MorphableModel.mat and AD-NeRF's helper files"}
    )
    upstream_npy: bool = field(
        default=False, metadata={"help": "also write upstream's pickled 3DMM_info.npy for upstream's tools"}
    )


def convert_main(argv: list[str] | None = None) -> int:
    from instag.config import parse

    cfg = parse(ConvertBFMConfig, argv, prog="convert_BFM.py")
    out = convert_bfm(cfg.model_dir, upstream_npy=cfg.upstream_npy)
    print(f"wrote {out}")
    return 0


@dataclass
class TrackBFMConfig:
    """Track data/<ID>/ with the BFM (landmarks only) and write track_params.pt."""

    path: str = field(metadata={"help": "processed dataset folder data/<ID>"})
    model: str | None = field(default=None, metadata={"help": "3DMM_info.npz (default data_utils/face_tracking/3DMM/)"})
    focal: float | None = field(default=None, metadata={"above": 0, "help": "fixed focal length in px (default: searched)"})


def main(argv: list[str] | None = None) -> int:
    from instag.config import parse
    from instag.data.format import DatasetLayout
    from instag.preprocess.weights import positional_as_flag

    cfg = parse(TrackBFMConfig, positional_as_flag(argv, "path"), prog="instag track-bfm")
    layout = DatasetLayout.of(cfg.path)
    track = track_with_bfm(layout, model_path=cfg.model, focal=cfg.focal)
    n = track["exp"].shape[0]
    deg = torch.rad2deg(track["euler"])
    jitter = (deg[1:] - deg[:-1]).abs().mean().item() if n > 1 else 0.0
    print(
        f"wrote {layout.track_params}: {n} frames, focal {track['focal'].item():.1f} px, "
        f"mean frame-to-frame rotation change {jitter:.3f} deg"
    )
    print("regenerate transforms_*.json from it with the transforms step of process.py (or split.py)")
    return 0


__all__ = [
    "FaceModel",
    "TrackSettings",
    "camera_to_world",
    "convert_bfm",
    "euler_to_rotation",
    "landmark_error",
    "load_array_dict",
    "project",
    "save_track_params",
    "track_landmarks",
    "track_with_bfm",
]
