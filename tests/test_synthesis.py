"""Synthesis, streaming and evaluation on a tiny generated clip and a randomly initialised head (CPU)."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
from synthetic_clip import make_clip, speech  # tests/synthetic_clip.py: the shared generated clip

from instag.data.format import DatasetLayout
from instag.infer.features import MelFeatureBuilder, mel_items
from instag.infer.performance import Performance, Performer
from instag.infer.pose import pingpong
from instag.infer.synthesize import SynthesizeConfig, synthesize
from instag.io.encode import probe_media
from instag.io.wav import write_wav

SIZE = 48
N_TRAIN, N_VAL = 12, 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A generated processed clip (data/<ID> layout, 20 frames at 48²) and a fused random-init checkpoint."""
    from instag.model.talking_head import TalkingHead

    root = tmp_path_factory.mktemp("data") / "tiny"
    make_clip(root, size=SIZE, n_train=N_TRAIN, n_val=N_VAL)
    model_dir = tmp_path_factory.mktemp("output") / "tiny"
    head = TalkingHead.create("mel", (80, 16), face_init=300, mouth_init=100, generator=torch.Generator().manual_seed(0))
    head.save(model_dir)
    wav = root.parent / "new speech.wav"  # a space in the name on purpose
    write_wav(wav, speech(33, seed=1)[0], 16000)  # 1.32 s = 33 frames
    return {"root": root, "model": model_dir, "wav": wav}


def test_pingpong_has_no_jump():
    seq = [pingpong(k, 4) for k in range(10)]
    assert seq == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert all(abs(a - b) == 1 for a, b in zip(seq[:-1], seq[1:]))
    assert [pingpong(k, 1) for k in range(3)] == [0, 0, 0]


def test_blink_track_rate_and_prefix_stability():
    train = np.zeros((250, 9), np.float32)
    train[:, -1] = np.where((np.arange(250) + 25) % 50 < 7, 2.0, 0.1)  # AU45: 5 blinks in 10 s
    frames = np.arange(1500)
    track = Performer(train, True, Performance(), seed=3).au(train[frames % 250], frames)[:, -1]
    assert track.min() == pytest.approx(np.percentile(train[:, -1], 10))
    rises = int(np.sum((track[1:] > 1.0) & (track[:-1] <= 1.0)))
    assert 25 <= rises <= 30  # the clip's 30 a minute
    again = Performer(train, True, Performance(), seed=3).au(train[frames[:700] % 250], frames[:700])[:, -1]
    np.testing.assert_array_equal(again, track[:700])  # a stream asking for less gets the same prefix


def test_blockwise_mel_matches_extractor_and_chunking():
    from instag.audio.mel import log_mel_windows

    samples = speech(35)[0][: int(1.37 * 16000)]  # not a whole number of frames on purpose
    items, ref = mel_items(samples)
    offline = torch.from_numpy(log_mel_windows(samples)).permute(0, 2, 1)
    assert items.shape == offline.shape
    torch.testing.assert_close(items, offline, atol=2e-5, rtol=0)
    builder = MelFeatureBuilder(ref)
    for s in range(0, samples.size, 3200):  # 200-ms chunks
        builder.push(samples[s : s + 3200])
        ready = builder.ready_frames()
        assert ready <= items.shape[0]
        if ready:
            assert torch.equal(builder.items(ready), items[:ready])  # final frames never change
    builder.finish()
    assert torch.equal(builder.items(builder.total_frames()), items)


def test_synthesis_writes_mp4_with_audio(tiny):
    out = tiny["model"] / "inference" / "new speech.mp4"
    cfg = SynthesizeConfig(source_path=str(tiny["root"]), model_path=str(tiny["model"]), audio=str(tiny["wav"]),
                           dilate=True, save_frames=True, device="cpu")
    result = synthesize(cfg, log=lambda *_: None)
    assert result["output"] == str(out) and result["frames"] == 33
    info = probe_media(out)
    assert info["frames"] == 33
    assert info["audio_seconds"] == pytest.approx(33 / 25, abs=0.05)
    assert "synthesized by instag" in (info["comment"] or "")
    pngs = sorted((out.parent / "new speech").glob("*.png"))
    assert len(pngs) == 33


def test_stream_equals_offline(tiny):
    from instag.infer.stream import StreamSynthesizer, stream_frames
    from instag.infer.synthesize import Backgrounds, load_model, pingpong_plan, render_frames
    from instag.io.wav import load_audio_16k_mono

    samples = load_audio_16k_mono(tiny["wav"])
    synth = StreamSynthesizer.from_paths(tiny["root"], tiny["model"], "cpu", batch=1)
    chunks = [samples[s : s + 3200] for s in range(0, samples.size, 3200)]
    streamed = list(stream_frames(synth, chunks))
    assert synth.first_frame_audio_s == pytest.approx(0.4)  # 292 ms needed, arriving with the 2nd chunk

    from instag.data.dataset import load_clip

    model = load_model(tiny["model"], None, "cpu")
    clip = load_clip(tiny["root"], "train", "mel")
    items, _ = mel_items(samples, synth.reference_db)
    plan = pingpong_plan(clip, items.shape[0])
    offline = list(render_frames(model, plan, items, Backgrounds(clip.layout, (SIZE, SIZE)), batch=1))
    assert len(streamed) == len(offline) == 33
    for k, (a, b) in enumerate(zip(streamed, offline)):
        assert np.array_equal(a, b), f"frame {k} differs"


