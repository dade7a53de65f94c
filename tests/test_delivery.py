"""Delivery controls (mouth scale, smoothing, expression intensity), their limits, and the UCB1 delivery policy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from badinputs import fused_model, synthetic_dataset
from synthetic_clip import speech

from instag.infer.delivery import (
    ARMS,
    LIMITS,
    Controls,
    MouthScaler,
    arm_statistics,
    choose,
    footage_gap,
    mouth_scaler,
    predicted_gap,
    resolve,
    session_reward,
    smooth_items,
    state_path,
    ucb1,
)
from instag.io.wav import write_wav


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    from instag.data.dataset import load_clip
    from instag.infer.features import audio_items
    from instag.infer.synthesize import load_model

    root = tmp_path_factory.mktemp("delivery")
    data, out = root / "data" / "p", root / "output" / "p"
    synthetic_dataset(data, size=48, n_train=12, n_val=4)
    fused_model(out)
    wav = root / "talk.wav"
    write_wav(wav, speech(20, seed=3)[0], 16000)
    model = load_model(out, None, "cpu", source=data)
    items, _ = audio_items(str(wav), "mel", None)
    return {"data": data, "out": out, "wav": wav, "model": model, "clip": load_clip(data, "train", "mel"), "items": items}


def windows_of(items):
    from instag.audio.windows import frame_windows

    return frame_windows(items, torch.arange(items.shape[0]))


def test_neutral_controls_render_what_plain_synthesis_renders(head):
    from instag.infer.synthesize import Backgrounds, Director, render_frames

    model, clip, items = head["model"], head["clip"], head["items"]
    assert mouth_scaler(model, clip, Controls()) is None
    assert smooth_items(items, 0.0) is items
    cam = clip.frames[0].camera
    frames = []
    for director in (Director(clip), Director(clip, controls=Controls())):
        plan = director.plan(0, items.shape[0])
        backgrounds = Backgrounds(clip.layout, (cam.height, cam.width))
        frames.append(np.stack(list(render_frames(model, plan, director.quiet_items(items, None, "mel"), backgrounds))))
        backgrounds.close()
    np.testing.assert_array_equal(frames[0], frames[1])


class LinearGapHead:
    """A stand-in for the model whose predicted lip gap is the mean of the audio window: linear in the scale."""

    device = torch.device("cpu")
    align = False

    class face_field:  # noqa: N801 - the attribute name of TalkingHead
        @staticmethod
        def audio(windows):
            return windows.flatten(1)

    @staticmethod
    def hook(face_audio, align):
        return torch.stack([torch.zeros(len(face_audio)), torch.zeros(len(face_audio)), face_audio.mean(1)], 1)


def test_mouth_scale_moves_the_gap_monotonically_and_is_capped(head):
    from instag.infer.features import silence_items

    model, windows, silence = LinearGapHead(), windows_of(head["items"]), silence_items(8, "mel")
    gap_silence = predicted_gap(model, silence[None])
    spread = []
    for scale in (0.6, 0.8, 1.2, 1.4):
        scaled = MouthScaler(model, scale, np.inf, silence)(windows)
        spread.append(float((predicted_gap(model, scaled) - gap_silence).abs().mean()))
    plain = predicted_gap(model, windows)
    assert spread == pytest.approx([s * float((plain - gap_silence).abs().mean()) for s in (0.6, 0.8, 1.2, 1.4)], rel=1e-4)
    assert spread == sorted(spread)

    capped = MouthScaler(model, 1.5, -np.inf, silence)  # a footage gap below every frame: no frame may open more
    gap = predicted_gap(model, capped(windows))
    assert bool((gap <= plain + 1e-5).all())
    assert bool((plain > gap_silence).all()) and capped.applied == [1.0] * len(plain)  # every frame opens: none grows
    middle = float(plain.median())
    part = MouthScaler(model, 1.5, middle, silence)
    assert bool((predicted_gap(model, part(windows)) <= torch.clamp(plain, min=middle) + 1e-5).all())
    applied = np.array(part.applied)
    assert (applied[plain.numpy() >= middle] == 1.0).all() and (applied > 1.0).any() and applied.max() <= 1.5

    real, clip = head["model"], head["clip"]  # the real head: the footage gap is finite and the limit holds
    limit = footage_gap(real, clip)
    assert np.isfinite(limit)
    out = MouthScaler(real, 1.5, limit, silence)(windows)
    assert bool((predicted_gap(real, out) <= torch.clamp(predicted_gap(real, windows), min=limit) + 1e-6).all())


def test_smoothing_is_a_causal_ema():
    x = torch.tensor([0.0, 1.0, 1.0, 0.0]).reshape(4, 1, 1)
    y = smooth_items(x, 0.5).ravel().tolist()
    assert y == pytest.approx([0.0, 0.5, 0.75, 0.375])
    assert smooth_items(x[:2], 0.5).ravel().tolist() == pytest.approx(y[:2])  # a prefix does not see the future


def test_expression_intensity_scales_the_requested_amount(head):
    from instag.data.format import EXPRESSION_AUS
    from instag.infer.performance import performance_from_options
    from instag.infer.synthesize import Director

    clip = head["clip"]
    perf = performance_from_options(None, "AU12:2@0-10", None, "still", None)
    rest = Director(clip, perf, controls=Controls()).performer.rest
    col = EXPRESSION_AUS.index("AU12")
    full = Director(clip, perf).plan(15, 16).au_exp[0, col] - rest[col]
    half = Director(clip, perf, controls=Controls(expression_intensity=0.5)).plan(15, 16).au_exp[0, col] - rest[col]
    assert full == pytest.approx(2.0, abs=1e-4)
    assert half == pytest.approx(1.0, abs=1e-4)


def test_controls_are_clamped_to_their_limits():
    arm, c = resolve("unused", None, Controls(3.0, -1.0, 9.0), log=lambda *_: None)
    assert arm is None and c == Controls(LIMITS["mouth_scale"][1], 0.0, LIMITS["expression_intensity"][1])
    for a in ARMS:
        assert a.clamped() == a
    assert ARMS[0].neutral


def test_reward_combines_sync_and_thumbs():
    assert session_reward({"sync": {"score": 0.5}}, None) == pytest.approx(0.75)
    assert session_reward({"sync": {"score": 0.5}}, "up") == pytest.approx(0.4 * 0.75 + 0.6)
    assert session_reward({"sync": {"score": None}}, "down") == 0.0
    assert session_reward({}, None) is None


def test_ucb1_converges_to_the_best_arm_on_logged_rewards(tmp_path):
    from instag.infer.sessionlog import append_record, feedback_record

    rng = np.random.default_rng(0)
    p_up = np.linspace(0.2, 0.5, len(ARMS))
    p_up[7] = 0.9  # the best arm
    records: list[dict] = []
    counts, sums = np.zeros(len(ARMS)), np.zeros(len(ARMS))
    for k in range(2000):
        arm = ucb1(counts, sums)
        session = {"type": "session", "id": f"s{k}", "settings": {"delivery": {"arm": arm}},
                   "sync": {"score": float(rng.normal(0.3, 0.1))}}
        rating = "up" if rng.random() < p_up[arm] else "down"
        records += [session, feedback_record(session["id"], rating)]
        counts[arm] += 1
        sums[arm] += session_reward(session, rating)
    logged_counts, logged_sums = arm_statistics(records)
    np.testing.assert_array_equal(logged_counts, counts)
    np.testing.assert_allclose(logged_sums, sums)
    assert int(np.argmax(counts)) == 7 and counts[7] > 0.5 * counts.sum()

    for rec in records:  # the same from the log on disk, and the state it writes
        append_record(tmp_path, rec)
    arm, controls = choose(tmp_path)
    assert arm == 7 and controls == ARMS[7]
    state = json.loads(state_path(tmp_path).read_text())
    assert state["chosen"] == 7 and sum(a["sessions"] for a in state["arms"]) == 2000


def test_delivery_auto_records_its_arm_in_the_session_log(head):
    from instag.cli import main
    from instag.infer.sessionlog import append_record, feedback_record, read_records

    args = ["-S", str(head["data"]), "-M", str(head["out"]), "--audio", str(head["wav"]), "--device", "cpu", "--quiet",
            "--delivery", "auto"]
    assert main(["synthesize", *args]) == 0
    first_id = [r for r in read_records(head["out"])[0] if r["type"] == "session"][-1]["id"]
    append_record(head["out"], feedback_record(first_id, "up"))  # feedback counts even where a sync score is missing
    assert main(["synthesize", *args, "--output", str(head["out"] / "second.mp4")]) == 0
    sessions = [r for r in read_records(head["out"])[0] if r["type"] == "session"]
    first, second = (s["settings"]["delivery"] for s in sessions[-2:])
    assert first["arm"] == 0 and first["mouth_scale"] == 1.0  # the neutral arm is tried first
    assert second["arm"] == 1 and second["expression_intensity"] == ARMS[1].expression_intensity
    assert json.loads(state_path(head["out"]).read_text())["arms"][0]["sessions"] == 1


def test_stream_applies_and_logs_the_controls(head):
    from instag.cli import main
    from instag.infer.sessionlog import read_records

    args = ["-S", str(head["data"]), "-M", str(head["out"]), "--audio", str(head["wav"]), "--device", "cpu", "--quiet",
            "--mouth_scale", "1.3", "--smoothing", "0.9"]
    assert main(["stream", *args, "--chunk_ms", "100"]) == 0
    rec = [r for r in read_records(head["out"])[0] if r["type"] == "session"][-1]
    delivery = rec["settings"]["delivery"]
    assert rec["kind"] == "stream" and delivery["arm"] is None
    assert delivery["mouth_scale"] == 1.3 and delivery["smoothing"] == LIMITS["smoothing"][1]  # 0.9 clamped
    assert 1.0 <= delivery["mouth_scale_applied_min"] <= delivery["mouth_scale_applied_mean"] <= 1.3
