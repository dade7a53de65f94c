"""The one description of ``data/<ID>/``: file names, shapes and meanings.

The layout is upstream InsTaG's (so data made by either tool trains with ours); every
reader and writer in the package takes its paths from :class:`DatasetLayout`.

Per-frame files are keyed by the frame index ``i`` (0-based, 25 FPS):

==========================  ==============================================================
``ori_imgs/<i>.jpg``        decoded frame, uint8 [H,W,3] (BGR on disk)
``ori_imgs/<i>.lms``        68 (x=column, y=row) pixel landmarks, text, float [68,2]
``landmarks.npy``           all 478 MediaPipe landmarks, float32 [N,478,3] (x,y px; z px-scaled)
``parsing/<i>.png``         colour-coded parsing (BGR on disk): see ``PARSING_BGR``
``gt_imgs/<i>.jpg``         frame with background replaced by ``bc.jpg``; the training target
``torso_imgs/<i>.png``      RGBA torso+neck, alpha 255 on torso/neck, 0 elsewhere
``teeth_mask/<i>.png``      teeth mask [H,W] (255 on teeth)
``depth/<i>.png``           camera-space expected depth prior [H,W] (0 = no prior)
``normal/<i>.png``          camera-space unit normal prior [H,W,3] (0 = no prior)
==========================  ==============================================================

The last three are encoded as :mod:`instag.data.maps` describes (which also reads the ``<i>.npy``
arrays of clips processed before, and upstream's); upstream's own loader reads teeth masks only as
``.npy``.

Whole-clip files: ``aud.wav`` (16 kHz mono PCM), ``bc.jpg`` (background plate),
``au.csv`` (OpenFace columns), ``track_params.pt`` (tracked head poses),
``transforms_train.json`` / ``transforms_val.json`` (cameras and split), audio features
(``aud_mel.npy`` [T,16,80], ``aud.npy`` / ``aud_ds.npy`` [T,16,29], ``aud_eo.npy``
[T,16,44], ``aud_hu.npy`` [T,2,1024], ``aud_ave.npy`` [T+4,512,1]), ``crop.json`` (the
crop preprocessing applied to the source frames, so synthesis can paste back) and
``meta.json`` (source video facts and steps done).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FPS = 25
AUDIO_SAMPLE_RATE = 16000

# Upstream's parsing colour code, as BGR triples stored in the PNG (cv2 writes BGR).
PARSING_BGR = {
    "background": (255, 255, 255),
    "head": (255, 0, 0),  # skin, brows, eyes, ears, nose, lips
    "mouth": (100, 100, 100),  # inside of the mouth
    "neck": (0, 255, 0),
    "torso": (0, 0, 255),  # cloth
    "hair": (0, 0, 0),
}

# Audio feature file per extractor and the per-frame item shape stored in it.
AUDIO_FEATURE_FILES = {
    "whisper": "aud_wh.npy",
    "mel": "aud_mel.npy",
    "deepspeech": "aud_ds.npy",
    "esperanto": "aud_eo.npy",
    "hubert": "aud_hu.npy",
    "ave": "aud_ave.npy",
}

VALIDATION_SECONDS = 12

# The face motion field's AU condition, in this order: OpenFace intensity columns (``" AU01_r"`` ...), AU45
# (blink, clipped to [0, 2]) last because it passes the expression MLP unencoded (METHOD §2.5).
EXPRESSION_AUS = ("AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU12", "AU15", "AU45")
# The condition of checkpoints made before AU02, AU12 and AU15 joined it (METHOD §1.8's six).
LEGACY_EXPRESSION_AUS = ("AU01", "AU04", "AU05", "AU06", "AU07", "AU45")
# The mouth-corner AUs also follow the speech (an "ee" widens the mouth as a smile does): the condition keeps their
# slow part (a 1-s moving average), so that it tells expression, not the words the audio already tells.
SLOW_AUS = ("AU12", "AU15")
SLOW_AU_FRAMES = 25


@dataclass(frozen=True)
class DatasetLayout:
    """Paths of one processed clip ``data/<ID>/``."""

    root: Path

    @classmethod
    def of(cls, root: str | Path) -> DatasetLayout:
        return cls(Path(root))

    @property
    def name(self) -> str:
        return self.root.name

    def require(self) -> DatasetLayout:
        """This layout; refused in one line when its folder (what ``-S`` names) does not exist."""
        if not self.root.is_dir():
            from instag.errors import InstagError

            raise InstagError(f"dataset folder {self.root} does not exist; -S takes a processed clip, made with "
                              f"instag process VIDEO --out {self.root}")
        return self

    @property
    def video(self) -> Path:
        return self.root / f"{self.root.name}.mp4"

    # whole-clip files
    @property
    def audio_wav(self) -> Path:
        return self.root / "aud.wav"

    @property
    def background(self) -> Path:
        return self.root / "bc.jpg"

    @property
    def au_csv(self) -> Path:
        return self.root / "au.csv"

    @property
    def track_params(self) -> Path:
        return self.root / "track_params.pt"

    @property
    def landmarks(self) -> Path:
        return self.root / "landmarks.npy"

    @property
    def crop(self) -> Path:
        return self.root / "crop.json"

    @property
    def meta(self) -> Path:
        return self.root / "meta.json"

    @property
    def debug_dir(self) -> Path:
        return self.root / "debug"

    def transforms(self, split: str) -> Path:
        return self.root / f"transforms_{split}.json"

    def audio_features(self, extractor: str) -> Path:
        return self.root / AUDIO_FEATURE_FILES[extractor]

    # per-frame folders
    @property
    def ori_dir(self) -> Path:
        return self.root / "ori_imgs"

    @property
    def parsing_dir(self) -> Path:
        return self.root / "parsing"

    @property
    def gt_dir(self) -> Path:
        return self.root / "gt_imgs"

    @property
    def torso_dir(self) -> Path:
        return self.root / "torso_imgs"

    @property
    def teeth_dir(self) -> Path:
        return self.root / "teeth_mask"

    @property
    def depth_dir(self) -> Path:
        return self.root / "depth"

    @property
    def normal_dir(self) -> Path:
        return self.root / "normal"

    def ori_image(self, i: int) -> Path:
        return self.ori_dir / f"{i}.jpg"

    def lms(self, i: int) -> Path:
        return self.ori_dir / f"{i}.lms"

    def parsing(self, i: int) -> Path:
        return self.parsing_dir / f"{i}.png"

    def gt_image(self, i: int) -> Path:
        return self.gt_dir / f"{i}.jpg"

    def torso_image(self, i: int) -> Path:
        return self.torso_dir / f"{i}.png"

    def teeth_mask(self, i: int) -> Path:
        return self.teeth_dir / f"{i}.png"

    def depth_prior(self, i: int) -> Path:
        return self.depth_dir / f"{i}.png"

    def normal_prior(self, i: int) -> Path:
        return self.normal_dir / f"{i}.png"

    def num_frames(self) -> int:
        """Number of decoded frames (``ori_imgs/<i>.jpg`` count)."""
        if not self.ori_dir.is_dir():
            return 0
        return sum(1 for p in self.ori_dir.glob("*.jpg"))
