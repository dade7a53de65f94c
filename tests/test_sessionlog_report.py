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
from badinputs import cli_env, fused_model, one_line_error, run_cli, synthetic_dataset
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
        assert 0 <= sync["closed_in_silence"] <= 1
        assert s["latency"]["first_frame_ms"] > 0 and s["latency"]["p95_ms"] >= s["latency"]["mean_ms"] * 0.5
    # the same speech hashes alike on both paths (and is stored once); the predicted lips move with it
    assert sessions[0]["audio"]["sha256"] == sessions[1]["audio"]["sha256"]
    assert len(list((model["out"] / "logs" / "audio").glob("*.wav"))) == 1
    assert all(np.std(s["per_frame"]["mouth_opening"]) > 0 for s in sessions)


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
