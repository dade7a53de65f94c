"""Head pose at synthesis: where it comes from (``--pose``) and the gestures of a performance on top of it.

A pose is the head's rigid transform into the camera in OpenCV axes, ``p_cam = R p_head + t``: what a training
frame's :class:`instag.render.Camera` holds as ``world_to_camera``, since cameras move around a fixed head
(DESIGN's head frame: y up, face toward +z). Turning the head by ``G`` in its own frame about a pivot ``c`` is
``R' = R G``, ``t' = t + R (c − G c)``.

``--pose``:

- ``pingpong`` (default): the training poses forward then backward; torso, background and default AUs follow the
  same frames, and nothing jumps where the loop turns.
- ``train``: the training poses forward, looped between a frame near the start and one near the end chosen to
  have the closest poses, with a :data:`CROSSFADE_S` crossfade of the pose; the torso image switches once per
  loop, in the middle of the crossfade.
- ``still``: the training frame nearest the mean pose, held, with its torso.
- FILE (a processed clip folder of the same person, a ``track_params.pt``, or a pose csv): the file's motion
  drives the head: its rotations relative to its own mean pose (in the head frame) and its translations relative
  to its mean are applied to the training clip's mean pose; a file shorter than the audio plays ping-pong. A csv
  holds OpenFace's ``pose_Rx, pose_Ry, pose_Rz`` (radians) and ``pose_Tx, pose_Ty, pose_Tz`` (mm, optional), or
  ``pitch, yaw, roll`` in degrees from the rest pose (pitch + = chin down, yaw + = face toward image right,
  roll + = head top toward image left) with optional ``x, y, z`` offsets in head units; one row per frame.

Gestures (``nod``: pitch, ``shake``: yaw, ``tilt``: roll) turn the head about :data:`NECK_PIVOT`; every gesture
curve starts and ends at zero with zero speed, so it joins the base pose without a jump.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from instag.data.format import FPS, DatasetLayout
from instag.errors import InstagError
from instag.infer.performance import GESTURES, GestureCue, smoothstep

CROSSFADE_S = 0.5
NECK_PIVOT = np.array([0.0, -0.04, -0.04])  # head units: about the top of the spine, below and behind the centre
MM_PER_HEAD_UNIT = 750.0  # OpenFace translations (mm) -> head units (cheek to cheek 0.18 units ~ 135 mm)
_AXES = {"pitch": 0, "yaw": 1, "roll": 2}
_FLIP = np.diag([1.0, -1.0, -1.0])  # OpenFace's head frame (y down, face toward -z) <-> ours


def pingpong(k, n: int):
    """Index into n frames of the k-th frame of a forward-backward loop (0,1,..,n-1,n-2,..,1,0,1,..); k int or array."""
    if n <= 1:
        return k * 0
    period = 2 * n - 2
    j = k % period
    return np.where(j < n, j, period - j) if isinstance(j, np.ndarray) else (j if j < n else period - j)


# ---------------------------------------------------------------------------------------- rotations
def axis_rotations(angles_deg: np.ndarray) -> np.ndarray:
    """[T,3] (pitch, yaw, roll) degrees -> Rx(pitch) Ry(yaw) Rz(roll) [T,3,3]."""
    a = np.radians(np.asarray(angles_deg, np.float64).reshape(-1, 3))
    c, s = np.cos(a), np.sin(a)
    one, zero = np.ones(len(a)), np.zeros(len(a))
    rx = np.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], -1).reshape(-1, 3, 3)
    ry = np.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], -1).reshape(-1, 3, 3)
    rz = np.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], -1).reshape(-1, 3, 3)
    return rx @ ry @ rz


def project_rotation(m: np.ndarray) -> np.ndarray:
    """Nearest rotation(s) to matrices [...,3,3]."""
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    u = u.copy()
    u[..., :, 2] *= d[..., None]
    return u @ vt


def mean_rotation(rots: np.ndarray) -> np.ndarray:
    """Chordal mean of rotations [N,3,3]."""
    return project_rotation(np.asarray(rots, np.float64).sum(0))


def rotation_angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle of the rotation between ``a`` and ``b`` ([...,3,3] each), degrees."""
    rel = np.einsum("...ji,...jk->...ik", a, b)
    skew = np.stack([rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0], rel[..., 1, 0] - rel[..., 0, 1]], -1)
    return np.degrees(np.arctan2(np.linalg.norm(skew, axis=-1) / 2, (np.trace(rel, axis1=-2, axis2=-1) - 1) / 2))


