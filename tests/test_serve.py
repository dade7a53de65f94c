"""``instag serve``: a real server on 127.0.0.1 (subprocess), driven over HTTP and WebSocket with aiohttp's client."""

from __future__ import annotations

import asyncio
import json
import struct
import time

import cv2
import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp")

from serving import SIZE, Served  # noqa: E402  (after the skip: the server needs aiohttp)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    srv = Served(tmp_path_factory.mktemp("serve"), "--max_upload_mb", "1", "--max_seconds", "10")
    yield srv
    code, err = srv.stop()
    assert code == 0 and "Traceback" not in err, err


async def upload(session, url: str, data: bytes, name: str = "speech.wav"):
    async with session.post(url + "api/upload", data=data, headers={"X-Filename": name}) as r:
        return r.status, await r.json()


async def answer(session, url: str, upload_id: str) -> dict:
    """Play an upload over a WebSocket: the start message, every frame (header, decoded image, arrival time), the end."""
    frames, out = [], {}
    t0 = time.perf_counter()
    async with session.ws_connect(url + "ws") as ws:
        await ws.send_json({"type": "play", "upload": upload_id, "language": "en"})
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                n = struct.unpack("<I", msg.data[:4])[0]
                header = json.loads(msg.data[4 : 4 + n])
                image = cv2.imdecode(np.frombuffer(msg.data[4 + n :], np.uint8), cv2.IMREAD_COLOR)
                frames.append((header, image, time.perf_counter() - t0))
            else:
                body = json.loads(msg.data)
                out[body["type"]] = body
                if body["type"] in ("end", "error"):
                    break
    out["frames"] = frames
    return out


def test_upload_answer_feedback_and_log(served):
    async def run():
        async with aiohttp.ClientSession() as s:
            status, up = await upload(s, served.url, served.wav.read_bytes(), "speech 1.wav")
            assert status == 200 and up["frames"] == 50 and up["seconds"] == pytest.approx(2.0)
            async with s.get(served.url + f"api/audio/{up['id']}") as r:  # what the page plays
                assert r.status == 200 and (await r.read())[:4] == b"RIFF"
            result = await answer(s, served.url, up["id"])
            async with s.post(served.url + "api/feedback", json={"answer": result["end"]["answer"], "rating": "down",
                                                                 "note": "lips late"}) as r:
                assert r.status == 200
            async with s.post(served.url + "api/feedback", json={"answer": "nope", "rating": "up"}) as r:
                assert r.status == 404 and "no answer" in (await r.json())["error"]
            async with s.post(served.url + "api/feedback", json={"answer": result["end"]["answer"], "rating": "meh"}) as r:
                assert r.status == 400
            return up, result

    up, result = asyncio.run(run())
    start, end, frames = result["start"], result["end"], result["frames"]
    assert start["frames"] == 50 and (start["width"], start["height"]) == (SIZE, SIZE)
    assert len(frames) == end["frames"] == 50
    assert [h["i"] for h, _, _ in frames] == list(range(50))
    assert all(h["t"] == pytest.approx(h["i"] / 25) for h, _, _ in frames)
    assert all(img is not None and img.shape == (SIZE, SIZE, 3) for _, img, _ in frames)
    # paced: frame i is sent no later than needed to show it at i/25 s after the first (one render of slack)
    arrival = np.array([a for _, _, a in frames])
    assert np.all(arrival - arrival[0] <= np.arange(50) / 25 + 2.0)
    assert np.std([h["lip"] for h, _, _ in frames]) > 0  # the model's lip prediction follows the speech

    sessions = [r for r in served.log_records() if r["id"] == end["answer"]]
    assert len(sessions) == 1
    rec = sessions[0]
    assert rec["kind"] == "serve" and rec["frames"] == 50 and rec["completed"]
    assert rec["audio"]["sha256"] == up["sha256"] and rec["audio"]["language"] == "en"
    assert rec["audio"]["name"] == "speech 1.wav" and rec["audio"]["seconds"] == pytest.approx(2.0)
    assert (served.model / "logs" / rec["audio"]["stored"]).is_file()
    pf = rec["per_frame"]
    assert len(pf["mouth_opening"]) == len(pf["blink"]) == len(pf["latency_ms"]) == 50
    assert pf["mouth_opening"] == pytest.approx([h["lip"] for h, _, _ in frames], rel=1e-3)
    assert set(pf["pose"]) == {"yaw", "pitch", "roll", "x", "y", "z"} and len(pf["pose"]["yaw"]) == 50
    assert "AU01" in pf["au"] and len(pf["au"]["AU01"]) == 50
    assert -1 <= rec["sync"]["score"] <= 1 and rec["latency"]["first_frame_ms"] > 0
    assert rec["settings"]["delivery"] == {"arm": None, "mouth_scale": 1.0, "smoothing": 0.0, "expression_intensity": 1.0}
    feedback = served.log_records("feedback")
    assert any(f["session"] == end["answer"] and f["rating"] == "down" and f["note"] == "lips late" for f in feedback)


