"""Interaction logs: one JSON object per line in ``<model>/logs/sessions.jsonl``, appended by every synthesis,
stream and served answer, plus the feedback people give on the page.

A ``session`` record holds:

- ``id``, ``kind`` (``synthesize`` | ``stream`` | ``serve``), ``started`` / ``ended`` (ISO 8601, UTC), ``model``
  (folder, the version from ``versions/`` when there is one, and ``source_path``, the processed clip ``-S``),
  ``output`` (the video written, null for the served page);
- ``audio``: ``sha256`` of the 16-kHz mono signal as 16-bit PCM (the same speech hashes alike whether it came as a
  file, an upload or from the microphone), ``seconds``, ``language`` (null unless given), ``name`` and ``stored``:
  the signal is kept once per hash under ``logs/audio/<sha256>.wav`` so that ``instag refine`` can score later
  versions on it;
- ``per_frame``: columns of one value per frame: ``mouth_opening`` (the model's predicted lip gap, the FM hook's
  gap of :meth:`instag.model.talking_head.TalkingHead.render_frames`: how far the model parts the lips, in its own
  units), ``blink`` (AU45), ``au`` (the eye and brow AU intensities that drove the frame), ``pose`` (head yaw,
  pitch, roll in degrees and position x, y, z in head units, in the camera's frame) and ``latency_ms``;
- ``settings``: the command's options, ``delivery`` (:mod:`instag.infer.delivery`) and ``performance``, what was
  asked of the head (:meth:`instag.infer.performance.Performance.asked`: expressions, blink, pose, gestures, AU csv,
  pauses; the defaults spelt out);
- ``sync``: measured on the model's predicted lip gap, not on the pixels a viewer sees (``measured_on`` says so):
  ``score`` = ``lip_gap_loudness_corr``, the correlation of that gap with the speech's RMS per frame
  (:func:`instag.metrics.lips.lagged_correlation`, best lag within ±5 frames), and ``lip_gap_closed_in_silence``
  (:mod:`instag.metrics.lips` over the silent frames of :mod:`instag.audio.activity`, the closed level from the
  session's own gaps). A gap the model shrinks in pauses can still leave the rendered lips apart: ``instag
  report`` measures the rendered video (``output``) as ``instag evaluate --pred`` does and shows that beside it;
- ``latency``: first frame, mean and 95th percentile per frame (ms) and frames per second.

A ``feedback`` record: ``session`` (a session id), ``rating`` (``up`` | ``down``), ``note``, ``time``.

Each record is one ``write`` of one line on a file opened for appending, under an exclusive ``flock`` and
followed by ``fsync``: a killed writer loses at most its own unfinished line, which :func:`read_records` skips.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import math
import os
import time
import uuid
from pathlib import Path

import numpy as np

from instag.data.format import AUDIO_SAMPLE_RATE, FPS

LOG_DIR = "logs"
LOG_FILE = "sessions.jsonl"
AUDIO_DIR = "audio"
KINDS = ("synthesize", "stream", "serve")
RATINGS = ("up", "down")
MAX_NOTE = 2000  # characters kept of a feedback note


def log_path(model_path: str | Path) -> Path:
    return Path(model_path) / LOG_DIR / LOG_FILE


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def append_record(model_path: str | Path, record: dict) -> Path:
    """Append ``record`` as one line to the model's log (see the module docstring for why it survives a kill)."""
    path = log_path(model_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(jsonable(record), ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_size and not _ends_with_newline(fd):
            line = b"\n" + line  # a killed writer left half a line: start ours on a line of its own
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def _ends_with_newline(fd: int) -> bool:
    return os.pread(fd, 1, os.fstat(fd).st_size - 1) == b"\n"


def read_records(model_path: str | Path) -> tuple[list[dict], int]:
    """The log's records in order, and the number of lines that could not be read (a writer killed mid-line)."""
    path = log_path(model_path)
    if not path.exists():
        return [], 0
    records, bad = [], 0
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(obj, dict) and obj.get("type") in ("session", "feedback"):
            records.append(obj)
        else:
            bad += 1
    return records, bad


def audio_sha256(samples: np.ndarray) -> str:
    """SHA-256 of 16-kHz mono float samples as 16-bit PCM (what the stored copy holds)."""
    return hashlib.sha256(_pcm16(samples).tobytes()).hexdigest()


def _pcm16(samples: np.ndarray) -> np.ndarray:
    return np.round(np.clip(np.asarray(samples, np.float64).reshape(-1), -1.0, 1.0) * 32767.0).astype("<i2")


def store_audio(model_path: str | Path, samples: np.ndarray, sha256: str) -> str:
    """Keep the session's speech under ``logs/audio/<sha256>.wav`` (once per hash); its path relative to ``logs/``."""
    from instag.io.wav import write_wav

    rel = f"{AUDIO_DIR}/{sha256}.wav"
    path = Path(model_path) / LOG_DIR / rel
    if not path.exists():
        write_wav(path, _pcm16(samples).astype(np.float32) / 32767.0, AUDIO_SAMPLE_RATE)
    return rel


def logged_audio(model_path: str | Path, limit: int | None = None) -> list[tuple[str, Path]]:
    """(sha256, path) of the distinct speech of the logged sessions still stored, most recent first."""
    records, _ = read_records(model_path)
    seen: dict[str, Path] = {}
    for rec in reversed(records):
        audio = rec.get("audio") or {}
        sha, stored = audio.get("sha256"), audio.get("stored")
        if rec.get("type") != "session" or not sha or not stored or sha in seen:
            continue
        path = Path(model_path) / LOG_DIR / stored
        if path.is_file():
            seen[sha] = path
    items = list(seen.items())
    return items[:limit] if limit is not None else items


# ---------------------------------------------------------------------------------------- per-frame measures
def head_pose(world_to_camera: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """(yaw, pitch, roll) in degrees and the head centre (x, y, z) in camera space of a world-to-camera matrix [4,4].

    The camera has OpenCV axes and the head faces +z: a frontal view is ``diag(1, -1, -1)``, which reads as zero
    angles; the angles are the ZYX Euler angles of the head's rotation relative to that view."""
    m = np.asarray(world_to_camera, np.float64)
    r = np.diag([1.0, -1.0, -1.0]) @ m[:3, :3]
    yaw = math.degrees(math.asin(float(np.clip(-r[2, 0], -1.0, 1.0))))
    pitch = math.degrees(math.atan2(r[2, 1], r[2, 2]))
    roll = math.degrees(math.atan2(r[1, 0], r[0, 0]))
    x, y, z = (float(v) for v in m[:3, 3])
    return yaw, pitch, roll, x, y, z


LIP_GAP_MEASURE = ("the model's predicted lip gap (FM hook, model units), not the rendered pixels; instag report "
                   "measures the rendered video as instag evaluate --pred does")


def sync_measures(lip_gap: np.ndarray, samples: np.ndarray | None) -> dict:
    """Gap–loudness correlation (best lag within ±5 frames) and the share of silent frames with the gap below its
    closed level, of the model's predicted lip gap [T] driven by ``samples`` (16 kHz); ``score`` is the correlation.
    Nulls when there is no sound or too few frames."""
    from instag.audio.activity import silent_frames
    from instag.metrics.lips import closed_in_silence, closed_level, lagged_correlation, speech_energy

    gap = np.asarray(lip_gap, np.float64)
    out = {"score": None, "lip_gap_loudness_corr": None, "lag_frames": None, "lip_gap_closed_in_silence": None,
           "silent_frames": 0, "lip_gap_closed_level": None, "measured_on": LIP_GAP_MEASURE}
    if samples is None or gap.size < 3 or not np.isfinite(gap).any():
        return out
    corr, lag = lagged_correlation(gap, speech_energy(samples, gap.size))
    silent = silent_frames(samples, gap.size)
    level = closed_level(gap)
    out.update(score=corr, lip_gap_loudness_corr=corr, lag_frames=lag, silent_frames=int(silent.sum()),
               lip_gap_closed_level=level, lip_gap_closed_in_silence=closed_in_silence(gap, silent, level))
    return out


def latency_summary(latency_ms: list[float], wall_seconds: float | None) -> dict:
    lat = np.asarray([v for v in latency_ms if v is not None and math.isfinite(v)], np.float64)
    out = {"first_frame_ms": float(lat[0]) if lat.size else None, "mean_ms": float(lat.mean()) if lat.size else None,
           "p95_ms": float(np.percentile(lat, 95)) if lat.size else None, "fps": None}
    if wall_seconds and wall_seconds > 0:
        out["fps"] = len(latency_ms) / wall_seconds
    return out


def model_version(model_path: str | Path) -> str | None:
    """The promoted version's name when the model folder has ``versions/`` (``instag refine``), else None."""
    registry = Path(model_path) / "versions" / "versions.json"
    try:
        return json.loads(registry.read_text(encoding="utf-8")).get("current")
    except (OSError, ValueError, AttributeError):
        return None


class SessionRecorder:
    """Collects one session's per-frame facts and appends its record at :meth:`finish`.

    Call :meth:`frame` once per frame as it is delivered (its latency), then :meth:`finish` with the driving
    samples, the per-frame cameras and AUs (the synthesis plan) and the model's lip gaps.
    """

    def __init__(self, model_path: str | Path, kind: str, *, audio_name: str | None = None, language: str | None = None,
                 settings: dict | None = None, session_id: str | None = None, source_path: str | Path | None = None,
                 output: str | Path | None = None, performance=None):
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r}: expected one of {KINDS}")
        self.model_path = Path(model_path)
        self.source_path = source_path
        self.output = output
        self.performance = performance  # a Performance: what was asked of the head, read when the record is made
        self.kind = kind
        self.id = session_id or new_id()
        self.audio_name = audio_name
        self.language = language
        self.settings = dict(settings or {})
        self.started = now_iso()
        self._t0 = time.perf_counter()
        self.latency_ms: list[float] = []

    def frame(self, latency_ms: float) -> None:
        self.latency_ms.append(float(latency_ms))

    def record(self, samples: np.ndarray | None, cameras: list, au_exp: np.ndarray, lip_gap: list[float],
               extra: dict | None = None) -> dict:
        """The session record (without writing it); ``cameras`` and ``au_exp`` [T,≥6] of the frames delivered."""
        n = len(self.latency_ms) if self.latency_ms else len(lip_gap)
        opening = np.asarray(lip_gap[:n], np.float64)
        au = np.asarray(au_exp, np.float64)[:n]
        poses = np.array([head_pose(_matrix(c)) for c in cameras[:n]], np.float64).reshape(-1, 6)
        audio: dict = {"name": self.audio_name, "language": self.language, "sha256": None, "seconds": None, "stored": None}
        if samples is not None:
            audio["sha256"] = audio_sha256(samples)
            audio["seconds"] = samples.shape[0] / AUDIO_SAMPLE_RATE
            audio["stored"] = store_audio(self.model_path, samples, audio["sha256"])
        names = au_names(au.shape[1] if au.ndim == 2 else 0)
        blink_col = names.index("AU45") if "AU45" in names else None
        per_frame = {
            "mouth_opening": _rounded(opening),
            "blink": _rounded(au[:, blink_col]) if blink_col is not None else [],
            "au": {name: _rounded(au[:, k]) for k, name in enumerate(names) if name != "AU45"},
            "pose": {key: _rounded(poses[:, k]) for k, key in enumerate(("yaw", "pitch", "roll", "x", "y", "z"))},
            "latency_ms": _rounded(np.asarray(self.latency_ms[:n], np.float64)),
        }
        settings = dict(self.settings)
        if self.performance is not None:
            settings["performance"] = self.performance.asked()
        rec = {
            "type": "session", "id": self.id, "kind": self.kind, "started": self.started, "ended": now_iso(),
            "model": {"path": str(self.model_path), "version": model_version(self.model_path),
                      "source_path": None if self.source_path is None else str(self.source_path)},
            "output": None if self.output is None else str(self.output),
            "audio": audio, "frames": int(n), "fps": FPS, "settings": settings,
            "per_frame": per_frame,
            "sync": sync_measures(opening, samples),
            "latency": latency_summary(self.latency_ms[:n], time.perf_counter() - self._t0),
        }
        rec.update(extra or {})
        return rec

    def finish(self, samples: np.ndarray | None, cameras: list, au_exp: np.ndarray, lip_gap: list[float],
               extra: dict | None = None) -> dict:
        """Build the record and append it to the log; returns it."""
        rec = self.record(samples, cameras, au_exp, lip_gap, extra)
        append_record(self.model_path, rec)
        return rec


def write_session(recorder: SessionRecorder, samples: np.ndarray | None, wav: str | Path | None, plan,
                  lip_gap: list[float], extra: dict | None = None) -> dict | None:
    """Append ``recorder``'s session for the frames of ``plan`` (:class:`instag.infer.synthesize.Plan`) driven by
    ``samples`` (or the speech read from ``wav`` when the driving audio was a feature file). A log that cannot be
    written costs a note on stderr, never the session's output."""
    import sys

    from instag.errors import InstagError

    try:
        if samples is None and wav is not None and Path(wav).suffix.lower() == ".wav":
            from instag.io.wav import load_audio_16k_mono

            samples = load_audio_16k_mono(wav)
        return recorder.finish(samples, plan.cameras, plan.au_exp, lip_gap, extra)
    except (OSError, InstagError) as err:
        print(f"instag: note: session not logged in {log_path(recorder.model_path)}: {err}", file=sys.stderr)
        return None


def feedback_record(session_id: str, rating: str, note: str | None = None) -> dict:
    if rating not in RATINGS:
        raise ValueError(f"rating {rating!r}: expected one of {RATINGS}")
    return {"type": "feedback", "session": str(session_id), "rating": rating,
            "note": (note or "")[:MAX_NOTE] or None, "time": now_iso()}


def au_names(columns: int) -> tuple[str, ...]:
    """Names of the AU columns of a plan's ``au_exp`` (:data:`instag.data.dataset.AU_EXP_COLUMNS`, AU45 last)."""
    from instag.data.dataset import AU_EXP_COLUMNS

    names = tuple(c.removesuffix("_r") for c in AU_EXP_COLUMNS)
    return names if len(names) == columns else tuple(f"AU{k}" for k in range(columns))


def _matrix(camera) -> np.ndarray:
    w2c = camera.world_to_camera
    return w2c.detach().cpu().numpy() if hasattr(w2c, "detach") else np.asarray(w2c)


def _rounded(values: np.ndarray, digits: int = 4) -> list:
    """Finite values to ``digits`` significant digits (None for NaN), for a compact log line."""
    return [None if not math.isfinite(v) else float(f"{v:.{digits}g}") for v in np.asarray(values, np.float64).ravel()]


def jsonable(obj):
    """``obj`` with NaN and infinities as None and numpy scalars as Python numbers (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj
