"""Semantic parsing in upstream's colour code, from a person mask and landmark polygons.

MediaPipe's selfie segmentation separates the person from the background; the landmarks
then split the person: head = the face outline (plus the ears beside it), inside of the
mouth = the inner-lip ring, neck = person below the jaw within the jaw's width down to about
half a face height under the chin (skin-coloured below the jaw's shadow), torso = the rest
of the person below the chin and the shoulders, hair = the person above the eyes or beside
the face that hangs together with the hair above the eyes. Labels are written as ``parsing/<i>.png`` with ``PARSING_BGR``.
"""

from __future__ import annotations

import cv2
import numpy as np

from instag.data.format import PARSING_BGR, DatasetLayout
from instag.errors import InstagError
from instag.io.atomic import write_image
from instag.preprocess.mesh import CHIN, INNER_LIPS, face_oval
from instag.preprocess.workers import for_each_frame

# Label ids, painted in this order (later wins).
BACKGROUND, TORSO, NECK, HAIR, HEAD, MOUTH = range(6)
LABEL_NAMES = ("background", "torso", "neck", "hair", "head", "mouth")
LABEL_BGR = np.array([PARSING_BGR[name] for name in LABEL_NAMES], dtype=np.uint8)


class PersonSegmenter:
    """MediaPipe selfie segmentation (lazy import): BGR uint8 [H,W,3] -> float32 [H,W] in [0,1]."""

    def __init__(self):
        from instag.preprocess.landmarks import _quiet_mediapipe

        _quiet_mediapipe()
        from mediapipe.python.solutions import selfie_segmentation

        self._seg = selfie_segmentation.SelfieSegmentation(model_selection=0)

    def __call__(self, bgr: np.ndarray) -> np.ndarray:
        return self._seg.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).segmentation_mask.astype(np.float32)

    def close(self) -> None:
        self._seg.close()


