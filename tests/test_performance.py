"""Conversational control at synthesis (issue 17): the AU condition, timelines, AU blending, blinks, head pose
drivers and gestures, pauses, and stream events (CPU, tiny generated clip and random heads)."""

from __future__ import annotations

import json
import queue

import numpy as np
import pytest
import torch
from synthetic_clip import make_clip, speech  # tests/synthetic_clip.py

from instag.audio.activity import SilenceTracker, silent_frames
from instag.data.format import EXPRESSION_AUS, FPS, LEGACY_EXPRESSION_AUS
from instag.errors import InstagError
from instag.infer import performance as pf
from instag.infer import pose as ps
from instag.io.wav import write_wav

AU = {a: k for k, a in enumerate(EXPRESSION_AUS)}
SIZE, N_TRAIN = 48, 40


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A generated clip (40 training frames at 48², its head turning) and a random fused head."""
    from instag.model.talking_head import TalkingHead

    root = tmp_path_factory.mktemp("data") / "tiny"
    make_clip(root, size=SIZE, n_train=N_TRAIN, n_val=4)
    model = tmp_path_factory.mktemp("output") / "tiny"
    TalkingHead.create("mel", (80, 16), face_init=300, mouth_init=100, generator=torch.Generator().manual_seed(0)).save(model)
    wav = root.parent / "speech.wav"
    write_wav(wav, speech(30, seed=2)[0], 16000)
    return {"root": root, "model": model, "wav": wav}


def _clip(tiny):
    from instag.data.dataset import load_clip

    return load_clip(tiny["root"], "train", "mel")


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400
    return msg


# ---------------------------------------------------------------------------------------- AU condition
def _legacy_head():
    from instag.model.motion import PersonalizedField, UniversalFaceField
    from instag.model.talking_head import TalkingHead

    head = TalkingHead.create("mel", (80, 16), 150, 60, face_field=UniversalFaceField((80, 16), au_dim=6),
                              generator=torch.Generator().manual_seed(0))
    head.face_personal = PersonalizedField("face", (80, 16), au_dim=6)
    return head


def test_old_six_au_checkpoint_loads_and_ignores_the_new_aus(tmp_path):
    from instag.model.talking_head import TalkingHead
    from instag.render import Camera

    _legacy_head().save(tmp_path)
    head = TalkingHead.load(tmp_path, device="cpu")
    assert head.face_field.expression.columns == LEGACY_EXPRESSION_AUS
    cam = Camera.look_at((0, 0, 0.7), (0, 0, 0), focal=60, width=32, height=32)
    window, bg = torch.randn(8, 80, 16), torch.rand(3, 32, 32)
    au = torch.rand(len(EXPRESSION_AUS))
    other = au.clone()
    other[[AU["AU02"], AU["AU12"], AU["AU15"]]] += 3.0  # AUs the old model never had
    a = head.render_frame(cam, window, au, bg)["image"]
    assert torch.equal(a, head.render_frame(cam, window, other, bg)["image"])
    six = au[[AU[n] for n in LEGACY_EXPRESSION_AUS]]  # the old six-wide condition, as old callers pass it
    assert torch.equal(a, head.render_frame(cam, window, six, bg)["image"])
    other[AU["AU04"]] += 3.0  # one it had does move the face
    assert not torch.equal(a, head.render_frame(cam, window, other, bg)["image"])


def test_new_aus_reach_the_face_field():
    from instag.model.motion import UniversalFaceField

    torch.manual_seed(0)
    field = UniversalFaceField((80, 16))
    assert field.expression.columns == EXPRESSION_AUS
    xyz, audio = (torch.rand(40, 3) - 0.5) * 0.2, torch.randn(1, 32)
    au = torch.zeros(1, len(EXPRESSION_AUS))
    smile = au.clone()
    smile[0, AU["AU12"]] = 3.0
    neutral = field(xyz, audio, au).d_xyz
    assert (field(xyz, audio, smile).d_xyz - neutral).abs().max() > 1e-3 * neutral.abs().max()


def test_adaptation_from_an_old_pretraining_keeps_its_six_aus(tmp_path):
    from instag.model.motion import UniversalFaceField
    from instag.model.talking_head import TalkingHead
    from instag.train.checkpoint import load_universal, save_universal

    save_universal(tmp_path, "face", UniversalFaceField((80, 16), au_dim=6).state_dict(), {"audio_extractor": "mel", "iteration": 1})
    head = TalkingHead.create("mel", (80, 16), 50, 50)
    load_universal(tmp_path, "face", head.face_field, "mel")
    assert head.face_field.expression.columns == LEGACY_EXPRESSION_AUS
    assert head.face_field.net[0].in_features == head.face_field.encoder.output_dim + 32 + 6


def test_adaptation_keeps_the_pretrained_au_responses(tiny):
    from instag.model.talking_head import TalkingHead
    from instag.train.config import stage_config
    from instag.train.engine import Identity, Trainer

    clip = _clip(tiny)
    for mode, trained in (("adapt", False), ("pretrain", True)):
        head = TalkingHead.create("mel", (80, 16), 80, 60, 1, generator=torch.Generator().manual_seed(0))
        before = {k: v.clone() for k, v in head.face_field.expression.state_dict().items()}
        cfg = stage_config("face", mode, 6).replace(warmup=1)
        trainer = Trainer(cfg, [Identity(clip, head)], torch.device("cpu"))
        assert all(p.requires_grad == trained for p in head.face_field.expression.parameters())
        if mode == "adapt":
            trainer.run(0, progress=False)
            after = head.face_field.expression.state_dict()
            assert all(torch.equal(before[k], after[k]) for k in before)
            assert any(p.requires_grad for p in head.face_field.net.parameters())  # the rest still adapts


def test_dataset_reads_the_new_aus_and_zeros_a_trimmed_csv(tiny, tmp_path):
    from instag.data.dataset import AU_EXP_COLUMNS, load_clip
    from instag.data.format import DatasetLayout
    from instag.preprocess.au import read_au_csv, write_au_csv

    clip = _clip(tiny)  # the generated csv has no AU02, AU12, AU15
    assert clip.au_exp.shape == (N_TRAIN, len(EXPRESSION_AUS)) and list(AU_EXP_COLUMNS)[-1] == "AU45_r"
    assert not clip.au_exp[:, [AU["AU02"], AU["AU12"], AU["AU15"]]].any()
    layout = DatasetLayout.of(tiny["root"])
    saved = layout.au_csv.read_bytes()
    try:
        table = {k: v for k, v in read_au_csv(layout.au_csv).items() if k.endswith("_r")}
        n = len(table["AU01_r"])
        table["AU02_r"] = np.linspace(0, 3, n)
        table["AU12_r"] = 2.0 + np.where(np.arange(n) % 4 < 2, 1.0, -1.0)  # a smile under fast speech-like wiggles
        write_au_csv(layout.au_csv, table)
        clip = load_clip(tiny["root"], "train", "mel")
        np.testing.assert_allclose(clip.au_exp[:, AU["AU02"]], table["AU02_r"][:N_TRAIN], atol=0.006)
        np.testing.assert_allclose(clip.au_exp[5:-5, AU["AU12"]], 2.0, atol=0.1)  # the condition keeps the slow part
    finally:
        layout.au_csv.write_bytes(saved)


# ---------------------------------------------------------------------------------------- timelines
def test_expression_flag_parses_presets_times_and_single_aus():
    cues = pf.parse_expression_arg("happy:0.7@2.0-4.5, surprised:0.5@6-7,sad,AU12:2@1-,brows_up@3")
    assert [(c.label, c.intensity, c.start, c.end) for c in cues] == [
        ("happy", 0.7, 2.0, 4.5), ("surprised", 0.5, 6.0, 7.0), ("sad", 1.0, 0.0, None), ("aus", 1.0, 1.0, None),
        ("brows_up", 1.0, 3.0, None)]
    assert cues[0].amounts == pf.PRESETS["happy"] and set(cues[0].amounts) == {"AU06", "AU12"}
    assert set(cues[1].amounts) == {"AU01", "AU02", "AU05"} and set(cues[2].amounts) == {"AU01", "AU04", "AU15"}
    assert cues[3].amounts == {"AU12": 2.0}
    assert set(pf.PRESETS["angry"]) == {"AU04", "AU07"}


@pytest.mark.parametrize("text,words", [
    ("happy:0.7@2-4.5,hapy:0.5@6-7", ["item 2", "'hapy:0.5@6-7'", "unknown expression", "happy"]),
    ("happy:1.5@2-3", ["item 1", "intensity", "from 0 to 1"]),
    ("happy:0.5@4-3", ["item 1", "not after its start"]),
    ("happy:x@1-2", ["item 1", "amount 'x' is not a number"]),
    ("happy:0.5@@1", ["item 1", "start '@1' is not a number"]),
    ("happy:0.5@1-2-3", ["item 1", "end '2-3' is not a number"]),
    ("", ["item 1", "NAME[:INTENSITY][@START[-END]]"]),
    ("AU45:1@1-2", ["item 1", "'AU45'", "blinks are events"]),
])
def test_bad_expression_flags_name_the_item(text, words):
    with pytest.raises(InstagError) as err:
        pf.parse_expression_arg(text)
    msg = one_line(err)
    assert msg.startswith("--expression item") and all(w in msg for w in words), msg


PERF = {
    "blink": 12, "pose": "still", "pauses": False, "au_csv": "curve.csv",
    "events": [
        {"expression": "happy", "intensity": 0.7, "start": 2.0, "end": 4.5},
        {"aus": {"AU01": 2.0, "AU02_r": 2.5}, "start": 5, "duration": 1, "ramp": 0.2},
        {"blink": 7.2}, {"blink": True, "at": 8.0, "duration": 0.25},
        {"gesture": "nod", "at": 8.0, "duration": 1.0, "amplitude": 8, "times": 2},
        {"gesture": "tilt", "start": 9}]}


def test_performance_file_holds_every_item(tmp_path):
    path = tmp_path / "perf.json"
    path.write_text(json.dumps(PERF))
    perf = pf.load_performance(path)
    assert perf.blink == "12" and perf.pose == "still" and perf.pauses is False
    assert perf.au_csv == str(tmp_path / "curve.csv")  # relative to the file
    assert [(c.label, c.start, c.end) for c in perf.expressions] == [("happy", 2.0, 4.5), ("aus", 5.0, 6.0)]
    assert perf.expressions[1].amounts == {"AU01": 2.0, "AU02": 2.5} and perf.expressions[1].ramp == 0.2
    assert perf.blinks == [pf.BlinkCue(7.2), pf.BlinkCue(8.0, 0.25)]
    assert perf.gestures == [pf.GestureCue("nod", 8.0, 1.0, 8.0, 2), pf.GestureCue("tilt", 9.0, 2.0, 8.0, 1)]
    (tmp_path / "curve.csv").write_text("frame, AU01_r\n1, 0.5\n")  # the file must exist by the time flags join it
    flags = pf.performance_from_options(str(path), expression="sad@1-2", blink="off", pose="train")
    assert flags.blink == "off" and flags.pose == "train" and [c.label for c in flags.expressions] == ["happy", "aus", "sad"]


@pytest.mark.parametrize("change,words", [
    (lambda d: d["events"][1].update(intesity=0.5), ["events[1]", "unknown key 'intesity'", "intensity"]),
    (lambda d: d["events"][0].update(expression="joyful"), ["events[0]", "unknown expression 'joyful'"]),
    (lambda d: d["events"][4].update(gesture="wave"), ["events[4]", "unknown gesture 'wave'", "nod, shake, tilt"]),
    (lambda d: d["events"][2].update(blink=-1), ["events[2]", "blink time", "at least 0"]),
    (lambda d: d["events"][3].update(duration=0.5), ["events[3]", "duration must be from 0.1 to 0.3"]),
    (lambda d: d["events"].append({"expression": "sad", "gesture": "nod"}), ["events[6]", "exactly one of"]),
    (lambda d: d["events"].append(["happy"]), ["events[6]", "must be a JSON object"]),
    (lambda d: d.update(blinks=3), ["unknown setting 'blinks'"]),
    (lambda d: d.update(blink="often"), ["blink", "auto, off or blinks per minute"]),
    (lambda d: d.update(events={"a": 1}), ['"events" must be a list']),
])
def test_bad_performance_files_name_the_file_and_entry(tmp_path, change, words):
    data = json.loads(json.dumps(PERF))
    change(data)
    path = tmp_path / "perf.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InstagError) as err:
        pf.load_performance(path)
    msg = one_line(err)
    assert msg.startswith(str(path)) and all(w in msg for w in words), msg


def test_broken_json_and_bad_pose_are_one_line(tmp_path):
    path = tmp_path / "perf.json"
    path.write_text('{"events": [{"expression": "happy",}]}')
    with pytest.raises(InstagError, match="not valid JSON") as err:
        pf.load_performance(path)
    one_line(err)
    path.write_text('{"pose": "nowhere.csv"}')
    with pytest.raises(InstagError, match="pose 'nowhere.csv'|nowhere.csv") as err:
        pf.performance_from_options(str(path))
    assert str(path) in one_line(err)
    with pytest.raises(InstagError, match="--pose 'spin'"):
        pf.performance_from_options(pose="spin")


# ---------------------------------------------------------------------------------------- AU blending
def _train_au(n=250, seed=0):
    rng = np.random.default_rng(seed)
    au = rng.uniform(0, 0.6, (n, len(EXPRESSION_AUS))).astype(np.float32)
    au[:, AU["AU45"]] = np.where((np.arange(n) + 60) % 125 < 7, 2.0, 0.1)  # 12 blinks a minute, 280 ms each
    return au


def test_expression_follows_the_timeline_with_smooth_ramps():
    train = _train_au()
    perf = pf.Performance(pf.parse_expression_arg("happy:1@2.0-4.5,surprised:0.5@6-7"), blink="off")
    performer = pf.Performer(train, True, perf)
    frames = np.arange(250)
    default = np.repeat(train[:1], 250, 0)
    au = performer.au(default, frames)
    rest = performer.rest
    t = frames / FPS
    for name, amount in pf.PRESETS["happy"].items():
        col = au[:, AU[name]]
        np.testing.assert_allclose(col[(t >= 2.4) & (t <= 4.1)], rest[AU[name]] + amount, atol=1e-5)  # held
        np.testing.assert_allclose(col[t <= 2.0], default[t <= 2.0, AU[name]], atol=1e-6)  # before: the default
        np.testing.assert_allclose(col[(t >= 4.5) & (t < 6.0)], default[(t >= 4.5) & (t < 6.0), AU[name]], atol=1e-6)
        step = np.abs(np.diff(col - default[:, AU[name]]))
        assert step.max() < 1.6 * amount / (pf.DEFAULT_RAMP_S * FPS)  # smoothstep: at most 1.5x the linear slope
        rise = col[(t > 2.0) & (t < 2.4)] - default[(t > 2.0) & (t < 2.4), AU[name]]
        assert (np.diff(rise) > 0).all()  # a monotone onset
    surprised = au[(t >= 6.4) & (t <= 6.6), AU["AU02"]]
    np.testing.assert_allclose(surprised, rest[AU["AU02"]] + 0.5 * pf.PRESETS["surprised"]["AU02"], atol=1e-5)
    untouched = [AU[a] for a in ("AU04", "AU15", "AU07")]
    np.testing.assert_allclose(au[:, untouched], default[:, untouched], atol=1e-6)
    assert (au[:, AU["AU45"]] == performer.blink_rest).all()  # blinks off


def test_au_curve_replaces_its_columns_and_keeps_blinks_of_its_own(tmp_path):
    from instag.preprocess.au import write_au_csv

    curve = tmp_path / "curve.csv"
    write_au_csv(curve, {"AU12_r": np.full(10, 2.5), "AU45_r": np.where(np.arange(10) == 5, 3.0, 0.0)})
    train = _train_au()
    performer = pf.Performer(train, True, pf.Performance(au_csv=str(curve)))
    frames = np.arange(20)
    au = performer.au(train[frames], frames)
    assert (au[:, AU["AU12"]] == 2.5).all()  # the csv's column, its last row repeated
    assert au[5, AU["AU45"]] == 2.0 and (np.delete(au[:10, AU["AU45"]], 5) == 0).all()  # its blink, clipped to 2
    np.testing.assert_allclose(au[:, AU["AU04"]], train[:20, AU["AU04"]], atol=1e-6)
    with pytest.raises(InstagError, match="holds none of the AU columns"):
        write_au_csv(curve, {"AU25_r": np.ones(3)})
        pf.read_au_curve(curve, 5)


# ---------------------------------------------------------------------------------------- blinks
@pytest.mark.parametrize("rate", [12.0, 20.0])
def test_blinks_at_the_rate_with_irregular_gaps_and_natural_closures(rate):
    blinks = pf.blink_schedule(rate, 60.0, seed=4)
    assert rate - 2 <= len(blinks) <= rate + 2
    gaps = np.diff([b.at for b in blinks])
    assert gaps.min() >= 0.3 * 60 / rate - 0.05 and gaps.std() / gaps.mean() > 0.2  # irregular, never bunched
    durations = np.array([b.duration for b in blinks])
    assert durations.min() >= 0.1 and durations.max() <= 0.3 and durations.std() > 0
    assert all(abs(b.at * FPS - round(b.at * FPS)) < 1e-9 for b in blinks)  # each shows a fully closed frame
    assert blinks[:5] == pf.blink_schedule(rate, 25.0, seed=4)[: len([b for b in blinks if b.at < 25])][:5]


def _count_blinks(au45: np.ndarray, rest: float, peak: float) -> int:
    mid = (rest + peak) / 2
    return int(np.sum((au45[1:] >= mid) & (au45[:-1] < mid)))


def test_blink_setting_drives_the_au45_track():
    train = _train_au()
    frames = np.arange(60 * FPS)
    counts = {}
    for setting in ("12", "off", "auto"):
        performer = pf.Performer(train, True, pf.Performance(blink=setting))
        track = performer.au(train[frames % 250], frames)[:, AU["AU45"]]
        counts[setting] = _count_blinks(track, performer.blink_rest, performer.blink_peak)
    assert 10 <= counts["12"] <= 14 and counts["off"] == 0
    assert 10 <= counts["auto"] <= 14  # the clip's 12 a minute
    requested = pf.Performer(train, True, pf.Performance(blinks=[pf.BlinkCue(3.2)], blink="off"))
    track = requested.au(train[:100], np.arange(100))[:, AU["AU45"]]
    assert np.argmax(track) == 80 and track[80] == pytest.approx(requested.blink_peak) and _count_blinks(
        track, requested.blink_rest, requested.blink_peak) == 1


# ---------------------------------------------------------------------------------------- pauses
def test_pause_weights_are_causal_smooth_ramps():
    silent = np.zeros(40, bool)
    silent[10:25] = True
    w = pf.pause_weights(silent, 3, 2)
    assert (w[:10] == 0).all() and (w[12:25] == 1).all() and (w[27:] == 0).all()
    assert 0 < w[10] < w[11] < 1 and w[25] == 0.5 and w[26] == 0  # up over 3 frames, down over 2 after the pause
    longer = silent.copy()
    longer[25:35] = True
    np.testing.assert_array_equal(pf.pause_weights(longer, 3, 2)[:25], w[:25])  # the future never changes the past


def test_silent_spans_give_the_silence_items_and_relax_the_face(tiny):
    from instag.infer.features import mel_items, silence_items
    from instag.infer.synthesize import Director

    samples = speech(100, seed=3)[0]
    samples[30 * 640 : 70 * 640] = 0.0  # a 1.6-s pause
    items, _ = mel_items(samples)
    silent = silent_frames(samples, items.shape[0])
    assert silent[36:66].all() and not silent[:25].any() and not silent[75:].any()
    clip = _clip(tiny)
    director = Director(clip, pf.Performance(pf.parse_expression_arg("happy:1@2.0-3.6")))
    quiet = director.quiet_items(items, silent, "mel")
    torch.testing.assert_close(quiet[40:66], silence_items(8, "mel")[4][None].expand(26, -1, -1))
    torch.testing.assert_close(quiet[:30], items[:30])  # speech is untouched
    torch.testing.assert_close(quiet[75:], items[75:])
    plan = director.plan(0, items.shape[0], silent)
    rest = director.performer.rest
    relaxed = [AU[a] for a in ("AU01", "AU04", "AU07")]
    np.testing.assert_allclose(plan.au_exp[50:66][:, relaxed], np.repeat(rest[None, relaxed], 16, 0), atol=1e-6)
    happy = plan.au_exp[60:80, AU["AU12"]]  # the requested expression holds in the pause and after
    np.testing.assert_allclose(happy, rest[AU["AU12"]] + pf.PRESETS["happy"]["AU12"], atol=1e-5)
    assert (Director(clip, pauses=False).quiet_items(items, silent, "mel") == items).all()


def test_streamed_pause_decisions_match_the_clip_rule():
    samples = speech(100, seed=3)[0]
    samples[30 * 640 : 70 * 640] = 0.0
    tracker = SilenceTracker()
    decided = []
    for s in range(0, samples.size, 3200):
        tracker.push(samples[s : s + 3200])
        decided.append(tracker.decided(100).copy())
    tracker.finish()
    final = tracker.decided(100)
    for earlier in decided:  # a decision never changes, and frames not decided yet read as speech
        assert not (earlier & ~final).any()
    np.testing.assert_array_equal(final, silent_frames(samples, 100))


# ---------------------------------------------------------------------------------------- pose
def test_pose_modes(tiny):
    clip = _clip(tiny)
    cams = [f.camera for f in clip.frames]
    rots, trans = ps.poses_of(cams)
    frames = np.arange(200)
    track = ps.PoseTrack(cams, "pingpong")
    r, t, pos = track.at(frames)
    np.testing.assert_array_equal(pos, [ps.pingpong(k, N_TRAIN) for k in frames])
    np.testing.assert_allclose(r, rots[pos]) and np.testing.assert_allclose(t, trans[pos])
    r, t, pos = ps.PoseTrack(cams, "still").at(frames)
    assert len(set(pos.tolist())) == 1 and np.allclose(r, r[0]) and np.allclose(t, t[0])
    own = ps.max_step_deg(rots)
    train = ps.PoseTrack(cams, "train")
    r, t, pos = train.at(frames)
    steps = ps.max_step_deg(r)
    assert steps.max() <= own.max() * 1.05  # no jump where the loop joins: no step larger than the clip's own
    assert np.abs(np.diff(t, axis=0)).max() <= np.abs(np.diff(trans, axis=0)).max() * 1.05 + 1e-9
    a, b, fade = train.loop
    period = b - a + 1 - fade
    assert frames.size > 3 * period  # several joins were crossed
    switches = np.flatnonzero(np.diff(pos) != 1) + 1  # the torso frame switches once per join, inside the crossfade
    assert len(switches) == len(range(period + switches[0] % period, frames.size, period)) and (switches % period < fade).all()


def _pose_file_poses(n=60):
    """Poses of a head nodding ±6° and turning ±9°, 0.7 units away."""
    k = np.arange(n)
    angles = np.stack([6 * np.sin(k / 5), 9 * np.sin(k / 9), 2 * np.cos(k / 7)], 1)
    base = ps.axis_rotations(np.array([[4.0, -3.0, 1.0]]))[0]
    rots = np.einsum("ij,njk->nik", np.diag([1.0, -1.0, -1.0]) @ base, ps.axis_rotations(angles))
    trans = np.stack([0.01 * np.sin(k / 4), 0.005 * np.cos(k / 6), 0.72 + 0.01 * np.sin(k / 8)], 1)
    return rots, trans


def test_pose_file_drives_the_head(tiny, tmp_path):
    from instag.data.format import DatasetLayout
    from instag.preprocess.bfm import camera_to_world
    from instag.preprocess.tracking import GL_FROM_CV, TRANSLATION_SCALE, euler_from_matrix

    clip = _clip(tiny)
    cams = [f.camera for f in clip.frames]
    rots_f, trans_f = _pose_file_poses()
    r_gl, t_gl = GL_FROM_CV @ rots_f, trans_f @ GL_FROM_CV.T
    params = {"euler": torch.as_tensor(euler_from_matrix(r_gl)), "trans": torch.as_tensor(t_gl * TRANSLATION_SCALE),
              "focal": torch.tensor([500.0])}
    layout = DatasetLayout.of(tmp_path / "other")
    layout.root.mkdir()
    torch.save(params, layout.track_params)
    c2w = camera_to_world(params["euler"].double(), params["trans"].double()).numpy()
    layout.transforms("train").write_text(json.dumps({"focal_len": 500, "frames": [
        {"img_id": i, "transform_matrix": c2w[i].tolist()} for i in range(60)]}))
    expected_rot = np.einsum("ji,njk->nik", ps.mean_rotation(rots_f), rots_f)  # the file's head-frame motion
    for source in (layout.track_params, layout.root):
        track = ps.PoseTrack(cams, str(source))
        r, t, _ = track.at(np.arange(60))
        got = np.einsum("ji,njk->nik", track.mean_rot, r)
        assert ps.rotation_angle_deg(got, expected_rot).max() < 1e-3  # degrees
        np.testing.assert_allclose(t - track.mean_trans, trans_f - trans_f.mean(0), atol=1e-5)
        r_long, _, _ = track.at(np.arange(200))  # longer than the file: ping-pong, no jump
        assert ps.max_step_deg(r_long).max() <= ps.max_step_deg(rots_f).max() + 1e-6


def test_pose_csvs(tiny, tmp_path):
    clip = _clip(tiny)
    cams = [f.camera for f in clip.frames]
    k = np.arange(50)
    angles = np.stack([5 * np.sin(k / 6), -8 * np.sin(k / 10), 3 * np.sin(k / 4)], 1)
    simple = tmp_path / "angles.csv"
    simple.write_text("frame,pitch,yaw,roll\n" + "".join(f"{i},{a:.6f},{b:.6f},{c:.6f}\n" for i, (a, b, c) in enumerate(angles)))
    track = ps.PoseTrack(cams, str(simple))
    r, t, _ = track.at(k)
    np.testing.assert_allclose(ps.head_angles_deg(r, track.mean_rot), angles, atol=1e-4)  # degrees from the rest pose
    np.testing.assert_allclose(t, np.repeat(track.mean_trans[None], 50, 0))
    openface = tmp_path / "openface.csv"
    rad = np.radians(angles)
    openface.write_text(" frame, pose_Tx, pose_Ty, pose_Tz, pose_Rx, pose_Ry, pose_Rz\n" + "".join(
        f"{i}, 0, 0, 600, {a:.8f}, {b:.8f}, {c:.8f}\n" for i, (a, b, c) in enumerate(rad)))
    track = ps.PoseTrack(cams, str(openface))
    r, _, _ = track.at(k)
    flip = np.diag([1.0, -1.0, -1.0])
    of = ps.axis_rotations(angles)
    expected = np.einsum("ji,njk->nik", ps.mean_rotation(flip @ of @ flip), flip @ of @ flip)
    assert ps.rotation_angle_deg(np.einsum("ji,njk->nik", track.mean_rot, r), expected).max() < 1e-3
    bad = tmp_path / "bad.csv"
    bad.write_text("frame,x\n0,1\n")
    with pytest.raises(InstagError, match="pose_Rx.*pitch, yaw, roll") as err:
        ps.PoseTrack(cams, str(bad))
    assert str(bad) in one_line(err)


@pytest.mark.parametrize("kind,axis", [("nod", 0), ("shake", 1), ("tilt", 2)])
def test_gestures_turn_the_head_and_join_without_a_jump(kind, axis):
    gesture = pf.GestureCue(kind, 1.0, pf.GESTURES[kind][1], 8.0, pf.GESTURES[kind][3])
    frames = np.arange(100)
    angles = ps.gesture_angles([gesture], frames)
    assert np.abs(angles[:, axis]).max() == pytest.approx(8.0, abs=0.25)  # the peak may fall between frames
    assert not np.delete(angles, axis, 1).any()
    inside = (frames / FPS > gesture.start) & (frames / FPS < gesture.start + gesture.duration)
    assert not angles[~inside].any()
    per_frame = 8.0 / (gesture.duration * FPS)  # the fastest a smooth curve of that shape turns
    bound = {"nod": np.pi * gesture.times, "shake": 2.3 * np.pi * gesture.times, "tilt": 1.5 * gesture.duration / 0.4}[kind]
    assert np.abs(np.diff(angles[:, axis])).max() <= bound * per_frame
    edge = np.abs(angles[inside, axis])  # starts and ends with zero speed: the first and last steps are small
    assert edge[0] < 0.5 and edge[-1] < 0.5
    base = np.repeat(ps.axis_rotations(np.array([[3.0, -2.0, 1.0]])), 100, 0)
    rots, trans = ps.with_gestures(base, np.tile([0.0, 0.0, 0.7], (100, 1)), angles)
    np.testing.assert_allclose(ps.head_angles_deg(rots, base[0]), angles, atol=1e-6)  # the requested rotation
    moved = np.linalg.norm(trans - [0.0, 0.0, 0.7], axis=1)
    assert moved[~inside].max() == 0 and (moved[inside].max() > 0 if kind != "tilt" or axis else True)


def test_director_applies_gestures_to_the_cameras(tiny):
    from instag.infer.synthesize import Director

    clip = _clip(tiny)
    perf = pf.Performance(gestures=[pf.GestureCue("nod", 0.4, 1.0, 10.0, 1)], pose="still")
    plan = Director(clip, perf).plan(0, 50)
    rots, _ = ps.poses_of(plan.cameras)
    pitch = ps.head_angles_deg(rots, rots[0])[:, 0]
    assert pitch.max() == pytest.approx(10.0, abs=0.05) and np.argmax(pitch) == 22  # 0.4 + 0.5 s
    assert (ps.max_step_deg(rots) < 1.5).all()


# ---------------------------------------------------------------------------------------- synthesis and streams
def test_synthesize_with_a_performance(tiny, tmp_path):
    from instag.infer.synthesize import SynthesizeConfig, synthesize
    from instag.io.encode import probe_media

    perf = tmp_path / "perf.json"
    perf.write_text(json.dumps({"pose": "train", "blink": 20, "events": [
        {"expression": "happy", "start": 0.2, "end": 0.9}, {"gesture": "shake", "at": 0.3}, {"blink": 0.6}]}))
    out = tmp_path / "perf.mp4"
    cfg = SynthesizeConfig(source_path=str(tiny["root"]), model_path=str(tiny["model"]), audio=str(tiny["wav"]),
                           performance=str(perf), expression="surprised:0.5@0.8-1.1", output=str(out), device="cpu")
    result = synthesize(cfg, log=lambda *_: None)
    assert result["frames"] == 30 and probe_media(out)["frames"] == 30


def test_bad_timeline_is_one_line_from_the_command(tiny, tmp_path, capsys):
    from instag.cli import main

    perf = tmp_path / "perf.json"
    perf.write_text(json.dumps({"events": [{"expression": "happy"}, {"gesture": "spin"}]}))
    code = main(["synthesize", "-S", str(tiny["root"]), "-M", str(tiny["model"]), "--audio", str(tiny["wav"]),
                 "--performance", str(perf), "--device", "cpu", "--output", str(tmp_path / "x.mp4")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code != 0 and len(err) == 1 and str(perf) in err[0] and "events[1]" in err[0] and "'spin'" in err[0]
    assert not (tmp_path / "x.mp4").exists()


def _stream(tiny, events=None, at_frame=None, **kw):
    from instag.infer.stream import StreamSynthesizer
    from instag.io.wav import load_audio_16k_mono

    samples = load_audio_16k_mono(tiny["wav"])
    synth = StreamSynthesizer.from_paths(tiny["root"], tiny["model"], "cpu", batch=4, **kw)
    frames = []
    for s in range(0, samples.size, 3200):
        if at_frame is not None and synth.next_frame >= at_frame and events:
            for e in events:
                synth.add_event(e)
            events = None
        frames += list(synth.push(samples[s : s + 3200]))
    return synth, frames + list(synth.finish())


def test_stream_events_change_only_later_frames(tiny):
    base, plain = _stream(tiny)
    synth, changed = _stream(tiny, ['{"expression": "surprised", "intensity": 1, "duration": 2}', {"gesture": "nod"}],
                             at_frame=8)
    first = synth.director.performance.expressions[0].start * FPS
    assert 8 <= first < 20 and len(plain) == len(changed) == 30
    k = int(round(first))
    assert all(np.array_equal(a, b) for a, b in zip(plain[:k], changed[:k]))  # frames already made never change
    assert any(not np.array_equal(a, b) for a, b in zip(plain[k:], changed[k:]))
    plan, base_plan = synth.delivered_plan(), base.delivered_plan()
    assert (plan.au_exp[k + 12 :, AU["AU02"]] > base_plan.au_exp[k + 12 :, AU["AU02"]] + 2.5).all()
    np.testing.assert_array_equal(plan.au_exp[:k], base_plan.au_exp[:k])
    with pytest.raises(InstagError, match="event: unknown expression 'glad'"):
        synth.add_event({"expression": "glad"})


def test_run_stream_takes_queued_events_and_skips_bad_ones(tiny, capsys):
    from instag.infer.stream import StreamSynthesizer, read_events, run_stream
    from instag.io.wav import load_audio_16k_mono

    samples = load_audio_16k_mono(tiny["wav"])
    events: queue.Queue = queue.Queue()
    read_events(['{"blink": true, "at": 0.5}\n', "\n", "{not json\n", '{"gesture": "shake", "at": 0.2}\n'], events)
    synth = StreamSynthesizer.from_paths(tiny["root"], tiny["model"], "cpu", batch=4,
                                         performance=pf.Performance(blink="off"))
    stats = run_stream(synth, samples, 200, events=events)
    assert stats["frames"] == 30 and events.empty()
    assert "stdin line 3: not valid JSON" in capsys.readouterr().err
    plan = synth.delivered_plan()
    assert np.argmax(plan.au_exp[:, AU["AU45"]]) == round(0.5 * FPS)
    rots, _ = ps.poses_of(plan.cameras)
    base_rots, _ = ps.poses_of(StreamSynthesizer.from_paths(tiny["root"], tiny["model"], "cpu").director.plan(0, 30).cameras)
    turned = ps.rotation_angle_deg(rots, base_rots)
    assert turned[:5].max() < 1e-4 and turned.max() > 5.0  # the shake from 0.2 s on


def test_stream_command_reads_events_on_stdin(tiny, tmp_path, monkeypatch, capfd):
    import io

    from instag.cli import main
    from instag.io.encode import probe_media

    out = tmp_path / "s.mp4"
    monkeypatch.setattr("sys.stdin", io.StringIO('{"expression": "happy", "at": 0.6}\n{"blink": "x"}\n'))
    assert main(["stream", "-S", str(tiny["root"]), "-M", str(tiny["model"]), "--audio", str(tiny["wav"]), "--device",
                 "cpu", "--output", str(out), "--stdin_events", "--realtime", "--quiet", "--pose", "still"]) == 0
    assert probe_media(out)["frames"] == 30
    assert "event skipped: stdin line 2: blink time must be a number" in capfd.readouterr().err


def test_default_aus_replay_the_brows_and_hold_the_mouth_corners(tiny):
    from instag.infer.synthesize import Director

    clip = _clip(tiny)
    director = Director(clip, pf.Performance(blink="off"), pauses=False)
    plan = director.plan(0, 60)
    order = [ps.pingpong(k, N_TRAIN) for k in range(60)]
    for name in ("AU01", "AU04", "AU06"):
        np.testing.assert_allclose(plan.au_exp[:, AU[name]], clip.au_exp[order, AU[name]], atol=1e-6)
    for name in ("AU12", "AU15"):
        assert (plan.au_exp[:, AU[name]] == director.performer.rest[AU[name]]).all()
    still = Director(clip, pf.Performance(blink="off", pose="still"), pauses=False).plan(0, 10)
    assert (still.au_exp == still.au_exp[0]).all()


def colourful(head):
    """``head`` with small splats of many colours, so that moving them shows (fresh ones are one grey blur)."""
    with torch.no_grad():
        head.face.features_dc.copy_(torch.randn(head.face.features_dc.shape, generator=torch.Generator().manual_seed(1)))
        head.face.scale_raw.sub_(2.0)
    return head


def responsive(head):
    """``head`` with a face field that moves its Gaussians by pixels for its AUs (fresh tri-planes hold 1e-4)."""
    with torch.no_grad():
        head.face_field.encoder.embeddings.mul_(1e3)
        head.face_field.net[-1].weight.mul_(1e4)
    return head


def _render_pair(head, clip, rest, targets):
    """Frames of ``head`` at the AU condition ``rest`` and with ``targets`` over it, silence driving the audio."""
    cam, bg = clip.frames[0].camera, torch.zeros(3, clip.frames[0].camera.height, clip.frames[0].camera.width)
    window = torch.zeros(8, *head.item_shape)
    moved = torch.from_numpy(rest.copy())
    for name, value in targets.items():
        moved[AU[name]] = value
    a = head.render_frame(cam, window, torch.from_numpy(rest), bg)["image"]
    b = head.render_frame(cam, window, moved, bg)["image"]
    return float((a - b).abs().max() * 255)


def test_a_model_that_cannot_show_a_control_says_so(tiny, tmp_path):
    """A face field that barely responds to the AUs (an untrained one, like the CPU recipe's tiny pre-training) gets a
    notice naming what it cannot show, and its frames indeed hardly change; a responsive one gets none and changes;
    a six-AU model asked for AU12 is told it lacks it."""
    from instag.infer.synthesize import Director, SynthesizeConfig, load_model, synthesize

    clip = _clip(tiny)
    head = colourful(load_model(tiny["model"], None, "cpu"))
    director = Director(clip, pf.performance_from_options(expression="happy:1@0-1", blink="20"))
    asked = director.performer.requested_aus()
    assert set(asked) == {"AU06", "AU12", "AU45"} and asked["AU45"][1] == "blinks" and asked["AU12"][1] == "happy"
    notice = director.unshowable(head)
    assert notice.startswith("this model cannot show the requested blinks, happy: the face barely moves for them (AU06 ")
    assert "visible from 0.5 px" in notice and "CPU recipe" in notice
    rest, targets = director.performer.rest, {k: v for k, (v, _) in asked.items()}
    assert _render_pair(head, clip, rest, targets) < 1.0  # not one grey level anywhere
    assert Director(clip, pf.performance_from_options()).unshowable(head) is None  # nothing asked, nothing said

    assert director.unshowable(responsive(head)) is None  # the same head with a field that responds to its AUs
    assert _render_pair(head, clip, rest, targets) > 5.0

    legacy = responsive(_legacy_head())
    smile = Director(clip, pf.performance_from_options(expression="AU12:3@0-1,AU04:3@0-1"))
    assert smile.unshowable(legacy) == (
        "this model cannot show the requested aus: the face barely moves for them (AU12 not in its AU condition; "
        "visible from 0.5 px); expressions and blinks need a pre-training whose face field learnt the AUs (the "
        "default recipe on many identities, not the CPU recipe's tiny one)")

    said = []
    synthesize(SynthesizeConfig(source_path=str(tiny["root"]), model_path=str(tiny["model"]), audio=str(tiny["wav"]),
                                expression="happy@0-0.5", output=str(tmp_path / "o.mp4"), device="cpu", quiet=True),
               log=said.append)
    notes = [line for line in said if "note:" in line]
    assert len(notes) == 1 and notes[0].startswith("instag synthesize: note: this model cannot show the requested happy")
