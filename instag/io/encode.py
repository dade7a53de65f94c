"""Video encoding: frames -> mp4, and muxing a wav into it.

Frames are piped as raw RGB to the ffmpeg binary that ships in the ``imageio-ffmpeg`` wheel
(H.264, yuv420p, plays everywhere). Where that wheel is missing (a bare GPU server) a system
``ffmpeg`` on PATH is used, and failing that OpenCV's ``mp4v`` writer (no audio muxing then).
Every output is written atomically (:mod:`instag.io.atomic`) and carries a metadata comment
marking it as synthesized.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np

from instag.errors import InstagError
from instag.io.atomic import atomic_path

SYNTHESIZED_COMMENT = "synthesized by instag (audio-driven 3D Gaussian talking head); not a real recording"
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv")  # containers that take H.264 with AAC sound


def check_video_output(path: str | os.PathLike, flag: str = "--output", inputs: dict[str, Any] | None = None) -> Path:
    """Refuse, before any rendering, an output video path that cannot be written as one: a folder, a name without a
    video extension (ffmpeg picks the container from it), or one of the command's ``inputs``
    (:func:`instag.io.atomic.check_output`)."""
    from instag.io.atomic import check_output

    return check_output(path, flag, VIDEO_SUFFIXES, inputs)


def ffmpeg_exe() -> str | None:
    """Path of an ffmpeg binary: imageio-ffmpeg's, else one on PATH, else None."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return shutil.which("ffmpeg")


