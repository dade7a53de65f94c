"""``instag serve -S data/<ID> -M output/<ID>``: a local web page on which the avatar answers speech in real time.

The person uploads a WAV or speaks into the microphone; the server drives the chunked streaming path
(:class:`instag.infer.stream.StreamSynthesizer`) with that speech and sends each frame over a WebSocket as soon as
it is rendered; the page plays the speech and shows frame ``i`` when the sound reaches ``i / 25`` s, so picture
and sound stay in sync whatever the network or rendering jitter (a frame that arrives after its 1/25-s moment is
left out, never shown behind the sound; the page counts the frames it showed). Every answer is logged (:mod:`instag.infer.sessionlog`) and the page asks for a thumbs up or
down with an optional note, logged beside it.

HTTP API (JSON errors: ``{"error": "..."}`` with 400, 404, 413 or 415):

- ``GET /``: the page; ``GET /api/info``: frame size, limits, model;
- ``POST /api/upload``: a WAV as the raw body (or the ``audio`` field of a multipart form); refused with 413 over
  ``--max_upload_mb`` or ``--max_seconds``, with 415 when it is not a WAV file we can read; answers
  ``{"id", "seconds", "frames", "sha256"}``;
- ``GET /api/audio/<id>``: the uploaded speech as 16-kHz 16-bit PCM WAV (what the page plays);
- ``POST /api/feedback``: ``{"answer", "rating": "up"|"down", "note"}``;
- ``GET /ws``: the WebSocket. The page sends ``{"type": "play", "upload": id}``, or ``{"type": "mic_start"}``,
  binary float32 16-kHz mono chunks, then ``{"type": "mic_end"}``; the server answers ``{"type": "start",
  "answer", "fps", "width", "height", "frames"}``, one binary message per frame (uint32 little-endian header
  length, a JSON header ``{"i", "t", "latency_ms", "lip"}``, then the JPEG), and ``{"type": "end", "answer",
  "frames", "sync", "latency"}`` (or ``{"type": "error", "message"}``).

Rendering runs in a thread pool (``--workers``), so viewers do not block each other or the event loop; an
uploaded answer is rendered at most :data:`AHEAD_S` ahead of its playback, which keeps the pool shared fairly.
"""

from __future__ import annotations

import asyncio
import io
import json
import shlex
import struct
import sys
import tempfile
import time
import wave
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from instag.config import parse
from instag.data.format import AUDIO_SAMPLE_RATE, FPS, DatasetLayout
from instag.errors import InstagError
from instag.infer.delivery import DELIVERY_MODES, Controls

PAGE = Path(__file__).with_name("page.html")
AHEAD_S = 1.0  # an uploaded answer is rendered at most this far ahead of real time
MAX_UPLOADS = 32  # uploads kept in memory (oldest dropped)
MAX_ANSWERS = 1024  # answer ids remembered for feedback
DRAIN_FACTOR = 4  # an oversized body up to this many times the limit is read to its end before the 413


