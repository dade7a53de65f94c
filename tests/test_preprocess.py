"""Preprocessing on a real clip: every step's outputs, in upstream's shapes and counts.

The pipeline runs once (module fixture) on the first 2.4 s of ``r3dp_may_5s.mp4`` from
``../shared/data``; the tests then check what each step wrote. Unit tests of the pieces
(gap filling, topology, rasteriser, AU csv, crop choice, pose conventions) need no data.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from instag.data.format import PARSING_BGR, DatasetLayout
from instag.data.maps import read_depth, read_mask, read_normal
from instag.errors import InstagError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLIP = DATA / "video" / "r3dp_may_5s.mp4"
SECONDS = 2.4
N = 60  # frames in SECONDS at 25 FPS


def ffmpeg(*args: str) -> None:
    from instag.io.video import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    if not CLIP.exists():
        pytest.skip(f"test clip {CLIP} not found (../shared/data beside the repository)")
    from instag.preprocess.pipeline import ProcessConfig, run

    root = tmp_path_factory.mktemp("may")
    video = root / "may" / "may.mp4"
    video.parent.mkdir()
    ffmpeg("-i", str(CLIP), "-t", str(SECONDS), "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18",
           "-c:a", "aac", str(video))
    meta = run(ProcessConfig(path=str(video), debug_frames=2))
    return DatasetLayout.of(video.parent), meta


# ------------------------------------------------------------------------------------------ pipeline outputs
def test_frames_and_crop(processed):
    layout, meta = processed
    assert meta["num_frames"] == N
    assert layout.num_frames() == N
    img = cv2.imread(str(layout.ori_image(N - 1)))
    assert img.shape == (512, 512, 3)
    crop = json.loads(layout.crop.read_text())
    assert crop["applied"] is False and crop["box"] == [0, 0, 512, 512] and crop["output_size"] == [512, 512]


def test_audio_and_features(processed):
    from instag.io.wav import read_wav

    layout, meta = processed
    samples, rate = read_wav(layout.audio_wav)
    assert rate == 16000 and samples.ndim == 1
    assert abs(samples.size / rate - SECONDS) < 0.1
    feats = np.load(layout.audio_features("whisper"))  # the default extractor
    assert feats.shape == (N, 2, 512) and np.isfinite(feats).all()
    assert meta["steps"]["audio_features"]["extractor"] == "whisper"
    assert "av_offset_frames" in meta["steps"]["audio_features"]


def test_landmarks_and_lms(processed):
    from instag.preprocess.mesh import MESH_TO_68

    layout, _ = processed
    lm = np.load(layout.landmarks)
    assert lm.shape == (N, 478, 3) and lm.dtype == np.float32
    assert (lm[..., :2] > 0).all() and (lm[..., :2] < 512).all()
    lms = np.loadtxt(layout.lms(7))
    assert lms.shape == (68, 2)
    np.testing.assert_allclose(lms, lm[7, MESH_TO_68, :2], atol=1e-3)
    # the 68-point layout: jaw spans the face, the chin (8) is its lowest point, eyes above the mouth
    assert lms[8, 1] == pytest.approx(lms[:17, 1].max(), abs=3)
    assert lms[36:48, 1].mean() < lms[48:68, 1].mean()


def test_parsing_colours(processed):
    layout, _ = processed
    par = cv2.imread(str(layout.parsing(10)))
    assert par.shape == (512, 512, 3)
    colours = {tuple(int(v) for v in c) for c in np.unique(par.reshape(-1, 3), axis=0)}
    assert colours <= set(PARSING_BGR.values())
    from instag.preprocess.parsing import decode

    masks = decode(par)
    total = 512 * 512
    assert 0.05 * total < masks["head"].sum() < 0.5 * total
    assert masks["background"].sum() > 0.1 * total
    assert masks["hair"].sum() > 0 and masks["torso"].sum() > 0 and masks["neck"].sum() > 0
    lm = np.load(layout.landmarks)[10]
    nose = np.round(lm[4, :2]).astype(int)
    assert masks["head"][nose[1], nose[0]]  # the nose tip is head
    assert masks["background"][5, 5] or masks["background"][5, -5]  # a top corner is background


def test_background_gt_torso(processed):
    layout, _ = processed
    bc = cv2.imread(str(layout.background))
    assert bc.shape == (512, 512, 3)
    assert len(list(layout.gt_dir.glob("*.jpg"))) == N
    torso = cv2.imread(str(layout.torso_image(3)), cv2.IMREAD_UNCHANGED)
    assert torso.shape == (512, 512, 4)
    alpha = torso[..., 3]
    assert set(np.unique(alpha)) <= {0, 255}
    assert (torso[..., :3][alpha == 0] == 0).all()
    par = cv2.imread(str(layout.parsing(3)))
    from instag.preprocess.parsing import decode

    masks = decode(par)
    assert (alpha[masks["torso"] | masks["neck"]] == 255).all()
    gt = cv2.imread(str(layout.gt_image(3))).astype(np.int16)
    bg = masks["background"]
    assert np.abs(gt[bg] - bc[bg].astype(np.int16)).mean() < 6  # background replaced by the plate


def test_teeth_masks(processed):
    from instag.preprocess.mesh import INNER_LIPS

    layout, _ = processed
    lm = np.load(layout.landmarks)
    any_teeth = 0
    for i in range(0, N, 5):
        mask = read_mask(layout.teeth_mask(i), "")
        assert mask.shape == (512, 512) and mask.dtype == bool
        lips = np.zeros((512, 512), np.uint8)
        cv2.fillPoly(lips, [np.round(lm[i, INNER_LIPS, :2]).astype(np.int32)], 1)
        assert not (mask & ~cv2.dilate(lips, np.ones((3, 3), np.uint8)).astype(bool)).any()
        any_teeth += int(mask.sum())
    assert any_teeth > 0  # she speaks: teeth show in some frame
    # where her mouth is widest open, the teeth (warm-lit, both rows) fill a good part of the inner-lip polygon:
    # the earlier HSV rule marked a third as much (8 % of it)
    from instag.metrics.lips import mouth_opening

    widest = int(np.nanargmax(mouth_opening(lm)))
    lips = np.zeros((512, 512), np.uint8)
    cv2.fillPoly(lips, [np.round(lm[widest, INNER_LIPS, :2]).astype(np.int32)], 1)
    mask = read_mask(layout.teeth_mask(widest), "")
    assert mask.sum() >= 0.15 * lips.sum(), (widest, mask.sum(), lips.sum())


def test_au_csv(processed):
    from instag.preprocess.au import AU_NAMES, read_au_csv

    layout, _ = processed
    header = layout.au_csv.read_text().splitlines()[0].split(",")
    assert header[:5] == ["frame", " face_id", " timestamp", " confidence", " success"]
    assert " AU45_r" in header and " AU25_r" in header
    table = read_au_csv(layout.au_csv)
    for name in AU_NAMES:
        v = table[f"{name}_r"]
        assert v.shape == (N,) and (v >= 0).all() and (v <= 5).all()
    assert table["AU25_r"].max() > 0.5  # lips part while talking
    assert table["frame"][0] == 1 and table["timestamp"][1] == pytest.approx(0.04)


def test_tracking_outputs(processed):
    layout, meta = processed
    params = torch.load(layout.track_params, weights_only=True)
    assert params["euler"].shape == (N, 3) and params["trans"].shape == (N, 3) and params["focal"].shape == (1,)
    assert params["shape"].shape == (478, 3)
    width = (params["shape"][454] - params["shape"][234]).norm()
    assert width == pytest.approx(0.18, rel=0.05)  # DESIGN's head units
    assert params["error_px"].mean() < 4.0
    report = meta["tracking"]
    assert 0.5 < report["camera_distance"] < 0.9
    assert report["tracker"]["rot_acc_deg"] < report["pnp"]["rot_acc_deg"]
    assert report["tracker"]["trans_acc"] < report["pnp"]["trans_acc"]


def test_transforms(processed):
    layout, _ = processed
    train = json.loads(layout.transforms("train").read_text())
    val = json.loads(layout.transforms("val").read_text())
    assert len(train["frames"]) == N * 10 // 11 and len(train["frames"]) + len(val["frames"]) == N
    assert train["cx"] == 256 and train["cy"] == 256 and train["focal_len"] > 100
    frame = train["frames"][0]
    assert frame["img_id"] == frame["aud_id"] == 0
    c2w = np.array(frame["transform_matrix"])
    rot = c2w[:3, :3]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-5)
    assert 0.5 < c2w[2, 3] < 0.9  # camera on the +z side of the head, ~0.7 away
    assert rot[2, 2] > 0.9  # OpenGL: the camera looks down its -z, i.e. toward the head at the origin
    # the landmarks project where MediaPipe found them (OpenGL c2w -> OpenCV w2c)
    params = torch.load(layout.track_params, weights_only=True)
    w2c = np.linalg.inv(c2w @ np.diag([1, -1, -1, 1]))
    pts = params["shape"].double().numpy() @ w2c[:3, :3].T + w2c[:3, 3]
    uv = train["focal_len"] * pts[:, :2] / pts[:, 2:] + 256
    lm = np.load(layout.landmarks)[0]
    assert np.median(np.linalg.norm(uv[:468] - lm[:468, :2], axis=-1)) < 5


def test_priors(processed):
    layout, _ = processed
    depth = read_depth(layout.depth_prior(5), "")
    normal = read_normal(layout.normal_prior(5), "")
    assert depth.shape == (512, 512) and normal.shape == (512, 512, 3)
    face = depth > 0
    assert 0.05 * 512 * 512 < face.sum() < 0.5 * 512 * 512
    assert 0.5 < depth[face].min() and depth[face].max() < 1.0
    np.testing.assert_allclose(np.linalg.norm(normal[face], axis=-1), 1, atol=0.02)
    assert (normal[face][:, 2] < 0).mean() > 0.95  # facing the camera (OpenCV z forward)
    assert (normal[~face] == 0).all()
    lm = np.load(layout.landmarks)[5]
    nose, cheek = np.round(lm[4, :2]).astype(int), np.round(lm[234, :2]).astype(int) + np.array([8, 0])
    assert depth[nose[1], nose[0]] < depth[cheek[1], cheek[0]]  # the nose is nearer than the cheek


def test_debug_and_meta(processed):
    layout, meta = processed
    overlays = sorted(layout.debug_dir.glob("frame_*.jpg"))
    assert len(overlays) == 2
    assert cv2.imread(str(overlays[0])).shape == (1024, 1024, 3)
    assert all(meta["steps"][s]["done"] for s in ("audio", "frames", "landmarks", "priors", "debug"))


def test_dataset_size(processed):
    """Issue 14's bar, a processed 5-s clip (125 frames) in at most 40 MB, scaled to this clip's frames; the
    depth/normal priors and teeth masks are PNGs, not raw arrays."""
    layout, _ = processed
    files = [p for p in layout.root.rglob("*") if p.is_file() and p.name != "may.mp4"]
    total = sum(p.stat().st_size for p in files)
    assert total <= 40e6 * N / 125, f"{total / 1e6:.1f} MB for {N} frames"
    assert not [p for p in files if p.suffix == ".npy" and p.parent != layout.root]  # only whole-clip arrays
    maps_bytes = sum(p.stat().st_size for d in (layout.depth_dir, layout.normal_dir, layout.teeth_dir) for p in d.iterdir())
    assert maps_bytes < 100e3 * N  # were 2.6 MB a frame as float16 / bool arrays


def test_clip_of_the_older_layout_keeps_loading(processed, tmp_path):
    """Teeth masks and priors stored as .npy (before the PNGs): every step counts as done, and training reads the
    same values (the PNG normals are 8-bit: within 1/254)."""
    from badinputs import run_cli

    from instag.data.dataset import FrameDataset, load_clip

    layout, _ = processed
    old = DatasetLayout.of(tmp_path / "may")
    shutil.copytree(layout.root, old.root)
    for i in range(N):
        for path, read, dtype in ((old.teeth_mask(i), read_mask, bool), (old.depth_prior(i), read_depth, np.float16),
                                  (old.normal_prior(i), read_normal, np.float16)):
            np.save(path.with_suffix(".npy"), read(path, "").astype(dtype))
            path.unlink()
    proc = run_cli("process", str(old.root / "may.mp4"))
    assert proc.returncode == 0 and proc.stdout.count("done before, skipped") == 13, proc.stdout + proc.stderr

    def sample(root, k):
        return FrameDataset([load_clip(root, "train", "whisper", with_priors=True)], with_priors=True)[(0, k)]

    for k in (0, 7):
        new, legacy = sample(layout.root, k), sample(old.root, k)
        assert (new["masks"] == legacy["masks"]).all() and (new["depth"] == legacy["depth"]).all()
        assert float((new["normal"] - legacy["normal"]).abs().max()) <= 1 / 254 + 1e-6
        assert float(legacy["depth"].max()) > 0.5 and float(legacy["normal"].abs().max()) > 0.5


def test_resume_skips_and_task_reruns(processed, capsys):
    from instag.preprocess.pipeline import ProcessConfig, run

    layout, _ = processed
    video = layout.root / "may.mp4"
    before = layout.track_params.stat().st_mtime_ns
    run(ProcessConfig(path=str(video)))
    out = capsys.readouterr().out
    assert out.count("skipped") == 13
    assert layout.track_params.stat().st_mtime_ns == before
    run(ProcessConfig(path=str(video), task="9"))
    assert "[ 9] transforms" in capsys.readouterr().out


def test_split(processed):
    from instag.preprocess.split import main

    layout, _ = processed
    with pytest.raises(InstagError, match="last 12 s"):
        main([str(layout.root / "may.mp4")])
    assert main([str(layout.root), "--val_fraction", "0.25"]) == 0
    val = json.loads(layout.transforms("val").read_text())["frames"]
    train = json.loads(layout.transforms("train").read_text())["frames"]
    assert len(val) == 15 and len(train) == 45 and val[0]["img_id"] == 45


def test_fix_av_offset_shifts_audio(processed, monkeypatch, capsys):
    from instag.io.wav import read_wav
    from instag.preprocess import av_sync
    from instag.preprocess.pipeline import ProcessConfig, run

    layout, _ = processed
    before, _ = read_wav(layout.audio_wav)
    monkeypatch.setattr(av_sync, "estimate_offset", lambda *a, **k: (3, 9.0))
    run(ProcessConfig(path=str(layout.root / "may.mp4"), task="2"))
    assert "audio lags the video by 3 frames" in capsys.readouterr().out
    np.testing.assert_array_equal(read_wav(layout.audio_wav)[0], before)  # reported, not changed
    meta = run(ProcessConfig(path=str(layout.root / "may.mp4"), task="audio_features", fix_av_offset=True))
    after, _ = read_wav(layout.audio_wav)
    assert meta["steps"]["audio_features"]["av_offset_fixed"] == 3
    shift = 3 * 16000 // 25
    np.testing.assert_allclose(after[: after.size - shift], before[shift:], atol=1e-4)


# ------------------------------------------------------------------------------------------ units
def test_fill_gaps():
    from instag.preprocess.landmarks import fill_gaps

    frames = [np.full((478, 3), float(i), np.float32) for i in range(20)]
    frames[5] = frames[6] = None
    out, filled = fill_gaps(frames, "clip")
    assert filled == [5, 6]
    np.testing.assert_allclose(out[5], 5.0) and np.testing.assert_allclose(out[6], 6.0)
    frames[8:15] = [None] * 7
    with pytest.raises(InstagError, match="frames 8-14"):
        fill_gaps(frames, "clip")


def test_pick_main_face():
    from instag.preprocess.landmarks import pick_main_face

    small = np.zeros((478, 3), np.float32)
    small[:, :2] = np.random.default_rng(0).uniform(10, 60, (478, 2))
    big = np.zeros((478, 3), np.float32)
    big[:, :2] = np.random.default_rng(1).uniform(150, 350, (478, 2))
    assert pick_main_face([small, big], 512, 512) == 1


def test_mesh_topology():
    from instag.preprocess.mesh import MESH_TO_68, face_oval, triangles

    tris = triangles()
    assert tris.shape[1] == 3 and 840 <= len(tris) <= 860 and tris.max() < 468
    assert len(set(MESH_TO_68.tolist())) == 68
    assert len(face_oval()) == 36


def test_rasterize_triangle():
    from instag.preprocess.priors import rasterize

    verts = torch.tensor([[-0.1, -0.1, 1.0], [0.1, -0.1, 1.0], [0.0, 0.1, 1.0], [-0.1, -0.1, 2.0], [0.1, -0.1, 2.0],
                          [0.0, 0.1, 2.0]], dtype=torch.float64)
    normals = torch.tensor([[0, 0, -1.0]] * 6, dtype=torch.float64)
    tris = torch.tensor([[3, 4, 5], [0, 1, 2]])
    depth, normal = rasterize(verts, normals, tris, 100.0, 64, 64)
    assert depth[32, 32] == pytest.approx(1.0)  # the nearer triangle wins the z-test
    assert depth[0, 0] == 0 and (normal[32, 32] == torch.tensor([0, 0, -1.0], dtype=torch.float64)).all()
    assert 150 < int((depth > 0).sum()) < 250  # area of the near triangle: 0.5 * 20 * 20 px


def test_euler_convention_matches_bfm():
    from instag.preprocess.bfm import euler_to_rotation
    from instag.preprocess.tracking import euler_from_matrix

    e = torch.tensor([[0.1, -0.2, 0.3], [-0.4, 0.05, 0.2]], dtype=torch.float64)
    np.testing.assert_allclose(euler_from_matrix(euler_to_rotation(e).numpy()), e.numpy(), atol=1e-9)


def test_au_csv_roundtrip(tmp_path):
    from instag.preprocess.au import read_au_csv, write_au_csv

    values = {"AU01_r": np.array([0.0, 1.5]), "AU45_r": np.array([2.0, 0.0])}
    write_au_csv(tmp_path / "au.csv", values)
    first = (tmp_path / "au.csv").read_text().splitlines()[0]
    assert first == "frame, face_id, timestamp, confidence, success, AU01_r, AU45_r, AU01_c, AU45_c"
    with pytest.raises(InstagError, match="AU04_r"):
        read_au_csv(tmp_path / "au.csv")  # training needs AU04 too
    openface = "frame, face_id, timestamp, confidence, success, " + ", ".join(
        f"AU{n}_r" for n in ("01", "04", "05", "06", "07", "25", "45")) + "\n1, 0, 0.0, 0.98, 1, 1, 2, 3, 4, 5, 0.5, 1.2\n"
    (tmp_path / "of.csv").write_text(openface)
    table = read_au_csv(tmp_path / "of.csv")
    assert table["AU45_r"][0] == pytest.approx(1.2) and table["AU01_r"][0] == 1


def test_choose_crop_wide_shot():
    from instag.io.video import VideoInfo
    from instag.preprocess.frames import choose_crop

    info = VideoInfo("v.mp4", 1920, 1080, 25.0, 100, 4.0, False, True, 48000, 2, "h264")
    crop = choose_crop(info, (np.array([900.0, 400.0]), 200.0), 1.0)
    x, y, w, h = crop["box"]
    assert crop["applied"] and w == h == 520 and crop["output_size"] == [512, 512]
    assert x <= 900 - 100 and x + w >= 900 + 100 and 0 <= y and y + h <= 1080
    keep = choose_crop(VideoInfo("v.mp4", 512, 512, 25.0, 100, 4.0, False, True, 48000, 2, "h264"),
                       (np.array([256.0, 256.0]), 200.0), 1.0)
    assert not keep["applied"]


def test_detached_dark_shoulders_become_torso_but_hanging_hair_stays():
    from instag.preprocess.parsing import HAIR, TORSO, _detached_hair_to_torso

    labels = np.zeros((120, 120), np.uint8)
    labels[5:40, 20:90] = HAIR  # hair on top of the head (above the eyes at row 40)
    labels[40:110, 20:34] = HAIR  # long hair hanging down beside the face, attached to it
    labels[95:120, 90:120] = HAIR  # a dark shoulder beside a low chin, not attached
    labels[10:14, 100:110] = HAIR  # a detached strand above the eyes stays hair
    labels[60:100, 86:88] = HAIR  # a 2-px seam joining the shoulder to nothing above
    _detached_hair_to_torso(labels, eye_y=40, below_y=70)
    assert (labels[40:110, 20:34] == HAIR).all() and (labels[5:40, 20:90] == HAIR).all()
    assert (labels[95:120, 95:120] == TORSO).all()
    assert (labels[10:14, 100:110] == HAIR).all()


def test_parsing_labels_a_dark_suit_beside_a_low_chin_as_torso():
    """Real frame (dfrf_cnn2_25fps, frame 1518): the suit's shoulders reach above the chin beside the face and look
    like dark hair; they must be torso (the torso layer then keeps them), while the hair on the head stays hair."""
    from instag.preprocess.landmarks import FaceMeshDetector
    from instag.preprocess.parsing import HAIR, TORSO, PersonSegmenter, parse_frame

    video = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video" / "dfrf_cnn2_25fps.mp4"
    if not video.exists():
        pytest.skip(f"{video} absent (../shared/data not beside the checkout)")
    cap = cv2.VideoCapture(str(video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 1518)
    ok, bgr = cap.read()
    cap.release()
    assert ok and bgr.shape[:2] == (512, 512)
    with FaceMeshDetector() as det:
        lm = det.detect(bgr)
    seg = PersonSegmenter()
    try:
        labels = parse_frame(seg(bgr), lm, bgr)
    finally:
        seg.close()
    shoulders = labels[415:440, 60:170]  # dark suit left of the neck, above the chin (y ≈ 447)
    assert (shoulders == TORSO).mean() > 0.8 and (shoulders == HAIR).mean() < 0.05
    assert (labels[40:120, 200:320] == HAIR).mean() > 0.8  # the hair on top of the head


def test_a_moved_processed_folder_is_still_the_same_video(tmp_path):
    from instag.preprocess.pipeline import same_video

    facts = {"width": 512, "height": 512, "fps": 25.0, "num_frames": 500, "duration": 20.0, "codec": "h264"}
    new = {"path": str(tmp_path / "b" / "clip.mp4"), **facts}
    assert same_video({"path": "/elsewhere/a/clip.mp4", **facts}, new, tmp_path / "b" / "clip.mp4")
    assert not same_video({"path": "/elsewhere/a/clip.mp4", **facts, "num_frames": 499}, new, tmp_path / "b" / "clip.mp4")
    assert not same_video({"path": "/elsewhere/a/other.mp4", **facts}, new, tmp_path / "b" / "clip.mp4")
    assert not same_video({"path": str(tmp_path / "b" / "clip.mp4")}, new, tmp_path / "b" / "clip.mp4")  # a path proves nothing