def poses_of(cameras) -> tuple[np.ndarray, np.ndarray]:
    """(R [n,3,3], t [n,3]) float64 of :class:`instag.render.Camera` s."""
    w2c = np.stack([c.world_to_camera.detach().cpu().double().numpy() for c in cameras])
    return w2c[:, :3, :3], w2c[:, :3, 3]


def cameras_with_poses(cameras, rots: np.ndarray, trans: np.ndarray) -> list:
    """Copies of ``cameras`` (intrinsics kept) with poses (R [T,3,3], t [T,3])."""
    import torch

    out = []
    for cam, r, t in zip(cameras, rots, trans):
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = r, t
        out.append(replace(cam, world_to_camera=torch.from_numpy(w2c).to(cam.world_to_camera.dtype)))
    return out


# ---------------------------------------------------------------------------------------- pose files
@dataclass
class PoseFile:
    """Head poses read from a file: (R [M,3,3], t [M,3]) in OpenCV camera axes, or with ``deviations`` the head-frame
    rotations and translation offsets from the rest pose themselves (a csv of angles)."""

    rots: np.ndarray
    trans: np.ndarray
    deviations: bool = False
    source: str = ""

    def motion(self) -> tuple[np.ndarray, np.ndarray]:
        """Head-frame rotations D [M,3,3] and camera-frame offsets [M,3] relative to the file's mean pose."""
        if self.deviations:
            return self.rots, self.trans
        mean = mean_rotation(self.rots)
        return np.einsum("ji,njk->nik", mean, self.rots), self.trans - self.trans.mean(0)