def _poly(mask_shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    mask = np.zeros(mask_shape, dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask.astype(bool)


def skin_like(ycc_pixels: np.ndarray, face_ycc: np.ndarray, tolerance: float = 3.0, darkest: float = 0.0) -> np.ndarray:
    """bool [P]: pixels (YCrCb [P,3]) whose chroma is within ``tolerance`` spreads of the face's ([F,3])
    and whose brightness lies between the face's ``darkest`` percentile and just above its highlights
    (a white collar has skin-like chroma on dark skin; dark brown hair has it on fair skin)."""
    ref = face_ycc.astype(np.float32)
    if ref.shape[0] < 16:
        return np.ones(len(ycc_pixels), dtype=bool)
    centre = np.median(ref[:, 1:], axis=0)
    spread = np.maximum(np.percentile(np.abs(ref[:, 1:] - centre), 75, axis=0), 2.0)
    pix = ycc_pixels.astype(np.float32)
    dist = np.abs(pix[:, 1:] - centre) / spread
    luma_ok = pix[:, 0] <= np.percentile(ref[:, 0], 95) + 15
    if darkest > 0:
        luma_ok &= pix[:, 0] >= np.percentile(ref[:, 0], darkest)
    return (dist.max(-1) < tolerance) & luma_ok


def _similar_within(mask: np.ndarray, bgr: np.ndarray, ref_ycc: np.ndarray, tolerance: float = 2.5) -> np.ndarray:
    """The part of ``mask`` whose YCrCb colour is within ``tolerance`` spreads of the reference pixels [R,3]."""
    out = np.zeros_like(mask)
    rows, cols = np.nonzero(mask)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    inside = mask[y0:y1, x0:x1]
    pix = cv2.cvtColor(bgr[y0:y1, x0:x1], cv2.COLOR_BGR2YCrCb)[inside].astype(np.float32)
    ref = ref_ycc.astype(np.float32)
    centre = np.median(ref, axis=0)
    spread = np.maximum(np.percentile(np.abs(ref - centre), 75, axis=0), np.array([8.0, 2.0, 2.0]))
    local = np.zeros_like(inside)
    local[inside] = (np.abs(pix - centre) / spread).max(-1) < tolerance
    out[y0:y1, x0:x1] = local
    return out


def _skin_within(mask: np.ndarray, bgr: np.ndarray, face_ycc: np.ndarray, **kw) -> np.ndarray:
    """The skin-like part of ``mask`` (bool [H,W]), testing only the mask's bounding box."""
    out = np.zeros_like(mask)
    if not mask.any():
        return out
    rows, cols = np.nonzero(mask)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    inside = mask[y0:y1, x0:x1]
    ycc = cv2.cvtColor(bgr[y0:y1, x0:x1], cv2.COLOR_BGR2YCrCb)
    local = np.zeros_like(inside)
    local[inside] = skin_like(ycc[inside], face_ycc, **kw)
    out[y0:y1, x0:x1] = local
    return out


def parse_frame(person_prob: np.ndarray, landmarks: np.ndarray, bgr: np.ndarray | None = None) -> np.ndarray:
    """Label map uint8 [H,W] (ids above) from a person probability [H,W], landmarks [478,3] and,
    when given, the BGR frame (the neck is then limited to skin-coloured pixels)."""
    h, w = person_prob.shape
    person = person_prob > 0.5
    oval = landmarks[face_oval(), :2]
    face = _poly((h, w), oval)
    mouth = _poly((h, w), landmarks[INNER_LIPS, :2])
    x_min, x_max = oval[:, 0].min(), oval[:, 0].max()
    face_w = max(x_max - x_min, 1.0)
    face_h = max(oval[:, 1].max() - oval[:, 1].min(), 1.0)
    chin_y = landmarks[CHIN, 1]
    eye_y = landmarks[[33, 263], 1].mean()
    nose_y = landmarks[2, 1]
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]

    labels = np.zeros((h, w), dtype=np.uint8)
    below_chin = ys > chin_y
    labels[person & below_chin] = TORSO
    # neck: under the jaw line, within the jaw's width, down to ~half a face height below the chin
    lower = oval[oval[:, 1] > eye_y]
    order = np.argsort(lower[:, 0])
    jaw_y = np.interp(xs[0], lower[order, 0], lower[order, 1], left=np.inf, right=np.inf).astype(np.float32)
    band = (xs > x_min + 0.12 * face_w) & (xs < x_max - 0.12 * face_w)
    neck = person & band & (ys > jaw_y[None, :]) & (ys < chin_y + 0.5 * face_h)
    face_ycc = None
    if bgr is not None:
        fy, fx = np.nonzero(face)
        step = max(1, fy.size // 4000)  # a few thousand face pixels are enough for the reference
        face_ycc = cv2.cvtColor(bgr[fy[::step], fx[::step]][None], cv2.COLOR_BGR2YCrCb)[0]
        # below the jaw's shadow, the neck is skin; collars and scarves are torso
        test = neck & (ys >= chin_y + 0.12 * face_h)
        neck &= ~test | _skin_within(test, bgr, face_ycc)
    labels[neck] = NECK
    # above the chin: hair over the head and beside the face; wider out (shoulders) is torso
    mouth_y = landmarks[0, 1]
    beside = (xs > x_min - 0.35 * face_w) & (xs < x_max + 0.35 * face_w)
    above = person & ~below_chin & ~neck
    labels[above & ~((ys < eye_y) | beside)] = TORSO
    labels[above & ((ys < eye_y) | beside)] = HAIR
    if face_ycc is not None:
        scalp = above & (ys < eye_y) & (xs > x_min) & (xs < x_max)
        bald = _skin_within(scalp, bgr, face_ycc, tolerance=2.0, darkest=10)
        if bald.sum() < 0.6 * max(scalp.sum(), 1):  # mostly not skin: hair (fair hair can match skin here and there)
            bald[:] = False
        labels[bald] = HEAD  # a bald scalp is head, not hair
        # between mouth and chin, beside the face: hair only where it looks like the hair above
        low = above & beside & (ys >= mouth_y)
        hair_ref = above & (ys < eye_y) & ~bald
        if low.any():
            keep = np.zeros_like(low)
            if hair_ref.sum() >= 16:
                hy, hx = np.nonzero(hair_ref)
                step = max(1, hy.size // 4000)
                ref = cv2.cvtColor(bgr[hy[::step], hx[::step]][None], cv2.COLOR_BGR2YCrCb)[0]
                keep = _similar_within(low, bgr, ref)
            labels[low & ~keep] = TORSO
    ears = person & (ys > eye_y) & (ys < nose_y + 0.1 * face_h) & (xs > x_min - 0.07 * face_w) & (xs < x_max + 0.07 * face_w)
    labels[ears & ~neck] = HEAD
    labels[face] = HEAD
    labels[mouth] = MOUTH
    _detached_hair_to_torso(labels, eye_y, mouth_y)  # on the final map: before this, hair runs under the face
    return labels


def _detached_hair_to_torso(labels: np.ndarray, eye_y: float, below_y: float, bridge: int = 9) -> None:
    """Hair below ``below_y`` (the mouth) that does not hang together with the hair above the eyes is
    torso: a dark suit or shoulder beside a low chin looks like dark hair, but real hair beside the
    face hangs from the hair on top of the head. Connectivity is judged after an opening of
    ``bridge`` px, so a thin seam along the jaw does not join the shoulders to the hair."""
    hair = (labels == HAIR).astype(np.uint8)
    if not hair.any():
        return
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (bridge, bridge))
    core = cv2.erode(hair, kernel)
    _, comp = cv2.connectedComponents(core, connectivity=8)
    top = comp[: max(0, int(eye_y))]
    attached = np.isin(comp, np.unique(top[top > 0])) & (comp > 0)
    keep = cv2.dilate(attached.astype(np.uint8), kernel, iterations=2).astype(bool)
    rows = np.arange(labels.shape[0])[:, None] > below_y
    labels[(hair > 0) & ~keep & rows] = TORSO


def colorize(labels: np.ndarray) -> np.ndarray:
    """Label ids [H,W] -> BGR uint8 [H,W,3] in upstream's colour code."""
    return LABEL_BGR[labels]


def _pack(bgr: np.ndarray) -> np.ndarray:
    b = bgr.astype(np.int32)
    return b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)


def labels_from_parsing(parsing_bgr: np.ndarray) -> np.ndarray:
    """Label ids uint8 [H,W] from a parsing PNG read by cv2 (BGR); unknown colours count as background."""
    packed = _pack(parsing_bgr)
    labels = np.full(packed.shape, BACKGROUND, dtype=np.uint8)
    for lab, code in enumerate(_pack(LABEL_BGR)):
        if lab != BACKGROUND:
            labels[packed == code] = lab
    return labels


def decode(parsing_bgr: np.ndarray) -> dict[str, np.ndarray]:
    """Masks (bool [H,W]) per label name from a parsing PNG read by cv2 (BGR)."""
    packed = _pack(parsing_bgr)
    return {name: packed == code for name, code in zip(LABEL_NAMES, _pack(LABEL_BGR))}


def run(layout: DatasetLayout, landmarks: np.ndarray) -> None:
    """Write ``parsing/<i>.png`` for every frame."""
    layout.parsing_dir.mkdir(parents=True, exist_ok=True)

    def work(i: int, segmenter: PersonSegmenter) -> None:
        img = cv2.imread(str(layout.ori_image(i)))
        if img is None:
            raise InstagError(f"{layout.ori_image(i)}: missing or unreadable; rerun with --task 3 --force")
        labels = parse_frame(segmenter(img), landmarks[i], img)
        write_image(layout.parsing(i), colorize(labels), [cv2.IMWRITE_PNG_COMPRESSION, 1])

    for_each_frame(len(landmarks), work, "parsing", init=PersonSegmenter, close=PersonSegmenter.close)
