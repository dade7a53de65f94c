"""Head tracking by landmark bundle adjustment, and upstream's ``transforms_*.json``.

One per-identity 3-D landmark shape, one focal length and a rigid pose per frame are fitted
jointly to the 2-D MediaPipe landmarks of all frames, with a temporal smoothness term on the
head's motion (second differences of the stable points in camera space). The shape starts
from the clip's mean MediaPipe shape, put in DESIGN's head frame: x toward image right, y up,
face toward +z, centred, 0.18 units between the cheek landmarks 234 and 454 (head about 0.2
wide), so the camera ends up about 0.7 units away.

Camera conventions:
* fitting uses OpenCV axes (x right, y down, z forward): p_cv = R_cv p_head + t_cv,
  u = f x/z + cx, v = f y/z + cy, cx = W/2, cy = H/2;
* ``track_params.pt`` stores upstream's: OpenGL axes (p_gl = diag(1,-1,-1) p_cv),
  ``euler`` [N,3] radians with R = Rx(e0) Ry(e1) Rz(-e2) (as the BFM tracker), ``trans``
  [N,3] in upstream's tracker units (10 x head units), ``focal`` [1] px, plus ``shape``
  [478,3] (the fitted landmark shape, head units), ``image_size`` [2] (W, H) and
  ``error_px`` [N] (landmark reprojection error);
* ``transform_matrix`` = camera-to-world in OpenGL axes: [[R_gl^T, -R_gl^T t_gl], [0, 1]].

:func:`pnp_poses` solves every frame on its own (same shape and focal, no smoothness); the
jitter report compares the two.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from instag.data.format import FPS, VALIDATION_SECONDS, DatasetLayout
from instag.errors import InstagError
from instag.io.atomic import save_torch, write_json
from instag.preprocess.au import align_to_mean
from instag.preprocess.bfm import camera_to_world, euler_to_rotation
from instag.preprocess.mesh import CHEEK_LEFT, CHEEK_RIGHT, CHIN, FOREHEAD, INNER_LIPS, OUTER_LIPS, STABLE_POINTS

FACE_WIDTH = 0.18  # head units between landmarks 234 and 454
CAMERA_DISTANCE = 0.7  # head units: the focal prior puts the camera about here
TRANSLATION_SCALE = 10.0  # upstream's tracker units per head unit
GL_FROM_CV = np.diag([1.0, -1.0, -1.0])


def canonical_shape(landmarks: np.ndarray) -> np.ndarray:
    """Mean MediaPipe shape of the clip in the head frame, float32 [478,3]."""
    a = align_to_mean(landmarks).mean(0)  # x right, y down, z away; inter-ocular units
    head = a * np.array([1.0, -1.0, -1.0])  # y up, z toward the camera
    x_axis = head[CHEEK_RIGHT] - head[CHEEK_LEFT]
    x_axis /= np.linalg.norm(x_axis)
    y_axis = head[FOREHEAD] - head[CHIN]
    y_axis -= x_axis * (y_axis @ x_axis)
    y_axis /= np.linalg.norm(y_axis)
    z_axis = np.cross(x_axis, y_axis)
    rot = np.stack([x_axis, y_axis, z_axis])  # rows: new axes
    head = head @ rot.T
    head -= head[:468].mean(0)
    head *= FACE_WIDTH / np.linalg.norm(head[CHEEK_RIGHT] - head[CHEEK_LEFT])
    return head.astype(np.float32)


def point_weights() -> np.ndarray:
    """Per-landmark weight of the rigid fit: stable points count most, lips and irises least."""
    w = np.full(478, 0.3, dtype=np.float32)
    w[STABLE_POINTS] = 1.0
    w[np.concatenate([INNER_LIPS, OUTER_LIPS])] = 0.05
    w[468:] = 0.0
    return w


def rotvec_to_matrix(rv: torch.Tensor) -> torch.Tensor:
    """Rodrigues: axis-angle [...,3] -> rotation matrices [...,3,3]."""
    theta = rv.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    k = rv / theta
    kx, ky, kz = k.unbind(-1)
    zero = torch.zeros_like(kx)
    kmat = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], -1).reshape(*rv.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=rv.dtype).expand_as(kmat)
    s, c = torch.sin(theta)[..., None], torch.cos(theta)[..., None]
    return eye + s * kmat + (1 - c) * (kmat @ kmat)


def pnp_poses(shape: np.ndarray, landmarks: np.ndarray, focal: float, width: int, height: int,
              init: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame PnP of the 2-D landmarks: (rotvec_cv [N,3], t_cv [N,3])."""
    k = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=np.float64)
    obj = shape[:468].astype(np.float64)
    rvecs, tvecs = [], []
    for i, lm in enumerate(landmarks):
        img = lm[:468, :2].astype(np.float64)
        if init is not None:
            ok, rv, tv = cv2.solvePnP(obj, img, k, None, init[0][i].reshape(3, 1).copy(), init[1][i].reshape(3, 1).copy(),
                                      useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
        else:
            ok, rv, tv = cv2.solvePnP(obj, img, k, None, flags=cv2.SOLVEPNP_SQPNP)
            if ok:
                rv, tv = cv2.solvePnPRefineLM(obj, img, k, None, rv, tv)
        if not ok:
            raise InstagError(f"frame {i}: the head pose could not be solved from its landmarks; check the debug overlays")
        rvecs.append(rv.ravel())
        tvecs.append(tv.ravel())
    return np.asarray(rvecs), np.asarray(tvecs)


def fit(landmarks: np.ndarray, width: int, height: int, iterations: int = 300, smooth: float = 3.0) -> dict[str, np.ndarray]:
    """Bundle-adjust shape, focal and poses to landmarks [N,478,3] of W x H frames.

    Returns numpy arrays: shape [478,3] (head units), focal (), rotvec_cv [N,3], t_cv [N,3],
    error_px [N] (weighted RMS reprojection error per frame).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small dense problem: one thread is fastest and leaves a core free
    try:
        return _fit(landmarks, width, height, iterations, smooth)
    finally:
        torch.set_num_threads(threads)


def _fit(landmarks: np.ndarray, width: int, height: int, iterations: int, smooth: float) -> dict[str, np.ndarray]:
    n = len(landmarks)
    shape0 = canonical_shape(landmarks)
    face_px = float(np.median(np.linalg.norm(landmarks[:, CHEEK_RIGHT, :2] - landmarks[:, CHEEK_LEFT, :2], axis=-1)))
    focal0 = CAMERA_DISTANCE * face_px / FACE_WIDTH
    rv0, t0 = pnp_poses(shape0, landmarks, focal0, width, height)

    torch.manual_seed(0)
    dt = torch.float64
    target = torch.as_tensor(landmarks[:, :, :2], dtype=dt)
    weights = torch.as_tensor(point_weights(), dtype=dt)
    shape_init = torch.as_tensor(shape0, dtype=dt)
    shape = torch.nn.Parameter(shape_init.clone())
    log_f = torch.nn.Parameter(torch.tensor(math.log(focal0), dtype=dt))
    rv = torch.nn.Parameter(torch.as_tensor(rv0, dtype=dt))
    tr = torch.nn.Parameter(torch.as_tensor(t0, dtype=dt))
    centre = torch.tensor([width / 2, height / 2], dtype=dt)
    stable = torch.as_tensor(STABLE_POINTS)
    scale_px = face_px / 10.0  # residuals in tenths of a face width

    def project(shape_t, rv_t, tr_t, f):
        cam = torch.einsum("nij,kj->nki", rotvec_to_matrix(rv_t), shape_t) + tr_t[:, None, :]
        return f * cam[..., :2] / cam[..., 2:3].clamp_min(1e-4) + centre, cam

    opt = torch.optim.Adam([{"params": [rv], "lr": 2e-3}, {"params": [tr], "lr": 2e-3},
                            {"params": [shape], "lr": 5e-4}, {"params": [log_f], "lr": 5e-3}])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations, eta_min=1e-5)
    wsum = weights.sum()
    for _ in range(iterations):
        opt.zero_grad()
        f = log_f.exp()
        uv, cam = project(shape, rv, tr, f)
        res = ((uv - target) / scale_px).square().sum(-1)
        data = (res * weights).sum(-1) / wsum
        loss = data.mean()
        if n >= 3:
            anchors = cam[:, stable]
            acc = anchors[2:] - 2 * anchors[1:-1] + anchors[:-2]
            acc_px = f * acc / anchors[1:-1, :, 2:3] / scale_px
            loss = loss + smooth * acc_px.square().sum(-1).mean()
        loss = loss + 1e-2 * ((shape - shape_init) / 0.005).square().sum(-1).mean()
        loss = loss + 1e-3 * (log_f - math.log(focal0)).square()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        uv, _ = project(shape, rv, tr, log_f.exp())
        err = (((uv - target).square().sum(-1) * weights).sum(-1) / wsum).sqrt()
    # scaling shape and translations together leaves every projection unchanged: restore the units
    shape_out = shape.detach().numpy()
    k = FACE_WIDTH / float(np.linalg.norm(shape_out[CHEEK_RIGHT] - shape_out[CHEEK_LEFT]))
    return {"shape": (shape_out * k).astype(np.float32), "focal": float(log_f.detach().exp()),
            "rotvec_cv": rv.detach().numpy(), "t_cv": tr.detach().numpy() * k, "error_px": err.numpy().astype(np.float32)}


def euler_from_matrix(r: np.ndarray) -> np.ndarray:
    """Upstream's Euler angles [...,3] of rotations [...,3,3]: R = Rx(e0) Ry(e1) Rz(-e2)
    (the convention of :func:`instag.preprocess.bfm.euler_to_rotation`)."""
    beta = np.arcsin(np.clip(r[..., 0, 2], -1, 1))
    alpha = np.arctan2(-r[..., 1, 2], r[..., 2, 2])
    gamma = np.arctan2(-r[..., 0, 1], r[..., 0, 0])
    return np.stack([alpha, beta, -gamma], -1)


def matrix_from_euler(e: np.ndarray) -> np.ndarray:
    """Inverse of :func:`euler_from_matrix`: [N,3] -> [N,3,3]."""
    return euler_to_rotation(torch.as_tensor(e, dtype=torch.float64).reshape(-1, 3)).numpy()


def cv_poses_to_gl(rotvec_cv: np.ndarray, t_cv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R_gl [N,3,3], t_gl [N,3]) from OpenCV axis-angle poses."""
    r_cv = rotvec_to_matrix(torch.as_tensor(rotvec_cv, dtype=torch.float64)).numpy()
    return GL_FROM_CV @ r_cv, t_cv @ GL_FROM_CV.T


def _angle_deg(rel: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((np.trace(rel, axis1=-2, axis2=-1) - 1) / 2, -1, 1)))