@dataclass
class ServeConfig:
    """A local web page where the avatar answers uploaded or spoken speech in real time."""

    source_path: str = field(metadata={"flags": ("-S", "-s"), "help": "processed clip data/<ID> (poses, backgrounds)"})
    model_path: str = field(metadata={"flags": ("-M", "-m"), "help": "trained model folder output/<ID>"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (another than 127.0.0.1 opens the page to the network)"})
    port: int = field(default=8000, metadata={"min": 0, "max": 65535, "help": "TCP port (0 = any free port, printed at start)"})
    max_upload_mb: float = field(default=20.0, metadata={"above": 0, "help": "largest WAV upload in MB"})
    max_seconds: float = field(default=120.0, metadata={"above": 0, "help": "longest speech answered, uploaded or spoken, in seconds"})
    workers: int = field(default=2, metadata={"min": 1, "help": "render threads shared by all viewers"})
    chunk_ms: int = field(default=200, metadata={"min": 1, "help": "audio fed to the streaming synthesizer per step, in ms"})
    lookahead_ms: float = field(default=100.0, metadata={"min": 0, "special": (-1,),
        "help": "emit frame i after i*40 ms + this much audio (-1: 292 ms, the frames of offline synthesis)"})
    dilate: bool = field(default=True, metadata={"help": "dilate the mouth alpha 13x13 before compositing, as upstream's scripts do"})
    batch: int = field(default=4, metadata={"min": 1, "help": "largest number of frames rendered at once"})
    jpeg_quality: int = field(default=85, metadata={"min": 1, "max": 100, "help": "JPEG quality of the frames sent (1-100)"})
    device: str | None = field(default=None, metadata={"help": "cuda or cpu (default: cuda when available)"})
    delivery: str | None = field(default=None, metadata={
        "help": "auto: each answer takes the delivery policy's controls (logs/delivery.json) and its log records the arm, "
                "so that thumbs given on the page update the policy; off (default): plain delivery",
        "choices": DELIVERY_MODES})


@dataclass
class Upload:
    samples: np.ndarray  # float32 [n] at 16 kHz
    name: str
    sha256: str


class Avatar:
    """The model and clip, loaded once and shared by every viewer; uploads and answer ids in memory."""

    def __init__(self, cfg: ServeConfig):
        from instag.data.dataset import load_clip
        from instag.infer.synthesize import load_model

        self.cfg = cfg
        root = DatasetLayout.of(cfg.source_path).root
        self.model = load_model(cfg.model_path, None, cfg.device, source=root)
        self.clip = load_clip(root, "train", self.model.audio_extractor)
        cam = self.clip.frames[0].camera
        self.size = (cam.width, cam.height)
        self.whisper = None
        if self.model.audio_extractor == "whisper":  # one encoder for every answer
            from instag.audio.registry import get_extractor

            self.whisper = get_extractor("whisper")
        self.pool = ThreadPoolExecutor(max_workers=max(1, cfg.workers), thread_name_prefix="instag-render")
        self.uploads: OrderedDict[str, Upload] = OrderedDict()
        self.answers: OrderedDict[str, str] = OrderedDict()  # answer id -> kind of speech (upload / microphone)

    def synthesizer(self, controls: Controls | None = None):
        from instag.infer.stream import StreamSynthesizer

        cfg = self.cfg
        synth = StreamSynthesizer(self.model, self.clip, dilate=cfg.dilate, batch=cfg.batch,
                                  lookahead_ms=None if cfg.lookahead_ms < 0 else cfg.lookahead_ms, controls=controls)
        if self.whisper is not None:
            from instag.infer.features import WhisperFeatureBuilder

            synth.features = WhisperFeatureBuilder(self.whisper)
        return synth

    def remember(self, table: OrderedDict, key: str, value, limit: int) -> None:
        table[key] = value
        while len(table) > limit:
            table.popitem(last=False)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(frame[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise InstagError("cannot encode a frame as JPEG")
    return data.tobytes()


def frame_message(index: int, latency_ms: float, lip: float | None, jpeg: bytes) -> bytes:
    header = json.dumps({"i": index, "t": index / FPS, "latency_ms": round(latency_ms, 2),
                         "lip": None if lip is None else float(f"{lip:.4g}")}).encode()
    return struct.pack("<I", len(header)) + header + jpeg


def wav_bytes(samples: np.ndarray) -> bytes:
    """16-kHz mono float samples as a 16-bit PCM WAV file in memory."""
    pcm = np.round(np.clip(samples, -1, 1) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(AUDIO_SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def decode_upload(data: bytes, name: str, max_seconds: float) -> np.ndarray:
    """16-kHz mono samples of an uploaded WAV; :class:`UploadRefused` when it is not one we read or is too long."""
    from instag.io.wav import load_audio_16k_mono

    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise UploadRefused(415, f"{name} is not a WAV file ({file_kind(data)}); convert it to WAV first (ffmpeg -i "
                                 f"{shlex.quote(name)} -ar 16000 {shlex.quote(Path(name).stem + '.wav')}) and upload "
                                 "that, or use the microphone")
    with tempfile.TemporaryDirectory(prefix="instag-upload-") as tmp:
        path = Path(tmp) / "upload.wav"
        path.write_bytes(data)
        try:
            samples = load_audio_16k_mono(path)
        except InstagError as err:
            raise UploadRefused(415, str(err).replace(str(path), name)) from err
    seconds = samples.shape[0] / AUDIO_SAMPLE_RATE
    if seconds > max_seconds:
        raise UploadRefused(413, f"{name} holds {seconds:.1f} s of speech; the limit is {max_seconds:g} s (--max_seconds)")
    if samples.shape[0] < AUDIO_SAMPLE_RATE // FPS:
        raise UploadRefused(400, f"{name} is too short to drive a single frame ({seconds * 1000:.0f} ms; a frame is 40 ms)")
    return samples


# leading bytes of the audio formats people upload instead of a WAV
SIGNATURES = ((b"ID3", "an MP3 file"), (b"\xff\xfb", "an MP3 file"), (b"\xff\xf3", "an MP3 file"), (b"\xff\xf2", "an MP3 file"),
              (b"OggS", "an Ogg file"), (b"fLaC", "a FLAC file"), (b"\x1aE\xdf\xa3", "a WebM/Matroska file"),
              (b"\xff\xf1", "an AAC file"), (b"\xff\xf9", "an AAC file"), (b"RIFF", "a RIFF file but not WAVE"))


def file_kind(data: bytes) -> str:
    """What the first bytes of an upload say it is, in words (never the raw bytes)."""
    for magic, kind in SIGNATURES:
        if data.startswith(magic):
            return f"it is {kind}"
    if data[4:8] == b"ftyp":
        return "it is an MP4/M4A file"
    if len(data) < 12:
        return f"it holds only {len(data)} bytes"
    return "its first bytes are " + " ".join(f"{b:02x}" for b in data[:8]) + ", no known audio format"


class UploadRefused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------- one answer
class Answer:
    """One answer on one WebSocket: speech pushed in chunks, frames sent as they are rendered, then the log."""

    def __init__(self, avatar: Avatar, ws, kind: str, name: str, language: str | None, total_frames: int | None):
        from instag.infer.delivery import resolve, settings_entry
        from instag.infer.sessionlog import SessionRecorder, new_id

        self.avatar = avatar
        self.ws = ws
        self.id = new_id()
        self.kind = kind
        cfg = avatar.cfg
        arm, controls = resolve(cfg.model_path, cfg.delivery, Controls(), log=lambda *_: None)
        self.synth = avatar.synthesizer(controls)
        self.session = SessionRecorder(cfg.model_path, "serve", audio_name=name, language=language, session_id=self.id,
                                       settings={"speech": kind, "chunk_ms": cfg.chunk_ms, "lookahead_ms": cfg.lookahead_ms,
                                                 "dilate": cfg.dilate, "jpeg_quality": cfg.jpeg_quality,
                                                 "delivery": settings_entry(arm, controls, None)},
                                       source_path=DatasetLayout.of(cfg.source_path).root,
                                       performance=self.synth.director.performance)
        self.total_frames = total_frames
        self.samples: list[np.ndarray] = []
        self.sent = 0
        self.render_seconds = 0.0
        self.t_start = time.perf_counter()
        self.first_frame_s: float | None = None
        self.closed = False

    async def start(self) -> None:
        w, h = self.avatar.size
        await self.ws.send_json({"type": "start", "answer": self.id, "speech": self.kind, "fps": FPS, "width": w,
                                 "height": h, "frames": self.total_frames})

    def _render(self, chunk: np.ndarray | None) -> list[tuple[bytes, float | None, float]]:
        """Push ``chunk`` (None: the end of the speech); JPEGs of the frames it completes (worker thread)."""
        t0 = time.perf_counter()
        frames = list(self.synth.push(chunk)) if chunk is not None else list(self.synth.finish())
        first = self.synth.next_frame - len(frames)
        out = []
        for k, frame in enumerate(frames):
            lip = self.synth.lip_gap[first + k] if first + k < len(self.synth.lip_gap) else None
            out.append((encode_jpeg(frame, self.avatar.cfg.jpeg_quality), lip, time.perf_counter()))
        self.render_seconds += time.perf_counter() - t0
        return out

    async def push(self, chunk: np.ndarray | None) -> None:
        """Feed ``chunk`` (None = end of speech) and send the frames it completes."""
        if chunk is not None:
            self.samples.append(chunk)
        t_arrival = time.perf_counter()
        loop = asyncio.get_running_loop()
        rendered = await loop.run_in_executor(self.avatar.pool, self._render, chunk)
        for jpeg, lip, t_ready in rendered:
            latency_ms = 1000 * (t_ready - t_arrival)
            self.session.frame(latency_ms)
            if self.first_frame_s is None:
                self.first_frame_s = time.perf_counter() - self.t_start
            await self.ws.send_bytes(frame_message(self.sent, latency_ms, lip, jpeg))
            self.sent += 1

    @property
    def seconds(self) -> float:
        return sum(c.shape[0] for c in self.samples) / AUDIO_SAMPLE_RATE

    async def finish(self, completed: bool = True) -> dict | None:
        """End of speech: the last frames, the log record, the ``end`` message. Returns the record."""
        from instag.infer.sessionlog import jsonable, write_session

        if self.closed:
            return None
        self.closed = True
        loop = asyncio.get_running_loop()
        if completed:
            await self.push(None)
        else:
            self.synth.backgrounds.close()
        samples = np.concatenate(self.samples) if self.samples else np.zeros(0, np.float32)
        wall = time.perf_counter() - self.t_start
        extra = {"completed": completed, "time_to_first_frame_ms": None if self.first_frame_s is None else 1000 * self.first_frame_s,
                 "render_fps": self.sent / self.render_seconds if self.render_seconds > 0 else None, "wall_seconds": wall}
        plan = self.synth.delivered_plan()
        n = min(self.sent, len(plan))
        plan.cameras, plan.au_exp = plan.cameras[:n], plan.au_exp[:n]
        self.session.latency_ms = self.session.latency_ms[:n]
        record = await loop.run_in_executor(self.avatar.pool, write_session, self.session,
                                            samples if samples.size else None, None, plan, self.synth.lip_gap, extra)
        self.avatar.remember(self.avatar.answers, self.id, self.kind, MAX_ANSWERS)
        if completed and not self.ws.closed:
            await self.ws.send_json({"type": "end", "answer": self.id, "frames": self.sent, "seconds": self.seconds,
                                     "time_to_first_frame_ms": extra["time_to_first_frame_ms"],
                                     "render_fps": extra["render_fps"],
                                     "sync": None if record is None else jsonable(record["sync"]),
                                     "latency": None if record is None else jsonable(record["latency"])})
        return record


async def play_upload(avatar: Avatar, ws, upload: Upload, language: str | None) -> None:
    """Answer an uploaded WAV: its chunks fed at most :data:`AHEAD_S` ahead of real time."""
    from instag.audio.mel import frame_count

    cfg = avatar.cfg
    answer = Answer(avatar, ws, "upload", upload.name, language, frame_count(upload.samples.shape[0]))
    await answer.start()
    step = max(1, int(round(cfg.chunk_ms * AUDIO_SAMPLE_RATE / 1000)))
    try:
        for s in range(0, upload.samples.shape[0], step):
            due = answer.t_start + s / AUDIO_SAMPLE_RATE - AHEAD_S
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await answer.push(upload.samples[s : s + step])
        await answer.finish()
    except (ConnectionError, asyncio.CancelledError):
        await answer.finish(completed=False)
        raise


# ---------------------------------------------------------------------------------------- handlers
def _error(status: int, message: str):
    from aiohttp import web

    return web.json_response({"error": message}, status=status)


async def read_body(request, limit: int) -> tuple[bytes, str]:
    """The uploaded file's bytes and name (raw body, or the ``audio`` field of a multipart form)."""
    declared = request.content_length
    if declared is not None and declared > DRAIN_FACTOR * limit:
        raise UploadRefused(413, f"the upload is {declared / 2**20:.1f} MB; the limit is {limit / 2**20:g} MB (--max_upload_mb)")
    name = unquote(request.headers.get("X-Filename") or "") or "upload"
    source = request.content
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        part = await reader.next()
        while part is not None and part.name != "audio":
            part = await reader.next()
        if part is None:
            raise UploadRefused(400, "the form has no 'audio' file field")
        name = part.filename or name
        chunks, size = [], 0
        while chunk := await part.read_chunk(1 << 16):
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
    else:
        chunks, size = [], 0
        async for chunk in source.iter_chunked(1 << 16):
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > DRAIN_FACTOR * limit:
                break
    if size > limit:
        raise UploadRefused(413, f"{name} is {size / 2**20:.1f} MB; the limit is {limit / 2**20:g} MB (--max_upload_mb)")
    if size == 0:
        raise UploadRefused(400, "the upload is empty; choose a WAV file")
    return b"".join(chunks), Path(name).name


def make_app(avatar: Avatar):
    from aiohttp import WSMsgType, web

    from instag.infer.sessionlog import append_record, audio_sha256, feedback_record

    cfg = avatar.cfg
    limit = int(cfg.max_upload_mb * 2**20)
    routes = web.RouteTableDef()

    @routes.get("/")
    async def index(request):
        return web.Response(text=PAGE.read_text(encoding="utf-8"), content_type="text/html")

    @routes.get("/favicon.ico")
    async def favicon(request):
        return web.Response(status=204)

    @routes.get("/api/info")
    async def info(request):
        w, h = avatar.size
        return web.json_response({"model": str(cfg.model_path), "source": str(cfg.source_path), "fps": FPS, "width": w,
                                  "height": h, "max_upload_mb": cfg.max_upload_mb, "max_seconds": cfg.max_seconds,
                                  "audio_extractor": avatar.model.audio_extractor})

    @routes.post("/api/upload")
    async def upload(request):
        try:
            data, name = await read_body(request, limit)
            loop = asyncio.get_running_loop()
            samples = await loop.run_in_executor(avatar.pool, decode_upload, data, name, cfg.max_seconds)
        except UploadRefused as err:
            return _error(err.status, str(err))
        item = Upload(samples, name, audio_sha256(samples))
        upload_id = item.sha256[:16] + f"-{len(avatar.uploads):x}{int(time.time() * 1000) % 100000:x}"
        avatar.remember(avatar.uploads, upload_id, item, MAX_UPLOADS)
        from instag.audio.mel import frame_count

        return web.json_response({"id": upload_id, "name": name, "seconds": samples.shape[0] / AUDIO_SAMPLE_RATE,
                                  "frames": frame_count(samples.shape[0]), "sha256": item.sha256})

    @routes.get("/api/audio/{upload_id}")
    async def audio(request):
        item = avatar.uploads.get(request.match_info["upload_id"])
        if item is None:
            return _error(404, "no such upload (the server keeps the latest uploads only); upload the WAV again")
        return web.Response(body=wav_bytes(item.samples), content_type="audio/wav")

    @routes.post("/api/feedback")
    async def feedback(request):
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "feedback must be JSON: {\"answer\": id, \"rating\": \"up\" or \"down\", \"note\": text}")
        answer_id, rating, note = body.get("answer"), body.get("rating"), body.get("note")
        if answer_id not in avatar.answers:
            return _error(404, f"no answer {answer_id!r} on this server; rate an answer the page has shown")
        if rating not in ("up", "down"):
            return _error(400, f"rating {rating!r}: expected \"up\" or \"down\"")
        if note is not None and not isinstance(note, str):
            return _error(400, "note must be text")
        record = feedback_record(answer_id, rating, note)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(avatar.pool, append_record, cfg.model_path, record)
        return web.json_response({"ok": True, "feedback": record})

    @routes.get("/ws")
    async def websocket(request):
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=1 << 20)
        await ws.prepare(request)
        playing: asyncio.Task | None = None
        mic: Answer | None = None
        max_samples = int(cfg.max_seconds * AUDIO_SAMPLE_RATE)

        async def say_error(message: str) -> None:
            if not ws.closed:
                await ws.send_json({"type": "error", "message": message})

        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        body = json.loads(msg.data)
                    except ValueError:
                        await say_error("messages must be JSON")
                        continue
                    kind = body.get("type") if isinstance(body, dict) else None
                    busy = (playing is not None and not playing.done()) or mic is not None
                    language = body.get("language") if isinstance(body, dict) else None
                    language = language[:16] if isinstance(language, str) and language else None
                    if kind == "play":
                        item = avatar.uploads.get(body.get("upload"))
                        if item is None:
                            await say_error("no such upload; upload the WAV again")
                        elif busy:
                            await say_error("an answer is still playing; wait for its end")
                        else:
                            playing = asyncio.create_task(play_upload(avatar, ws, item, language))
                    elif kind == "mic_start":
                        if busy:
                            await say_error("an answer is still playing; wait for its end")
                        else:
                            mic = Answer(avatar, ws, "microphone", "microphone", language, None)
                            await mic.start()
                    elif kind == "mic_end":
                        if mic is not None:
                            answer, mic = mic, None
                            await answer.finish()
                    else:
                        await say_error(f"unknown message type {kind!r}")
                elif msg.type == WSMsgType.BINARY:
                    if mic is None:
                        await say_error("audio received outside a microphone answer; send mic_start first")
                        continue
                    data = msg.data[: len(msg.data) // 4 * 4]
                    chunk = np.nan_to_num(np.frombuffer(data, "<f4").astype(np.float32), nan=0.0).clip(-1, 1)
                    left = max_samples - int(sum(c.shape[0] for c in mic.samples))
                    await mic.push(chunk[:left])
                    if left <= chunk.shape[0]:
                        answer, mic = mic, None
                        await say_error(f"the speech reached {cfg.max_seconds:g} s (--max_seconds); answering what was said")
                        await answer.finish()
                elif msg.type == WSMsgType.ERROR:
                    break
            if playing is not None:
                await playing
        except ConnectionError:
            pass
        finally:
            if playing is not None and not playing.done():
                playing.cancel()
            if mic is not None:
                await mic.finish(completed=False)
        return ws

    app = web.Application(client_max_size=DRAIN_FACTOR * limit + (1 << 20))
    app.add_routes(routes)

    async def on_cleanup(app):
        avatar.close()

    app.on_cleanup.append(on_cleanup)
    return app


def main(argv: list[str] | None = None) -> int:
    import socket

    cfg = parse(ServeConfig, argv, prog="instag serve")
    try:
        from aiohttp import web
    except ImportError as err:
        raise InstagError("instag serve needs aiohttp: pip install 'instag[serve]'") from err
    avatar = Avatar(cfg)
    sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.host, cfg.port))
    except OSError as err:
        sock.close()
        raise InstagError(f"cannot listen on {cfg.host}:{cfg.port}: {err.strerror or err}; choose another --port "
                          "(0 = any free one)") from err
    sock.listen(128)  # connections wait in the backlog until the loop runs: the printed address answers at once
    host, port = sock.getsockname()[:2]
    w, h = avatar.size
    url_host = f"[{host}]" if ":" in host else host
    print(f"instag serve: http://{url_host}:{port}/ ({w}x{h}, {avatar.model.audio_extractor} features, on "
          f"{avatar.model.device}; logs in {Path(cfg.model_path) / 'logs'}); Ctrl-C stops", flush=True)
    if host not in ("127.0.0.1", "::1", "localhost"):
        print(f"instag serve: note: listening on {host}: the page and its uploads are open to the network", file=sys.stderr)
    web.run_app(make_app(avatar), sock=sock, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
