"""Lip sync: audio windows line up with frames end to end, the mouth stage skips closed-mouth frames,
and pre-training gives every identity's clouds a real static warm-up before motion starts.

The alignment tests guard what was checked while hunting the "audio does not drive the mouth" bug
(they held already); the sampler and warm-up tests fail without the fixes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _clicks(num_frames: int, loud: list[int]) -> np.ndarray:
    """16 kHz samples: near silence with one 40-ms burst centred on each frame of ``loud``."""
    rng = np.random.default_rng(0)
    x = 1e-4 * rng.standard_normal(num_frames * 640).astype(np.float32)
    for i in loud:
        c = i * 640
        x[max(0, c - 320) : c + 320] += 0.5 * np.sin(np.arange(len(x[max(0, c - 320) : c + 320])) * 0.3)
    return x


def test_mel_window_of_frame_i_is_centred_on_frame_i():
    from instag.audio.mel import MelExtractor

    loud = [10, 25, 40]
    feats = MelExtractor().extract(_clicks(50, loud), 50)  # [T, 16 taps, 80]
    energy = feats.mean(axis=2)  # [T, 16]
    for i in loud:
        # frame i's own window has the burst in its middle taps (rows 2i-1 .. 2i+1 = taps 7..9)
        assert 7 <= int(np.argmax(energy[i])) <= 9
    # and the frame whose window is loudest in its centre tap is the burst's frame
    centre = energy[:, 8]
    assert sorted(np.argsort(centre)[-3:].tolist()) == loud


def test_val_split_windows_use_their_own_audio_rows(tmp_path):
    from synthetic_clip import make_clip

    from instag.audio.windows import frame_window
    from instag.data.dataset import FrameDataset, load_clip

    make_clip(tmp_path / "c", size=32, n_train=12, n_val=6)
    train = load_clip(tmp_path / "c", "train", "mel")
    val = load_clip(tmp_path / "c", "val", "mel")
    assert [f.index for f in val.frames] == [f.aud_id for f in val.frames] == list(range(12, 18))
    ds = FrameDataset([val])
    for pos in range(len(val)):
        expect = frame_window(val.features, 12 + pos)
        assert np.array_equal(ds[(0, pos)]["audio"].numpy(), expect)
    # N_views keeps the first frames and their own rows
    few = load_clip(tmp_path / "c", "train", "mel", n_views=5)
    assert np.array_equal(few.audio_window(4), train.audio_window(4))


def test_evaluation_plan_uses_the_val_frames_audio_rows(tmp_path):
    pytest.importorskip("instag.infer.synthesize")
    from synthetic_clip import make_clip

    from instag.data.dataset import load_clip
    from instag.infer.synthesize import split_plan

    make_clip(tmp_path / "c", size=32, n_train=12, n_val=6)
    plan = split_plan(load_clip(tmp_path / "c", "val", "mel"))
    assert list(plan.audio_index) == list(range(12, 18))


class _Clip:
    def __init__(self, mouth_px, au25):
        self.mouth_px = np.asarray(mouth_px, np.float32)
        self.au25 = np.asarray(au25, np.float32)
        self.opening = self.mouth_px.copy()
        self.blink = np.zeros_like(self.au25)
        self.stats = {"open_lo": 0.0, "open_hi": float(self.opening.max()), "au25_p25": float(np.percentile(self.au25, 25)),
                      "au25_p75": float(np.percentile(self.au25, 75)), "au25_max": float(self.au25.max())}

    def __len__(self):
        return len(self.mouth_px)


@pytest.mark.parametrize("mode", ["pretrain", "adapt"])
def test_mouth_stage_never_draws_closed_mouth_frames_after_warmup(mode):
    from instag.train.config import stage_config
    from instag.train.sampler import CurriculumSampler

    n = 60
    mouth_px = np.where(np.arange(n) % 3 == 0, 0.0, 150.0)  # a third of the frames: mouth closed
    au25 = np.linspace(0, 2, n)
    clip = _Clip(mouth_px, au25)
    cfg = stage_config("mouth", mode, 400)
    it = iter(CurriculumSampler([clip], cfg, seed=1))
    drawn = [next(it) for _ in range(400)]
    after = [pos for step, (_, pos) in enumerate(drawn, start=1) if cfg.warmup < step <= cfg.curriculum_end]
    assert after and all(mouth_px[p] >= 20 for p in after)


def test_inner_lip_area_counts_mouth_pixels():
    from instag.data.dataset import inner_lip_area

    lms = np.zeros((2, 68, 2), np.float32)
    ang = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    lms[0, 60:68] = np.stack([10 * np.cos(ang), 5 * np.sin(ang)], 1)  # open: octagon in a 20x10 ellipse
    lms[1, 60:68] = np.stack([10 * np.cos(ang), 0 * ang], 1)  # closed: flat
    area = inner_lip_area(lms)
    assert area[0] == pytest.approx(0.5 * 8 * 10 * 5 * np.sin(2 * np.pi / 8), rel=1e-4) and area[1] == 0


def test_pretraining_gives_each_identity_a_static_warmup():
    from instag.train.config import stage_config
    from instag.train.pretrain import static_warmup

    # the failing recipe: 5000 face steps over 30 identities warmed up 167 steps (5.6 per identity)
    cfg = static_warmup(stage_config("face", "pretrain", 5000), 30, 300)
    assert cfg.warmup == 5000 // 3 and cfg.hair_from >= cfg.warmup
    cfg = static_warmup(stage_config("face", "pretrain", 12000), 4, 300)
    assert cfg.warmup == 1200
    # a long recipe keeps its own (longer) warm-up
    assert static_warmup(stage_config("face", "pretrain", 150_000), 5, 300).warmup == 5000
    mouth = static_warmup(stage_config("mouth", "pretrain", 3000), 30, 300)
    assert mouth.warmup == 1000


def test_static_warmup_keeps_clouds_still_and_motion_starts_after(tmp_path):
    """The engine's face step in pre-training renders without motion during the (raised) warm-up."""
    from synthetic_clip import make_clip

    from instag.data.dataset import FrameDataset, load_clip
    from instag.model.talking_head import TalkingHead
    from instag.train.config import stage_config
    from instag.train.engine import Identity, Trainer
    from instag.train.pretrain import static_warmup

    make_clip(tmp_path / "a", size=32, n_train=10, n_val=2)
    make_clip(tmp_path / "b", size=32, n_train=10, n_val=2, seed=1)
    clips = [load_clip(tmp_path / n, "train", "mel") for n in "ab"]
    cfg = static_warmup(stage_config("face", "pretrain", 120), 2, 20)
    assert cfg.warmup == 40
    heads = [TalkingHead.create("mel", (80, 16), 50, 50, generator=torch.Generator().manual_seed(0))]
    heads.append(TalkingHead.create("mel", (80, 16), 50, 50, face_field=heads[0].face_field, mouth_field=heads[0].mouth_field))
    tr = Trainer(cfg, [Identity(c, h) for c, h in zip(clips, heads)], torch.device("cpu"))
    s = tr._to_device(FrameDataset(clips)[(0, 0)])
    cam = clips[0].frames[0].camera
    _, info = tr._face_step(tr.ids[0], s, cfg.warmup, cam)
    assert "reg" not in info["parts"]  # static: no motion terms
    _, info = tr._face_step(tr.ids[0], s, cfg.warmup + 1, cam)
    assert "reg" in info["parts"]