def jitter(rotvec_cv: np.ndarray, t_cv: np.ndarray) -> dict[str, float]:
    """Frame-to-frame pose change: mean rotation step (deg) and translation step (head units),
    and the same for second differences (acceleration: the part that is jitter, not motion).

    Rotations are compared as matrices (relative rotations), never as axis-angle vectors,
    which wrap around near the half-turn that a frontal OpenCV pose is."""
    r = rotvec_to_matrix(torch.as_tensor(rotvec_cv, dtype=torch.float64)).numpy()
    step = np.einsum("nij,nkj->nik", r[1:], r[:-1])  # R_{i+1} R_i^T
    acc = np.einsum("nij,nkj->nik", step[1:], step[:-1])  # change of the step
    t = np.asarray(t_cv, dtype=np.float64)
    acc_t = np.linalg.norm(t[2:] - 2 * t[1:-1] + t[:-2], axis=-1)

    def mean(x: np.ndarray) -> float:
        return float(x.mean()) if x.size else 0.0

    return {"rot_step_deg": mean(_angle_deg(step)), "trans_step": mean(np.linalg.norm(np.diff(t, axis=0), axis=-1)),
            "rot_acc_deg": mean(_angle_deg(acc)), "trans_acc": mean(acc_t)}


def load(layout: DatasetLayout) -> dict[str, torch.Tensor]:
    """``track_params.pt`` as a dict of tensors (loaded without executing code)."""
    if not layout.track_params.exists():
        raise InstagError(f"{layout.track_params}: missing; run the tracking step (--task 8)")
    try:
        params = torch.load(layout.track_params, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused (not plain tensors), truncated zip, ...
        raise InstagError(f"{layout.track_params}: not a readable tensor dict ({type(err).__name__}); it is corrupt or "
                          "holds code; rerun the tracking step (--task 8)") from err
    if not isinstance(params, dict) or not {"euler", "trans", "focal"} <= set(params):
        raise InstagError(f"{layout.track_params}: lacks euler / trans / focal; rerun the tracking step (--task 8)")
    return params


def head_to_camera_cv(params: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """(R_cv [N,3,3], t_cv [N,3] head units) from stored ``track_params``."""
    r_gl = matrix_from_euler(params["euler"].double().numpy())
    t_gl = params["trans"].double().numpy() / TRANSLATION_SCALE
    return GL_FROM_CV @ r_gl, t_gl @ GL_FROM_CV.T


def run(layout: DatasetLayout, landmarks: np.ndarray, width: int, height: int, log=print, smooth: float = 3.0) -> dict:
    """Fit, write ``track_params.pt``; return the jitter report (tracker vs per-frame PnP)."""
    result = fit(landmarks, width, height, smooth=smooth)
    r_gl, t_gl = cv_poses_to_gl(result["rotvec_cv"], result["t_cv"])
    params = {
        "euler": torch.as_tensor(euler_from_matrix(r_gl), dtype=torch.float32),
        "trans": torch.as_tensor(t_gl * TRANSLATION_SCALE, dtype=torch.float32),
        "focal": torch.tensor([result["focal"]], dtype=torch.float32),
        "shape": torch.as_tensor(result["shape"]),
        "image_size": torch.tensor([width, height], dtype=torch.int64),
        "error_px": torch.as_tensor(result["error_px"]),
    }
    save_torch(layout.track_params, params)
    pnp = pnp_poses(result["shape"], landmarks, result["focal"], width, height,
                    init=(result["rotvec_cv"], result["t_cv"]))
    report = {"tracker": jitter(result["rotvec_cv"], result["t_cv"]), "pnp": jitter(*pnp),
              "focal": result["focal"], "camera_distance": float(np.linalg.norm(result["t_cv"], axis=-1).mean()),
              "reprojection_px": float(result["error_px"].mean())}
    log(f"tracking: focal {result['focal']:.0f} px, camera {report['camera_distance']:.2f} units away, "
        f"landmark error {report['reprojection_px']:.2f} px; rotation jitter {report['tracker']['rot_acc_deg']:.3f} deg "
        f"(per-frame PnP {report['pnp']['rot_acc_deg']:.3f})")
    return report


def split_indices(num_frames: int, rule: str = "upstream", val_fraction: float = 0.2) -> tuple[list[int], list[int]]:
    """Train / val frame indices.

    ``"process"``: upstream process.py's 10/11 vs 1/11; ``"upstream"``: split.py's rule, the last
    12 s + 1 frame are validation; ``"fraction"``: the last ``val_fraction`` of the frames.
    """
    if rule == "process":
        cut = num_frames * 10 // 11
    elif rule == "upstream":
        cut = num_frames - FPS * VALIDATION_SECONDS - 1
        if cut < FPS:
            raise InstagError(f"the clip has {num_frames} frames ({num_frames / FPS:.1f} s): keeping the last "
                              f"{VALIDATION_SECONDS} s for evaluation needs more than {VALIDATION_SECONDS + 1} s; "
                              "use a longer video, or --val_fraction 0.2 to keep a share of a short clip")
    elif rule == "fraction":
        if not 0.0 < val_fraction < 1.0:
            raise InstagError(f"--val_fraction must be between 0 and 1, got {val_fraction}")
        cut = int(round(num_frames * (1.0 - val_fraction)))
        if cut < 2 or num_frames - cut < 2:
            raise InstagError(f"the clip has only {num_frames} frames; too few to split with --val_fraction {val_fraction}")
    else:
        raise InstagError(f"unknown split rule {rule!r}")
    return list(range(cut)), list(range(cut, num_frames))


def write_transforms(layout: DatasetLayout, rule: str = "process", val_fraction: float = 0.2) -> tuple[int, int]:
    """Write ``transforms_train.json`` / ``transforms_val.json`` from ``track_params.pt``."""
    params = load(layout)
    width, height = (int(v) for v in params["image_size"]) if "image_size" in params else _image_size(layout)
    c2w = camera_to_world(params["euler"].double(), params["trans"].double()).numpy()
    focal = float(params["focal"].reshape(-1)[0])
    train, val = split_indices(len(c2w), rule, val_fraction)
    for split, ids in (("train", train), ("val", val)):
        frames = [{"img_id": i, "aud_id": i, "transform_matrix": c2w[i].round(8).tolist()} for i in ids]
        write_json(layout.transforms(split), {"focal_len": focal, "cx": width / 2, "cy": height / 2, "frames": frames})
    return len(train), len(val)


def _image_size(layout: DatasetLayout) -> tuple[int, int]:
    img = cv2.imread(str(layout.ori_image(0)))
    if img is None:
        raise InstagError(f"{layout.ori_image(0)}: missing; the frames are needed for the image size")
    return img.shape[1], img.shape[0]
