"""Metrics against hand-computed values on constructed inputs (DESIGN §4 definitions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from instag.metrics import SequenceMetrics
from instag.metrics.image import gaussian_window, psnr, ssim, to_gray255
from instag.metrics.lips import LIP_INDICES, lmd, mouth_opening, mouth_opening_correlation, pearson


def _frame(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _face(seed: int = 0) -> np.ndarray:
    """478 landmarks [478,3] in pixels with a plausible face layout for the points we use."""
    lm = np.random.default_rng(seed).uniform(150, 350, size=(478, 3))
    lm[33, :2], lm[263, :2] = (200, 220), (312, 220)  # eye corners 112 px apart
    lm[13, :2], lm[14, :2] = (256, 330), (256, 344)  # inner lips 14 px apart
    return lm


def test_lip_indices_match_mediapipe():
    connections = pytest.importorskip("mediapipe.python.solutions.face_mesh_connections")
    assert tuple(sorted({i for edge in connections.FACEMESH_LIPS for i in edge})) == LIP_INDICES
    assert len(LIP_INDICES) == 40


def test_psnr_identical_is_inf_and_ssim_is_one():
    img = _frame(1)
    assert psnr(img, img) == math.inf
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    as_tensor = torch.from_numpy(img).permute(2, 0, 1).double() / 255.0
    assert psnr(as_tensor, img) == math.inf


def test_psnr_known_mse():
    gt = np.full((20, 30, 3), 100, np.uint8)
    pred = gt.copy()
    pred[..., 0] += 10  # one channel off by 10: MSE = 100 / 3
    expected = 10 * math.log10(255.0**2 / (100.0 / 3.0))
    assert psnr(pred, gt) == pytest.approx(expected, abs=1e-9)
    # float [3,H,W] renders in [0,1] use the same 0..255 scale
    assert psnr(torch.from_numpy(pred).permute(2, 0, 1) / 255.0, gt) == pytest.approx(expected, abs=1e-6)


def test_ssim_constant_images_closed_form():
    # constant images: variances and covariance vanish, SSIM = (2ab + C1) / (a² + b² + C1)
    a, b = 100.0, 120.0
    c1 = (0.01 * 255) ** 2
    img_a = np.full((32, 32, 3), a / 255.0)
    img_b = np.full((32, 32, 3), b / 255.0)
    assert ssim(img_a, img_b) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)


def test_ssim_uses_gaussian_window_on_luma():
    g = gaussian_window()
    assert g.shape == (11,) and float(g.sum()) == pytest.approx(1.0)
    assert float(g[5] / g[4]) == pytest.approx(math.exp(1 / (2 * 1.5**2)))
    gray = to_gray255(np.array([[[255, 0, 0]]], np.uint8))
    assert gray[0, 0] == pytest.approx(0.299 * 255)
    noisy = np.clip(_frame(2).astype(int) + np.random.default_rng(3).integers(-40, 40, (48, 64, 3)), 0, 255).astype(np.uint8)
    assert 0.0 < ssim(noisy, _frame(2)) < 1.0


def test_lmd_translation_invariant_and_scale():
    gt = _face()
    shifted = gt.copy()
    shifted[:, :2] += (13.0, -7.0)
    assert lmd(shifted, gt, width=512) == pytest.approx(0.0, abs=1e-9)

    # scale the mouth about its centroid by s: each centred point moves by (s-1)|p - c|
    s = 1.2
    lips = np.asarray(LIP_INDICES)
    centre = gt[lips, :2].mean(0)
    scaled = gt.copy()
    scaled[lips, :2] = centre + s * (gt[lips, :2] - centre)
    expected = (s - 1) * np.linalg.norm(gt[lips, :2] - centre, axis=1).mean()
    assert lmd(scaled, gt, width=512) == pytest.approx(expected, rel=1e-9)
    # pixels are scaled to a 512-wide frame: the same landmarks in a 256-wide frame count double
    assert lmd(scaled, gt, width=256) == pytest.approx(2 * expected, rel=1e-9)
    # only the lip points count
    other = gt.copy()
    other[[1, 2, 3, 33], :2] += 50
    assert lmd(other, gt, width=512) == pytest.approx(0.0, abs=1e-9)


def test_lmd_skips_frames_without_face():
    gt = np.stack([_face(0), _face(1)])
    pred = gt.copy()
    pred[1] = np.nan
    pred[0, list(LIP_INDICES)[:1], 0] += 40.0  # one point moves 40 px before centring
    moved = np.zeros((40, 2))
    moved[0, 0] = 40.0
    moved -= moved.mean(0)
    expected = np.linalg.norm(moved, axis=1).mean()
    assert lmd(pred, gt, width=512) == pytest.approx(expected, rel=1e-9)


def test_mouth_opening_value():
    assert mouth_opening(_face()) == pytest.approx(14.0 / 112.0)
    seq = np.stack([_face(), _face()])
    seq[1, 14, 1] += 14.0
    np.testing.assert_allclose(mouth_opening(seq), [14 / 112, 28 / 112])


def test_pearson_edge_cases():
    x = np.arange(10.0)
    assert pearson(x, 2 * x + 3) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert pearson(x, np.full(10, 0.3)) == 0.0  # no variance
    assert pearson(np.full(10, 0.1), np.full(10, 0.1)) == 0.0
    assert pearson(np.array([1.0]), np.array([2.0])) == 0.0  # too short
    y = x.copy()
    y[3] = np.nan  # frames without a face are left out
    assert pearson(x, y) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        pearson(x, x[:5])


def test_mouth_opening_correlation_static_is_zero():
    gt = np.stack([_face() for _ in range(6)])
    gt[:, 14, 1] += np.array([0, 3, 6, 2, 8, 1.0])
    static = np.stack([_face() for _ in range(6)])
    assert mouth_opening_correlation(gt, gt) == pytest.approx(1.0)
    assert mouth_opening_correlation(static, gt) == 0.0


def test_sequence_metrics_aggregates():
    gt = [_frame(i, 64, 64) for i in range(3)]
    lms = [_face(i) * 0.15 for i in range(3)]  # landmarks inside the 64x64 frame
    m = SequenceMetrics()
    for g, lm in zip(gt, lms):
        m.add(g, g, lm, lm)
    out = m.result()
    assert out["frames"] == 3 and out["psnr"] == math.inf and out["ssim"] == pytest.approx(1.0)
    assert out["face_ssim"] == pytest.approx(1.0) and out["lmd"] == pytest.approx(0.0)
    assert out["mouth_corr"] == 0.0 and out["frames_without_face"] == 0  # constant opening: no variance

    m = SequenceMetrics()
    pred = gt[0].copy()
    pred[..., 1] = np.clip(pred[..., 1].astype(int) + 5, 0, 255).astype(np.uint8)
    m.add(pred, gt[0], None, lms[0])
    out = m.result()
    assert out["psnr"] == pytest.approx(psnr(pred, gt[0]))
    assert out["lmd"] is None and out["mouth_corr"] is None and out["frames_without_face"] == 1


def test_lpips_architecture_with_constructed_weights(tmp_path):
    from lpips_weights import write_lpips_weights

    from instag.metrics.lpips import LPIPS

    gen = torch.Generator().manual_seed(0)
    lin_path, alex_path = write_lpips_weights(tmp_path)
    model = LPIPS().load(lin_path, alex_path)
    a = torch.rand(2, 3, 64, 64, generator=gen)
    b = torch.rand(2, 3, 64, 64, generator=gen)
    assert torch.allclose(model(a, a), torch.zeros(2), atol=1e-7)
    d = model(a, b)
    assert d.shape == (2,) and bool((d > 0).all())
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    from instag.errors import InstagError

    with pytest.raises(InstagError):
        LPIPS().load(lin_path, tmp_path / "bad.pth")


def test_syncnet_shapes_and_mfcc():
    from instag.metrics.syncnet import SyncNet, mfcc

    feats = mfcc(np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 3000)
    assert feats.shape == (99, 13)  # 1 s at 100 Hz with 25 ms frames
    net = SyncNet()
    assert net.forward_audio(torch.zeros(2, 1, 13, 20)).shape == (2, 1024)
    assert net.forward_lip(torch.zeros(1, 3, 5, 224, 224)).shape == (1, 1024)
    from instag.metrics.syncnet import face_crop, sync_scores

    rng = np.random.default_rng(0)
    crops = [face_crop(rng.integers(0, 255, (300, 260, 3), dtype=np.uint8), _face(i)[:, :2] * 0.5) for i in range(8)]
    assert crops[0].shape == (224, 224, 3)
    scores = sync_scores(net, crops, rng.standard_normal(8 * 640).astype(np.float32) * 0.1)
    assert set(scores) == {"sync_c", "sync_e", "sync_offset"} and scores["sync_c"] >= 0 and -15 <= scores["sync_offset"] <= 15


def test_au_error_hand_computed():
    from instag.metrics.au import au_error

    pred = {" AU01_r": [1.0, 2.0, 9.0], "AU12_r": [0.0, 0.0], "AU12_c": [1, 1], "confidence": [1, 1]}
    gt = {"AU01_r": [0.0, 0.0], "AU12_r": [1.0, 1.0]}
    out = au_error(pred, gt)  # over the common 2 frames: AU01 (1+4)/2, AU12 1
    assert out["au_columns"] == ["AU01", "AU12"]
    assert out["aue"] == pytest.approx(3.5) and out["aue_upper"] == pytest.approx(2.5) and out["aue_lower"] == pytest.approx(1.0)
    assert au_error({}, gt)["aue"] is None


def test_speech_energy_and_lagged_correlation():
    from instag.metrics.evaluate import lagged_correlation, speech_energy

    samples = np.zeros(16000)
    samples[640 * 10 : 640 * 12] = 0.5  # loud from the time of frame 10 to that of frame 12
    energy = speech_energy(samples, 25)  # 40-ms windows centred on each frame's time
    assert energy.shape == (25,) and energy[0] == 0.0 and energy[13] == 0.0
    assert energy[11] == pytest.approx(0.5)
    assert energy[10] == pytest.approx(0.5 * math.sqrt(0.5)) and energy[12] == pytest.approx(0.5 * math.sqrt(0.5))
    x = np.sin(np.arange(60) / 3.0)
    r, lag = lagged_correlation(np.roll(x, 2), x)
    assert lag == 2 and r > 0.99


def test_mfcc_matches_python_speech_features():
    reference = pytest.importorskip("python_speech_features")
    from instag.metrics.syncnet import mfcc

    x = (np.random.default_rng(1).standard_normal(16000 * 2) * 3000).astype(np.int16)
    np.testing.assert_allclose(mfcc(x.astype(np.float64)), reference.mfcc(x, 16000), atol=1e-4)


def test_static_baseline_uses_the_clips_own_silence():
    from instag.metrics.evaluate import quietest_frame, static_audio

    rng = np.random.default_rng(0)
    audio = (0.3 * rng.standard_normal(60 * 640)).astype(np.float32)
    audio[18 * 640 : 32 * 640] *= 0.01  # a pause around frame 25
    k = quietest_frame(audio, 60)
    assert 21 <= k <= 29
    items = torch.arange(60.0)[:, None, None].expand(60, 2, 3).contiguous()
    static, source = static_audio(items, audio, "mel")
    assert torch.equal(static, items[k : k + 1].expand(60, 2, 3)) and "quietest" in source


def test_table_headers_never_run_together():
    from instag.metrics.report import format_table

    rows = {"ours": {"psnr": 30.12346, "mouth_amp": 0.91, "closed_in_silence": 0.875, "aue_lower": None},
            "static": {"psnr": 25.0, "mouth_amp": 0.0, "closed_in_silence": 1.0}}
    head, ours, static = format_table(rows).splitlines()
    assert head.split() == ["psnr", "mouth_amp", "closed_in_silence"]
    assert ours.split() == ["ours", "30.1235", "0.9100", "0.8750"]
    assert static.split() == ["static", "25.0000", "0.0000", "1.0000"]
    # every value ends where its header ends
    for line in (ours, static):
        for name in ("psnr", "mouth_amp", "closed_in_silence"):
            end = head.index(name) + len(name)
            assert line[end - 1] != " " and (end == len(line) or line[end] == " ")
