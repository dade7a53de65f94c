"""Interaction logs of synthesis and streaming, their survival of a kill, and the ``instag report`` dashboard."""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from badinputs import (
    CLIP,
    cli_env,
    cut,
    encode_frames,
    fused_model,
    one_line_error,
    read_frames,
    run_cli,
    synthetic_dataset,
)
from synthetic_clip import speech

from instag.infer.sessionlog import append_record, feedback_record, log_path, read_records
from instag.io.wav import write_wav


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    data, out = root / "data" / "p", root / "output" / "p"
    synthetic_dataset(data, size=48, n_train=12, n_val=4)
    fused_model(out)
    wav = root / "pause.wav"  # speech, a second of silence, speech: the pause gives closed_in_silence frames
    talk = speech(25, seed=4)[0]
    write_wav(wav, np.concatenate([talk, np.zeros(16000, np.float32), talk]), 16000)
    return {"data": data, "out": out, "wav": wav}


def test_synthesis_and_stream_log_their_sessions(model):
    from instag.cli import main

    args = ["-S", str(model["data"]), "-M", str(model["out"]), "--audio", str(model["wav"]), "--device", "cpu", "--quiet"]
    assert main(["synthesize", *args]) == 0
    assert main(["stream", *args, "--chunk_ms", "100"]) == 0
    sessions = [r for r in read_records(model["out"])[0] if r["type"] == "session"][-2:]
    assert [s["kind"] for s in sessions] == ["synthesize", "stream"]
    frames = 75  # 3 s
    for s in sessions:
        assert s["frames"] == frames and s["fps"] == 25
        assert s["audio"]["name"] == "pause.wav" and s["audio"]["seconds"] == pytest.approx(3.0)
        assert (model["out"] / "logs" / s["audio"]["stored"]).is_file()
        pf = s["per_frame"]
        for column in (pf["mouth_opening"], pf["blink"], pf["latency_ms"], *pf["au"].values(), *pf["pose"].values()):
            assert len(column) == frames
        assert pf["pose"]["z"][0] == pytest.approx(0.7, abs=1e-3)  # the generated clip's camera is 0.7 units away
        assert max(abs(v) for v in pf["pose"]["yaw"]) > 0.1  # and it turns (yaw 0.03·sin(i) rad)
        sync = s["sync"]
        assert -1 <= sync["score"] <= 1 and sync["silent_frames"] >= 15
        assert 0 <= sync["lip_gap_closed_in_silence"] <= 1
        assert s["model"]["source_path"] == str(model["data"]) and s["output"].endswith(".mp4")
        assert s["settings"]["performance"] == {"expression": [], "blink": "auto", "blinks_at": [], "pose": "pingpong",
                                                "gestures": [], "au_csv": None, "pauses": True}
        assert s["latency"]["first_frame_ms"] > 0 and s["latency"]["p95_ms"] >= s["latency"]["mean_ms"] * 0.5
    # the same speech hashes alike on both paths (and is stored once); the predicted lips move with it
    assert sessions[0]["audio"]["sha256"] == sessions[1]["audio"]["sha256"]
    assert len(list((model["out"] / "logs" / "audio").glob("*.wav"))) == 1
    assert all(np.std(s["per_frame"]["mouth_opening"]) > 0 for s in sessions)


def test_session_log_records_what_was_asked(model, tmp_path):
    from instag.cli import main

    assert main(["synthesize", "-S", str(model["data"]), "-M", str(model["out"]), "--audio", str(model["wav"]), "--device",
                 "cpu", "--quiet", "--output", str(tmp_path / "asked.mp4"), "--expression", "happy:0.7@0.5-1.5,AU01:2@2",
                 "--blink", "off", "--pose", "still"]) == 0
    s = [r for r in read_records(model["out"])[0] if r["type"] == "session"][-1]
    assert s["output"] == str(tmp_path / "asked.mp4")
    perf = s["settings"]["performance"]
    assert perf["expression"] == [
        {"name": "happy", "aus": {"AU06": 2.5, "AU12": 3.0}, "intensity": 0.7, "start": 0.5, "end": 1.5},
        {"name": "aus", "aus": {"AU01": 2.0}, "intensity": 1.0, "start": 2.0, "end": None}]
    assert (perf["blink"], perf["pose"], perf["pauses"]) == ("off", "still", True)