def load_pose_file(path: str | Path) -> PoseFile:
    """A pose driver: a processed clip folder, a ``track_params.pt`` or a pose csv (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        return _clip_poses(DatasetLayout.of(path))
    if path.suffix.lower() == ".pt":
        return _track_params_poses(path)
    if path.suffix.lower() == ".csv":
        return _csv_poses(path)
    raise InstagError(f"--pose {path}: not a clip folder, track_params.pt or .csv; give one of those, or pingpong, "
                      "train, still")


def _clip_poses(layout: DatasetLayout) -> PoseFile:
    from instag.data.cameras import OPENGL_TO_OPENCV, read_transforms

    frames = []
    for split in ("train", "val"):
        if layout.transforms(split).exists():
            frames += read_transforms(layout.transforms(split))["frames"]
    if not frames:
        if layout.track_params.exists():
            return _track_params_poses(layout.track_params)
        raise InstagError(f"--pose {layout.root}: holds neither transforms_train.json nor track_params.pt; "
                          "process that clip first (instag process)")
    try:
        frames = sorted(frames, key=lambda f: int(f["img_id"]))
        c2w = np.stack([np.asarray(f["transform_matrix"], np.float64).reshape(4, 4) for f in frames]) @ OPENGL_TO_OPENCV
        w2c = np.linalg.inv(c2w)
    except (KeyError, ValueError, TypeError) as err:
        raise InstagError(f"--pose {layout.root}: a malformed frame in its transforms ({err}); re-run its preprocessing") from err
    return PoseFile(w2c[:, :3, :3], w2c[:, :3, 3], source=str(layout.root))


def _track_params_poses(path: Path) -> PoseFile:
    from instag.io.safe_load import load_torch
    from instag.preprocess.tracking import head_to_camera_cv

    params = load_torch(path, "give a track_params.pt written by instag process or upstream's tracker")
    if not isinstance(params, dict) or not {"euler", "trans"} <= set(params):
        raise InstagError(f"--pose {path}: lacks euler / trans; give a track_params.pt of a processed clip")
    rots, trans = head_to_camera_cv(params)
    return PoseFile(rots, trans, source=str(path))


def _csv_poses(path: Path) -> PoseFile:
    from instag.preprocess.au import read_au_csv

    table = read_au_csv(path, required=())
    if {"pose_Rx", "pose_Ry", "pose_Rz"} <= set(table):
        rx, ry, rz = (np.degrees(table[k]) for k in ("pose_Rx", "pose_Ry", "pose_Rz"))
        rots = _FLIP @ axis_rotations(np.stack([rx, ry, rz], 1)) @ _FLIP  # OpenFace's head frame -> ours
        trans = (np.stack([table[k] for k in ("pose_Tx", "pose_Ty", "pose_Tz")], 1) / MM_PER_HEAD_UNIT
                 if {"pose_Tx", "pose_Ty", "pose_Tz"} <= set(table) else np.zeros((len(rx), 3)))
        return PoseFile(rots, trans, source=str(path))
    if {"pitch", "yaw", "roll"} <= set(table):
        angles = np.stack([table["pitch"], table["yaw"], table["roll"]], 1)
        offsets = np.stack([table.get(k, np.zeros(len(angles))) for k in ("x", "y", "z")], 1)
        if np.abs(angles).max(initial=0) > 90 or np.abs(offsets).max(initial=0) > 1:
            raise InstagError(f"--pose {path}: angles beyond 90 degrees or offsets beyond 1 head unit; pitch, yaw and "
                              "roll are degrees from the rest pose, x, y, z head units")
        return PoseFile(axis_rotations(angles), offsets, deviations=True, source=str(path))
    raise InstagError(f"--pose {path}: has neither OpenFace's pose_Rx, pose_Ry, pose_Rz columns nor pitch, yaw, roll "
                      "(degrees); see instag synthesize --help")


# ---------------------------------------------------------------------------------------- base poses
class PoseTrack:
    """Base head pose of every output frame and the training frame (position in the clip) whose torso, background
    and AUs go with it. ``mode``: pingpong | train | still, or a path (see the module docstring); ``train`` on a
    clip of fewer than 8 frames plays ping-pong."""

    def __init__(self, cameras, mode: str = "pingpong"):
        self.cameras = list(cameras)
        self.rots, self.trans = poses_of(self.cameras)
        self.mode = mode
        n = len(self.cameras)
        self.mean_rot, self.mean_trans = mean_rotation(self.rots), self.trans.mean(0)
        if mode == "still":
            dist = rotation_angle_deg(self.rots, self.mean_rot[None]) + 100.0 * np.linalg.norm(self.trans - self.mean_trans, axis=1)
            self.still = int(np.argmin(dist))
        elif mode == "train":
            self.loop = self._loop_points() if n >= 8 else None
        elif mode != "pingpong":
            self.file_rot, self.file_trans = load_pose_file(mode).motion()

    def _loop_points(self) -> tuple[int, int, int]:
        """(first, last, crossfade frames) of the forward loop: the pair of frames in the first and last quarter whose
        poses at the middle of the crossfade are closest."""
        n = len(self.cameras)
        fade = max(2, min(int(round(CROSSFADE_S * FPS)), n // 4))
        firsts = np.arange(0, max(1, n // 4))
        lasts = np.arange(max(firsts[-1] + 2 * fade + 1, n - max(1, n // 4)), n)
        if lasts.size == 0:
            return 0, n - 1, fade
        half = fade // 2
        a_mid, b_mid = firsts + half, lasts - fade + 1 + half  # the frames the torso switches between
        angle = rotation_angle_deg(self.rots[a_mid][:, None], self.rots[b_mid][None])
        shift = 100.0 * np.linalg.norm(self.trans[a_mid][:, None] - self.trans[b_mid][None], axis=-1)
        i, j = np.unravel_index(np.argmin(angle + shift), angle.shape)
        return int(firsts[i]), int(lasts[j]), fade

    def at(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(R [T,3,3], t [T,3], clip positions [T]) of output ``frames``."""
        k = np.asarray(frames, np.int64)
        n = len(self.cameras)
        if self.mode == "still":
            pos = np.full(k.shape, self.still)
            return self.rots[pos], self.trans[pos], pos
        if self.mode == "train" and self.loop is not None:
            return self._train_loop(k)
        pos = pingpong(k, n)
        if self.mode in ("pingpong", "train"):
            return self.rots[pos], self.trans[pos], pos
        j = pingpong(k, len(self.file_rot))
        rots = np.einsum("ij,njk->nik", self.mean_rot, self.file_rot[j])
        return rots, self.mean_trans[None] + self.file_trans[j], pos

    def _train_loop(self, k: np.ndarray):
        a, b, fade = self.loop
        period = b - a + 1 - fade
        q = k % period
        blend = (q < fade) & (k >= period)  # the first pass starts on frame a itself
        w = np.where(blend, smoothstep((q + 1) / (fade + 1)), 1.0)
        cur, prev = a + q, b - fade + 1 + q  # prev: the end of the previous pass, running on
        prev = np.minimum(prev, b)
        rots = project_rotation(w[:, None, None] * self.rots[cur] + (1 - w)[:, None, None] * self.rots[prev])
        trans = w[:, None] * self.trans[cur] + (1 - w)[:, None] * self.trans[prev]
        pos = np.where(w >= 0.5, cur, prev)
        return rots, trans, pos