def _as_uint8_rgb(frame: Any) -> np.ndarray:
    """uint8 [H,W,3] RGB from uint8 [H,W,3] or a float [3,H,W] tensor/array in [0,1]."""
    if hasattr(frame, "detach"):
        frame = frame.detach().float().clamp(0, 1).mul(255).round().to("cpu").byte().permute(1, 2, 0).numpy()
    arr = np.asarray(frame)
    if arr.dtype != np.uint8:
        if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
            arr = arr.transpose(1, 2, 0)
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InstagError(f"video frames must be [H,W,3] RGB images, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


class VideoWriter:
    """Write RGB frames to an mp4 at ``fps``; the file appears under ``path`` on :meth:`close`.

    Usage::

        with VideoWriter("out.mp4", fps=25) as vw:
            for frame in frames:      # uint8 [H,W,3] RGB, or float [3,H,W] in [0,1]
                vw.write(frame)

    An exception inside the ``with`` block discards the partial file. With ``background=True``
    frames are handed to the encoder by a thread (up to ``queue_size`` frames wait), so rendering
    the next frames overlaps with encoding.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 25.0, crf: int = 18, comment: str = SYNTHESIZED_COMMENT,
                 backend: str = "auto", background: bool = False, queue_size: int = 32):
        if backend not in ("auto", "ffmpeg", "opencv"):
            raise ValueError(f"backend must be auto, ffmpeg or opencv, not {backend!r}")
        self.path = Path(path)
        self.fps = float(fps)
        self.crf = int(crf)
        self.comment = comment
        self.exe = ffmpeg_exe() if backend in ("auto", "ffmpeg") else None
        if backend == "ffmpeg" and self.exe is None:
            raise InstagError("no ffmpeg binary found: pip install imageio-ffmpeg (or put ffmpeg on PATH)")
        self.backend = "ffmpeg" if self.exe else "opencv"
        self.num_frames = 0
        self.size: tuple[int, int] | None = None  # (width, height)
        self._stack = contextlib.ExitStack()
        self._tmp: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._cv_writer: Any = None
        self._queue: queue.Queue | None = queue.Queue(maxsize=queue_size) if background else None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(exc_type, exc, tb)

    def _open(self, width: int, height: int) -> None:
        self.size = (width, height)
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        if self.backend == "ffmpeg":
            cmd = [
                self.exe, "-y", "-loglevel", "error",
                "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{self.fps:g}", "-i", "-",
                "-an", "-c:v", "libx264", "-preset", "veryfast", "-crf", str(self.crf), "-pix_fmt", "yuv420p",
                # yuv420p needs even sizes: pad by one pixel where needed
                "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
                "-metadata", f"comment={self.comment}", "-movflags", "+faststart", str(self._tmp),
            ]
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        else:
            import cv2

            self._cv_writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
            if not self._cv_writer.isOpened():
                raise InstagError(f"OpenCV cannot open a video writer for {self.path}; pip install imageio-ffmpeg")
        if self._queue is not None:
            self._thread = threading.Thread(target=self._drain, name="instag-encode", daemon=True)
            self._thread.start()

    def _drain(self) -> None:
        """Encoder thread: write queued frames until ``None``; after an error keep emptying the queue."""
        while True:
            img = self._queue.get()
            if img is None:
                return
            if self._error is None:
                try:
                    self._encode(img)
                except BaseException as err:  # handed to the caller by write() / close()
                    self._error = err

    def _encode(self, img: np.ndarray) -> None:
        if self._proc is not None:
            try:
                self._proc.stdin.write(img.tobytes())
            except BrokenPipeError as err:
                raise InstagError(f"ffmpeg stopped while writing {self.path}: {self._stderr()}") from err
        else:
            self._cv_writer.write(img[:, :, ::-1].copy())

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def write(self, frame: Any) -> None:
        """Append one frame: uint8 [H,W,3] RGB, or float [3,H,W] in [0,1] (tensor or array)."""
        img = _as_uint8_rgb(frame)
        h, w = img.shape[:2]
        if self.size is None:
            self._open(w, h)
        elif (w, h) != self.size:
            raise InstagError(f"frame {self.num_frames} of {self.path} is {w}x{h}, the video is {self.size[0]}x{self.size[1]}")
        if self._queue is not None:
            if self._error is not None:
                self._stop_thread()
            self._queue.put(img)
        else:
            self._encode(img)
        self.num_frames += 1

    def _stderr(self) -> str:
        if self._proc is None or self._proc.stderr is None:
            return ""
        return " ".join(self._proc.stderr.read().decode(errors="replace").split())[-400:]

    def close(self) -> Path:
        """Finish the file and move it into place; returns its path."""
        if self.size is None:
            raise InstagError(f"no frames were written to {self.path}")
        try:
            self._stop_thread()
            if self._proc is not None:
                self._proc.stdin.close()
                code = self._proc.wait()
                if code != 0:
                    raise InstagError(f"ffmpeg failed writing {self.path} (exit {code}): {self._stderr()}")
                self._proc.stderr.close()
            else:
                self._cv_writer.release()
        except BaseException as err:
            self._stack.__exit__(type(err), err, err.__traceback__)
            raise
        self._stack.close()
        return self.path

    def abort(self, exc_type=None, exc=None, tb=None) -> None:
        """Stop encoding and remove the partial file."""
        with contextlib.suppress(BaseException):
            self._stop_thread()
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        if self._cv_writer is not None:
            self._cv_writer.release()
        self._stack.__exit__(exc_type or InstagError, exc or InstagError("aborted"), tb)


def write_video(path: str | os.PathLike, frames, fps: float = 25.0, **kwargs) -> Path:
    """Write an iterable of frames (see :meth:`VideoWriter.write`) to ``path``."""
    with VideoWriter(path, fps=fps, **kwargs) as vw:
        for frame in frames:
            vw.write(frame)
    return Path(path)


def _header_duration(exe: str, path: str | os.PathLike) -> float | None:
    """Container duration in seconds from ffmpeg's header dump, or None."""
    res = subprocess.run([exe, "-hide_banner", "-i", str(path)], capture_output=True)
    for line in res.stderr.decode(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("Duration:"):
            stamp = line.split(",")[0].split()[1]
            try:
                h, m, sec = stamp.split(":")
                return int(h) * 3600 + int(m) * 60 + float(sec)
            except ValueError:
                return None
    return None


def mux_audio(video: str | os.PathLike, wav: str | os.PathLike, out: str | os.PathLike,
              comment: str = SYNTHESIZED_COMMENT, duration: float | None = None) -> Path:
    """Copy ``video``'s picture and add ``wav`` as an AAC track, padded with silence or cut to the
    video's length (``duration`` in seconds, read from the video when not given)."""
    exe = ffmpeg_exe()
    if exe is None:
        raise InstagError(f"cannot add the audio {wav} to {video}: no ffmpeg binary; pip install imageio-ffmpeg")
    for p in (video, wav):
        if not Path(p).is_file():
            raise InstagError(f"cannot mux audio: {p} does not exist")
    if duration is None:
        duration = _header_duration(exe, video)
    # -shortest with a copied video stream can drop the last frame: pad the audio and cut both at the
    # video's own length instead
    length = ["-af", "apad", "-t", f"{duration:.6f}"] if duration else ["-shortest"]
    with atomic_path(out) as tmp:
        cmd = [
            exe, "-y", "-loglevel", "error", "-i", str(video), "-i", str(wav),
            "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-b:a", "160k", *length,
            "-metadata", f"comment={comment}", "-movflags", "+faststart", str(tmp),
        ]
        res = subprocess.run(cmd, capture_output=True)
        if res.returncode != 0:  # named by what the user gave: the inputs are often staged temporaries
            msg = res.stderr.decode(errors="replace").replace(str(tmp), str(out)).replace(str(video), "<video>")
            raise InstagError(f"cannot write {out}: ffmpeg could not add the sound of {wav} to it "
                              f"({' '.join(msg.split())[-400:]})")
    return Path(out)


def probe_media(path: str | os.PathLike) -> dict:
    """Decoded facts of a media file, by decoding it with ffmpeg.

    Returns ``{"frames": int, "audio_seconds": float | None, "comment": str | None}``;
    ``audio_seconds`` is the length of the decoded first audio stream (None when there is none).
    """
    exe = ffmpeg_exe()
    if exe is None:
        raise InstagError("probing a video needs an ffmpeg binary: pip install imageio-ffmpeg")
    path = str(path)
    res = subprocess.run([exe, "-hide_banner", "-i", path, "-map", "0:v:0", "-f", "null", "-"], capture_output=True)
    err = res.stderr.decode(errors="replace")
    if res.returncode != 0:
        raise InstagError(f"cannot read {path}: {' '.join(err.split())[-300:]}")
    frames = 0
    for tok in err.replace("\r", "\n").split("\n"):
        tok = tok.strip()
        if tok.startswith("frame="):
            frames = int(tok.split("=", 1)[1].split()[0])
    comment = None
    for line in err.splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() == "comment" and comment is None:
            comment = value.strip()
    audio_seconds = None
    if "Audio:" in err:
        pcm = subprocess.run([exe, "-loglevel", "error", "-i", path, "-map", "0:a:0", "-f", "s16le", "-ac", "1",
                              "-ar", "16000", "-"], capture_output=True)
        if pcm.returncode == 0:
            audio_seconds = len(pcm.stdout) / 2 / 16000.0
    return {"frames": frames, "audio_seconds": audio_seconds, "comment": comment}