def test_log_survives_a_killed_writer(tmp_path):
    folder = tmp_path / "m"
    writer = ("import sys; from instag.infer.sessionlog import append_record\n"
              "k = 0\nwhile True:\n"
              "    append_record(sys.argv[1], {'type': 'feedback', 'session': str(k), 'rating': 'up', 'note': 'x' * 5000})\n"
              "    k += 1\n")
    proc = subprocess.Popen([sys.executable, "-c", writer, str(folder)], env=cli_env())
    deadline = time.time() + 60
    while time.time() < deadline and (not log_path(folder).exists() or log_path(folder).stat().st_size < 200_000):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    records, bad = read_records(folder)
    assert len(records) >= 20 and bad <= 1
    assert [r["session"] for r in records] == [str(k) for k in range(len(records))]  # in order, none lost but the last
    # a writer killed mid-line: the next record still starts on its own line
    with open(log_path(folder), "ab") as f:
        f.write(b'{"type": "feedback", "session": "half')
    append_record(folder, feedback_record("after", "down", "still read"))
    records2, bad2 = read_records(folder)
    assert records2[-1]["session"] == "after" and bad2 == bad + 1


def test_report_renders_plots_tables_and_notes(model, tmp_path):
    from instag.cli import main

    sessions = [r for r in read_records(model["out"])[0] if r["type"] == "session"]
    if not sessions:  # run alone: log one session first
        assert main(["synthesize", "-S", str(model["data"]), "-M", str(model["out"]), "--audio", str(model["wav"]),
                     "--device", "cpu", "--quiet"]) == 0
        sessions = [r for r in read_records(model["out"])[0] if r["type"] == "session"]
    append_record(model["out"], feedback_record(sessions[0]["id"], "up", "lips <b>right</b>"))
    append_record(model["out"], feedback_record(sessions[-1]["id"], "down"))
    out = tmp_path / "dash.html"
    proc = run_cli("report", str(model["out"]), "--out", str(out))
    assert proc.returncode == 0 and str(out) in proc.stdout, proc.stderr
    page = out.read_text(encoding="utf-8")
    images = re.findall(r'<img class="plot" alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    assert [alt for alt, _ in images] == ["Lip sync", "Latency", "Expression use", "Feedback and versions"]
    for _, data in images:
        img = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[0] > 200 and img.shape[1] > 600 and img.std() > 5
    assert page.count("<tr>") == len(sessions) + 1
    assert "lips &lt;b&gt;right&lt;/b&gt;" in page and "<b>right</b>" not in page  # notes are escaped
    assert f"{len(sessions)} sessions" in page and "1 up, 1 down" in page
    default = run_cli("report", "-M", str(model["out"]))
    assert default.returncode == 0 and (model["out"] / "logs" / "report.html").is_file()


def test_report_without_logs_is_one_line_error(tmp_path):
    folder = tmp_path / "empty model"
    folder.mkdir()
    one_line_error(run_cli("report", str(folder)), "nothing logged yet", str(folder))
    one_line_error(run_cli("report", str(tmp_path / "missing")), "does not exist")


def test_feedback_record_is_strict_json():
    rec = feedback_record("abc", "up", "n" * 5000)
    assert len(rec["note"]) == 2000 and json.loads(json.dumps(rec))["rating"] == "up"
    with pytest.raises(ValueError):
        feedback_record("abc", "sideways")


class _Camera:
    world_to_camera = np.diag([1.0, -1.0, -1.0, 1.0])


def _log_session(model_dir, samples, lip_gap, output=None, kind="synthesize", version=None):
    """A session appended to ``model_dir``'s log as synthesis would append it: ``lip_gap`` [T] the model's gaps."""
    from instag.infer.performance import Performance
    from instag.infer.sessionlog import SessionRecorder

    rec = SessionRecorder(model_dir, kind, audio_name="speech.wav", output=output, performance=Performance())
    for _ in lip_gap:
        rec.frame(20.0)
    record = rec.finish(samples, [_Camera()] * len(lip_gap), np.zeros((len(lip_gap), 7), np.float32), list(lip_gap))
    if version:  # as if written while a refined version served
        lines = log_path(model_dir).read_text(encoding="utf-8").splitlines()
        lines[-1] = json.dumps({**json.loads(lines[-1]), "model": {**record["model"], "version": version}})
        log_path(model_dir).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return record


@pytest.mark.skipif(not CLIP.exists(), reason="needs ../shared/data")
def test_report_shows_the_rendered_mouth_beside_the_model_gap(tmp_path):
    """The model's gap closes in every pause, the rendered mouth never does: the log names its figure as the model's,
    and the report shows the pixels' figure beside it, the number ``instag evaluate --pred`` gives for the video."""
    from instag.metrics import dashboard

    talk = speech(25, seed=4)[0]
    samples = np.concatenate([talk, np.zeros(16000, np.float32), talk])  # 3 s: speech, a second of silence, speech
    write_wav(tmp_path / "speech.wav", samples, 16000)
    talking = read_frames(cut(tmp_path / "cut.mp4", seconds=2.0))  # frame 48: lips well apart (0.24 of the eye span)
    frames = np.concatenate([talking[:25], np.repeat(talking[48:49], 25, axis=0), talking[25:50]])
    video = encode_frames(tmp_path / "out.mp4", frames, tmp_path / "speech.wav")
    gap = np.repeat([1.0, 0.0, 1.0], 25) + 0.1 * np.sin(np.arange(75))  # shut in the pause
    model_dir = tmp_path / "model"
    record = _log_session(model_dir, samples, gap, output=video)
    sync = record["sync"]
    assert sync["lip_gap_closed_in_silence"] == 1.0 and "closed_in_silence" not in sync
    assert "not the rendered pixels" in sync["measured_on"] and record["output"] == str(video)

    measured = run_cli("evaluate", "--pred", str(video), "--out", str(tmp_path / "ev"))
    assert measured.returncode == 0, measured.stderr
    seen = json.loads((tmp_path / "ev" / "out_mouth.json").read_text(encoding="utf-8"))
    assert seen["closed_in_silence"] == 0.0 and seen["silent_frames"] >= 15  # the mouth never closes in the pause

    proc = run_cli("report", str(model_dir))
    assert proc.returncode == 0, proc.stderr
    page = (model_dir / "logs" / "report.html").read_text(encoding="utf-8")
    heads = re.findall(r"<th>([^<]*)</th>", page)
    row = re.findall(r"<td>(.*?)</td>", page.split("</tr>", 1)[1])
    cell = {h: re.sub(r"<[^>]+>", "", v) for h, v in zip(heads, row)}
    assert cell["predicted lip gap closed in silence (model)"] == "1.00"
    assert cell["closed in silence (pixels)"] == f"{seen['closed_in_silence']:.2f}" == "0.00"
    assert cell["opening–loudness corr (pixels)"] == f"{seen['opening_loudness_corr']:.2f}"
    assert f"instag evaluate --pred {video}" in page
    cache = json.loads((model_dir / "logs" / "pixels" / record["id"] / "measure.json").read_text(encoding="utf-8"))
    assert cache["measure"]["closed_in_silence"] == seen["closed_in_silence"]
    # measured once: a second report reads the cache
    assert dashboard.pixel_measures(model_dir, [record], log=pytest.fail)[record["id"]]["closed_in_silence"] == 0.0


def test_report_numbers_sessions_from_one_everywhere_and_clips_no_text(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.text import Text

    from instag.metrics import dashboard

    talk = speech(25, seed=4)[0]
    samples = np.concatenate([talk, np.zeros(8000, np.float32), talk])
    for k in range(3):
        _log_session(tmp_path, samples, np.random.default_rng(k).random(62), kind=("synthesize", "stream", "serve")[k],
                     version="v2" if k == 2 else None)
    figures = []

    def keep(fig):
        fig.tight_layout()
        fig.canvas.draw()
        figures.append(fig)
        return ""

    monkeypatch.setattr(dashboard, "_png", keep)
    dashboard.write_report(tmp_path, tmp_path / "r.html", pixels=False)
    sync, latency, expression, _ = figures
    for fig in (sync, latency):
        xs = {float(v) for ax in fig.axes for line in ax.get_lines() for v in line.get_xdata()
              if line.get_linestyle() != "--" and len(line.get_xdata()) != 2}
        assert xs == {1.0, 2.0, 3.0}, xs
    version_lines = [line.get_xdata()[0] for line in sync.axes[0].get_lines() if line.get_linestyle() == "--"]
    assert version_lines == [3]
    box_medians = sorted(float(np.mean(line.get_xdata())) for line in expression.axes[1].get_lines()
                         if line.get_label() == "_nolegend_" and line.get_color() not in ("black", "k") and
                         len(line.get_xdata()) == 2 and line.get_ydata()[0] == line.get_ydata()[1])
    assert sorted({round(v) for v in box_medians}) == [1, 2, 3]
    for fig in figures:  # titles, axis labels, legends and marks lie inside the picture
        renderer = fig.canvas.get_renderer()
        width, height = fig.bbox.width, fig.bbox.height
        texts = [t for ax in fig.axes for t in (ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts,
                                                 *(ax.get_legend().get_texts() if ax.get_legend() else ()))]
        for t in (t for t in texts if isinstance(t, Text) and t.get_text() and t.get_visible()):
            box = t.get_window_extent(renderer)
            assert box.x0 >= -0.5 and box.y0 >= -0.5 and box.x1 <= width + 0.5 and box.y1 <= height + 0.5, t.get_text()
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert [int(n) for n in re.findall(r"<tr><td>(\d+)</td>", page)] == [1, 2, 3]