# ---------------------------------------------------------------------------------------- gestures
def gesture_angles(gestures: list[GestureCue], frames: np.ndarray) -> np.ndarray:
    """(pitch, yaw, roll) degrees [T,3] that the gestures add at output ``frames``."""
    t = np.asarray(frames, np.float64) / FPS
    out = np.zeros((len(t), 3))
    for g in gestures:
        tau = (t - g.start) / g.duration
        inside = (tau > 0) & (tau < 1)
        if not inside.any():
            continue
        x = tau[inside]
        if g.kind == "nod":  # down and back, `times` times
            curve = np.sin(np.pi * g.times * x) ** 2
        elif g.kind == "shake":  # side to side under a sine envelope, scaled to reach the amplitude
            curve = np.sin(2 * np.pi * g.times * x) * np.sin(np.pi * x) / _shake_peak(g.times)
        else:  # tilt: held, with smooth ramps of up to 0.4 s
            r = min(0.4 / g.duration, 0.5)
            curve = smoothstep(x / r) * smoothstep((1 - x) / r)
        out[inside, _AXES[GESTURES[g.kind][0]]] += g.amplitude * curve
    return out


def _shake_peak(times: int) -> float:
    x = np.linspace(0, 1, 2001)
    return float(np.abs(np.sin(2 * np.pi * times * x) * np.sin(np.pi * x)).max())


def with_gestures(rots: np.ndarray, trans: np.ndarray, angles_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Poses turned by head-frame rotations of ``angles_deg`` [T,3] about :data:`NECK_PIVOT`."""
    if not np.any(angles_deg):
        return rots, trans
    g = axis_rotations(angles_deg)
    shift = NECK_PIVOT[None] - np.einsum("nij,j->ni", g, NECK_PIVOT)  # c − G c
    return rots @ g, trans + np.einsum("nij,nj->ni", rots, shift)


def head_angles_deg(rots: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """(pitch, yaw, roll) degrees [T,3] of head-frame rotations ``rest^T R`` (inverse of :func:`axis_rotations`)."""
    d = np.einsum("ji,njk->nik", rest, rots)
    yaw = np.arcsin(np.clip(d[:, 0, 2], -1, 1))
    pitch = np.arctan2(-d[:, 1, 2], d[:, 2, 2])
    roll = np.arctan2(-d[:, 0, 1], d[:, 0, 0])
    return np.degrees(np.stack([pitch, yaw, roll], 1))


def max_step_deg(rots: np.ndarray) -> np.ndarray:
    """Frame-to-frame rotation steps [T-1] in degrees."""
    return rotation_angle_deg(rots[1:], rots[:-1]) if len(rots) > 1 else np.zeros(0)