def test_refuses_non_audio_and_oversized_uploads(served):
    async def run():
        async with aiohttp.ClientSession() as s:
            text = await upload(s, served.url, b"These are meeting notes, not speech.\n" * 50, "notes.wav")
            png = await upload(s, served.url, cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes(), "x.png")
            big = await upload(s, served.url, b"RIFF" + bytes(1_600_000), "big.wav")  # over --max_upload_mb 1
            form = aiohttp.FormData()
            form.add_field("audio", served.wav.read_bytes(), filename="form.wav", content_type="audio/wav")
            async with s.post(served.url + "api/upload", data=form) as r:
                multipart = r.status, await r.json()
            return text, png, big, multipart

    text, png, big, multipart = asyncio.run(run())
    assert text[0] == 415 and "notes.wav is not a WAV file" in text[1]["error"]
    assert png[0] == 415 and "x.png is not a WAV file" in png[1]["error"]
    assert big[0] == 413 and "the limit is 1 MB" in big[1]["error"]
    assert multipart[0] == 200 and multipart[1]["name"] == "form.wav"


def test_two_viewers_are_served_at_once(served):
    async def run():
        async with aiohttp.ClientSession() as s:
            ups = [(await upload(s, served.url, served.wav.read_bytes()))[1] for _ in range(2)]
            t0 = time.perf_counter()
            both = await asyncio.gather(*(answer(s, served.url, u["id"]) for u in ups))
            return both, time.perf_counter() - t0

    both, wall = asyncio.run(run())
    assert all(len(r["frames"]) == 50 for r in both)
    assert both[0]["end"]["answer"] != both[1]["end"]["answer"]
    # interleaved, not one after the other: each viewer's first frame came before the other's last
    first = [r["frames"][0][2] for r in both]
    last = [r["frames"][-1][2] for r in both]
    assert first[0] < last[1] and first[1] < last[0]
    assert wall < 2 * 2.0 + 5  # paced to 2-s speech, the two in parallel


def test_microphone_answer_over_websocket(served):
    from synthetic_clip import speech

    samples = speech(30, seed=5)[0]  # 1.2 s

    async def run():
        async with aiohttp.ClientSession() as s, s.ws_connect(served.url + "ws") as ws:
            await ws.send_json({"type": "mic_start"})
            count, end = 0, None
            for k in range(0, samples.size, 1600):  # 100-ms chunks, as the page sends them
                await ws.send_bytes(samples[k : k + 1600].astype("<f4").tobytes())
            await ws.send_json({"type": "mic_end"})
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    count += 1
                elif json.loads(msg.data)["type"] == "end":
                    end = json.loads(msg.data)
                    break
            return count, end

    count, end = asyncio.run(run())
    assert count == end["frames"] == 30
    rec = next(r for r in served.log_records() if r["id"] == end["answer"])
    assert rec["audio"]["name"] == "microphone" and rec["frames"] == 30 and rec["settings"]["speech"] == "microphone"


def test_serve_refuses_a_busy_port(served):
    from badinputs import one_line_error, run_cli

    port = served.url.rsplit(":", 1)[1].strip("/")
    proc = run_cli("serve", "-S", str(served.data), "-M", str(served.model), "--port", port, "--device", "cpu", timeout=120)
    one_line_error(proc, f"cannot listen on 127.0.0.1:{port}", "--port")