def test_evaluate_model_writes_report(tiny):
    pytest.importorskip("mediapipe")
    from instag.metrics.evaluate import evaluate_model

    res = evaluate_model(tiny["root"], tiny["model"], device="cpu", log=lambda *_: None)
    assert res["frames"] == N_VAL
    for run in ("ours", "static"):
        m = res[run]
        assert m["frames"] == N_VAL and math.isfinite(m["psnr"]) and 0 < m["psnr"] < 60 and -1 <= m["ssim"] <= 1
    out = tiny["model"] / "test" / "ours_None"
    assert probe_media(out / "renders" / "out.mp4")["frames"] == N_VAL
    assert probe_media(out / "side_by_side.mp4")["audio_seconds"] == pytest.approx(N_VAL / 25, abs=0.05)
    assert len(list((out / "renders").glob("*.png"))) == N_VAL
    plot = cv2.imread(str(out / "mouth_opening.png"))
    assert plot is not None and plot.shape[1] == 1200
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["ours"]["frames"] == N_VAL and any("LPIPS" in n for n in saved["notes"])
    assert "quietest" in saved["static_audio"]


def test_evaluate_training_split_scores_the_first_n_views(tiny, capsys):
    from instag.cli import main

    assert main(["evaluate", "-S", str(tiny["root"]), "-M", str(tiny["model"]), "--split", "train", "--N_views", "5",
                 "--no_static", "--device", "cpu"]) == 0
    assert "5 training frames" in capsys.readouterr().out
    saved = json.loads((tiny["model"] / "train" / "ours_None" / "metrics.json").read_text())
    assert saved["split"] == "train" and saved["frames"] == 5 and saved["static"] is None
    assert math.isfinite(saved["ours"]["psnr"])


def test_full_frame_pastes_into_source_framing(tiny, tmp_path):
    from instag.io.encode import write_video

    layout = DatasetLayout.of(tiny["root"])
    source = [np.full((64, 80, 3), 30 + i, np.uint8) for i in range(N_TRAIN + N_VAL)]
    write_video(layout.video, source)
    layout.crop.write_text(json.dumps({"applied": True, "box": [20, 8, 48, 48], "source_size": [80, 64],
                                       "output_size": [SIZE, SIZE], "scale": 1.0}))
    try:
        cfg = SynthesizeConfig(source_path=str(tiny["root"]), model_path=str(tiny["model"]), audio=str(tiny["wav"]),
                               full_frame=True, save_frames=True, output=str(tmp_path / "full.mp4"), device="cpu")
        synthesize(cfg, log=lambda *_: None)
    finally:
        layout.crop.unlink()
        layout.video.unlink()
    frame = cv2.imread(str(tmp_path / "full" / "00000.png"))
    assert frame.shape == (64, 80, 3)
    assert abs(int(frame[2, 2, 0]) - 30) <= 3  # outside the box: the source frame (pingpong frame 0)
    assert probe_media(tmp_path / "full.mp4")["frames"] == 33


def test_synthesis_from_feature_file(tiny, tmp_path):
    from instag.audio.mel import MelExtractor
    from instag.io.atomic import save_npy
    from instag.io.wav import load_audio_16k_mono

    feats = tiny["wav"].with_name("new speech_mel.npy")
    save_npy(feats, MelExtractor().extract(load_audio_16k_mono(tiny["wav"])))
    cfg = SynthesizeConfig(source_path=str(tiny["root"]), model_path=str(tiny["model"]), audio=str(feats),
                           output=str(tmp_path / "f.mp4"), device="cpu", batch=4)
    result = synthesize(cfg, log=lambda *_: None)
    info = probe_media(tmp_path / "f.mp4")
    assert result["audio_muxed"] and info["frames"] == 33  # the wav beside the features is muxed
    assert info["audio_seconds"] == pytest.approx(1.32, abs=0.05)


def test_low_latency_stream(tiny):
    from instag.infer.stream import StreamSynthesizer
    from instag.io.wav import load_audio_16k_mono

    samples = load_audio_16k_mono(tiny["wav"])
    synth = StreamSynthesizer.from_paths(tiny["root"], tiny["model"], "cpu", batch=1, lookahead_ms=100)
    first = list(synth.push(samples[:3200]))  # the first 200 ms
    assert len(first) == 3  # frames 0, 1, 2 (2·40 + 100 <= 200 ms)
    for s in range(3200, samples.size, 3200):
        first += list(synth.push(samples[s : s + 3200]))
    frames = first + list(synth.finish())
    assert len(frames) == 33 and all(f.shape == (SIZE, SIZE, 3) for f in frames)


@pytest.mark.gpu
def test_stream_matches_offline_on_gpu(tiny):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from instag.data.dataset import load_clip
    from instag.infer.stream import StreamSynthesizer, stream_frames
    from instag.infer.synthesize import Backgrounds, pingpong_plan, render_frames
    from instag.io.wav import load_audio_16k_mono

    samples = load_audio_16k_mono(tiny["wav"])
    synth = StreamSynthesizer.from_paths(tiny["root"], tiny["model"], "cuda", batch=8)
    streamed = list(stream_frames(synth, [samples[s : s + 3200] for s in range(0, samples.size, 3200)]))
    clip = load_clip(tiny["root"], "train", "mel")
    items, _ = mel_items(samples, synth.reference_db)
    offline = list(render_frames(synth.model, pingpong_plan(clip, items.shape[0]), items,
                                 Backgrounds(clip.layout, (SIZE, SIZE)), batch=8))
    assert len(streamed) == len(offline) == 33
    # batches of other sizes may round differently on the GPU: at most one level apart
    assert max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(streamed, offline)) <= 1
