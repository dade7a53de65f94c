"""What scoring a trained model on its clip needs, shared by ``instag evaluate`` and its new-audio mode: the landmark
detector the lip metrics read, the split and model to render, the ground-truth frames and the person's closed-mouth
level."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from instag.data.format import DatasetLayout
from instag.errors import InstagError


class Detector:
    """MediaPipe landmarks of RGB frames (static-image mode: every frame on its own). Without
    mediapipe every call returns None and :attr:`note` says so (lip metrics are then left out)."""

    def __init__(self):
        self.note = None
        try:
            from instag.preprocess.landmarks import FaceMeshDetector

            self._det = FaceMeshDetector(video=False, max_faces=1)
        except (ImportError, InstagError) as err:
            self._det = None
            self.note = f"lip metrics (LMD, mouth opening, AUE, SyncNet crops) not computed: {err}"

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        if self._det is None:
            return None
        return self._det.detect(np.ascontiguousarray(rgb[:, :, ::-1]))

    def close(self) -> None:
        if self._det is not None:
            self._det.close()


def load_split(source_path: str | Path, model_path: str | Path, split: str = "val", n_views: int = -1,
               device: str | None = None):
    """What scoring a model on a split needs: ``(layout, model, plan, items)``, the split being "val" or the
    first ``n_views`` frames of "train" (``items``: the clip's audio items ``[T,C,W]``)."""
    import torch

    from instag.data.dataset import load_clip
    from instag.infer.synthesize import load_model, split_plan

    if split not in ("val", "train"):
        raise InstagError(f"split {split!r}: expected val or train")
    layout = DatasetLayout.of(source_path)
    model = load_model(model_path, None, device, source=layout.root)
    clip = load_clip(layout.root, split, model.audio_extractor, n_views=n_views if split == "train" else -1)
    return layout, model, split_plan(clip), torch.from_numpy(np.asarray(clip.features))


def read_ground_truth(layout: DatasetLayout, index: int, size: tuple[int, int]) -> np.ndarray:
    """Ground-truth frame ``index`` (``gt_imgs``) as BGR uint8, resized to ``size`` (H, W) when it differs."""
    import cv2

    from instag.data.dataset import resize_to

    gt = cv2.imread(str(layout.gt_image(index)))
    if gt is None:
        raise InstagError(f"cannot read ground-truth frame {layout.gt_image(index)}; re-run preprocessing")
    return resize_to(gt, tuple(size))


def person_closed_level(layout: DatasetLayout) -> float:
    """The person's closed-mouth level (:func:`instag.metrics.lips.closed_level`) from every tracked frame of the
    clip; NaN when the clip has no landmarks."""
    from instag.io.safe_load import load_npy
    from instag.metrics.lips import closed_level, mouth_opening

    if not layout.landmarks.exists():
        return float("nan")
    return closed_level(mouth_opening(load_npy(layout.landmarks, "rerun the landmark step (instag process --task landmarks)")))
