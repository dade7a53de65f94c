"""Video and audio in, through the ffmpeg binary that ships in the ``imageio-ffmpeg`` wheel.

* :func:`probe` reads a video's facts (size, frame rate, frame count, duration, audio) and
  refuses files that are not videos, are truncated, or have no audio track.
* :func:`iter_frames` decodes frames once, resampled to 25 FPS, optionally cropped and
  resized by ffmpeg's own filters, as BGR ``uint8 [H,W,3]`` arrays.
* :func:`sample_frames` decodes a few frames per second (for locating the face before the
  real decode).
* :func:`read_audio` extracts an audio track as 16 kHz mono float32 samples.

A file is read as a player shows it: the video and audio streams marked default (else the first), the
picture turned by its rotation metadata and stretched to its sample aspect ratio.

ffmpeg is imported lazily (``imageio_ffmpeg``) and driven through pipes, so paths with
spaces or non-ASCII characters need no quoting.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from instag.errors import InstagError

TARGET_FPS = 25
AUDIO_RATE = 16000
# MediaPipe's face detector finds a face that fills a frame from about 24 px a side (16 px: none); a smaller picture
# cannot serve, whatever it shows
MIN_SIDE = 24
_STREAM_LINE = re.compile(r"^\s*Stream #(\d+):(\d+)\S*: (Video|Audio): (.*)$", re.MULTILINE)


def ffmpeg_exe() -> str:
    """Path of the wheel-shipped ffmpeg binary."""
    try:
        import imageio_ffmpeg
    except ImportError as err:  # pragma: no cover - a core dependency
        raise InstagError("imageio-ffmpeg is not installed; run `pip install imageio-ffmpeg`") from err
    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass
class VideoInfo:
    """Facts about a source video (sizes in pixels, rates in Hz, times in seconds)."""

    path: str
    width: int
    height: int
    fps: float  # average frame rate of the stream
    num_frames: int  # coded frames in the stream
    duration: float
    variable_fps: bool
    has_audio: bool
    audio_rate: int
    audio_channels: int
    codec: str
    rotation: int = 0  # display rotation in degrees (phones film portrait as rotated landscape); width/height are after it
    stream: str = "0:v:0"  # ffmpeg's -map of the picture (not a cover image of an audio file)
    sar: str = "1:1"  # the stored pixels' aspect ratio (anamorphic video); width/height are the shape a player shows
    audio_stream: str = "0:a:0"  # ffmpeg's -map of the sound a player plays (the default track)

    @property
    def num_frames_25(self) -> int:
        """Frames the 25-FPS decode yields (ffmpeg's fps filter rounds the duration)."""
        return max(1, int(round(self.frame_span * TARGET_FPS)))

    @property
    def frame_span(self) -> float:
        """Time covered by the video frames, from the first frame's start to the last one's end."""
        return self.num_frames / self.fps if self.fps > 0 else self.duration

    def as_dict(self) -> dict:
        """The facts, without those at their defaults that older records lack (they would read as another video)."""
        facts = asdict(self)
        for key, default in (("rotation", 0), ("stream", "0:v:0"), ("sar", "1:1"), ("audio_stream", "0:a:0")):
            if facts[key] == default:
                del facts[key]
        return facts

    def describe_rate(self) -> str | None:
        """A sentence saying how the frame rate is converted, or None when it is already 25 FPS."""
        if self.variable_fps:
            return f"{self.path}: variable frame rate (average {self.fps:.2f} FPS); resampling to {TARGET_FPS} FPS"
        if abs(self.fps - TARGET_FPS) > 0.01:
            return f"{self.path}: {self.fps:.2f} FPS; resampling to {TARGET_FPS} FPS"
        return None


def _run(args: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", *args], input=stdin, capture_output=True, check=False)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InstagError(f"{path}: no such file; give the path of a video (e.g. data/<ID>/<ID>.mp4)")
    if path.is_dir():
        raise InstagError(f"{path}: is a folder; give the path of a video file (e.g. data/<ID>/<ID>.mp4)")
    if path.stat().st_size == 0:
        raise InstagError(f"{path}: the file is empty; copy the video again")


def _first_error_line(stderr: str, path: Path) -> str:
    text = stderr.replace(str(path), "<file>")
    for line in text.splitlines():
        low = line.lower()
        if "error" in low or "invalid" in low or "not found" in low or "moov" in low:
            return line.strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "ffmpeg could not read it"


def _packet_times(path: Path, stream: str) -> np.ndarray:
    """Presentation times (seconds, sorted) of the packets of ``stream`` (no decoding)."""
    proc = _run(["-i", str(path), "-map", stream, "-c", "copy", "-f", "framemd5", "-"])
    out = proc.stdout.decode("utf-8", "replace")
    tb = 1.0
    pts = []
    for line in out.splitlines():
        if line.startswith("#tb"):
            num, den = line.split(":")[1].strip().split("/")
            tb = float(num) / float(den)
        elif line and not line.startswith("#"):
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 4 and parts[2].lstrip("-").isdigit():
                pts.append(int(parts[2]))
    return np.sort(np.asarray(pts, dtype=np.float64)) * tb


def _stream_end(path: Path, stream: str) -> float:
    """Time (seconds) at which the packets of ``stream`` end: the last one's start plus the typical step."""
    times = _packet_times(path, stream)
    if times.size == 0:
        return 0.0
    step = float(np.median(np.diff(times))) if times.size > 1 else 0.0
    return float(times[-1]) + step


def probe(path: str | Path, require_audio: bool = True, min_side: int = 0) -> VideoInfo:
    """Read the facts of a video; raise :class:`InstagError` for anything unusable (with ``min_side``, a picture too
    small to find a face in: preprocessing passes :data:`MIN_SIDE`; a rendered video may be any size)."""
    path = Path(path)
    _check_file(path)
    proc = _run(["-i", str(path)])
    err = proc.stderr.decode("utf-8", "replace")
    lines = list(_STREAM_LINE.finditer(err))
    videos = [m for m in lines if m.group(3) == "Video"]
    video = _player_choice([m for m in videos if "(attached pic)" not in m.group(4)])
    if video is None:
        if "Invalid data found" in err or "moov atom not found" in err or "Input #" not in err:
            raise InstagError(f"{path}: not a readable video ({_first_error_line(err, path)}); "
                              "the file is corrupt, truncated or not a video")
        cover = " (only a cover picture: it is an audio file)" if videos else ""
        raise InstagError(f"{path}: has no video stream{cover}; give a video of the talking person")
    stream = "0:v:0" if video is videos[0] else f"{video.group(1)}:{video.group(2)}"
    codec = video.group(4).split()[0].rstrip(",")
    size = re.search(r", (\d+)x(\d+)", video.group(4))
    if size is None or codec == "none":
        raise InstagError(f"{path}: ffmpeg cannot decode its video stream ({codec}, no picture size); re-encode it "
                          "(ffmpeg -i <video> -c:v libx264 -c:a aac out.mp4)")
    width, height = int(size.group(1)), int(size.group(2))
    block = err[video.end():].split("Stream #", 1)[0]  # the stream's metadata and side data
    turn = re.search(r"display ?matrix: rotation of (-?[\d.]+) degrees", block, re.IGNORECASE)
    rotation = int(round(float(turn.group(1)))) % 360 if turn else 0
    aspect = re.search(r"\[SAR (\d+):(\d+) DAR", video.group(4))
    num, den = (int(aspect.group(1)), int(aspect.group(2))) if aspect else (1, 1)
    sar = "1:1" if num == den or num == 0 or den == 0 else f"{num}:{den}"
    num, den = (num, den) if sar != "1:1" else (1, 1)
    if rotation % 180 == 90:  # ffmpeg turns the picture upright when it decodes: frames are height x width
        width, height, num, den = height, width, den, num
    width = max(1, int(round(width * num / den)))  # a player stretches anamorphic pixels to their shape
    if min(width, height) < min_side:
        raise InstagError(f"{path}: the picture is {width}x{height} pixels, too small to find a face in (at least "
                          f"{min_side} px a side); give the video at a larger size")
    vline = video.group(0)
    fps_m = re.search(r"([\d.]+) fps", vline)
    tbr_m = re.search(r"([\d.]+)k? tbr", vline)
    dur_m = re.search(r"Duration: (\d+):(\d+):([\d.]+)", err)
    duration = 0.0
    if dur_m:
        duration = int(dur_m.group(1)) * 3600 + int(dur_m.group(2)) * 60 + float(dur_m.group(3))
    sounds = [m for m in lines if m.group(3) == "Audio"]
    audio = _player_choice(sounds)
    has_audio = audio is not None
    audio_stream = "0:a:0" if audio is None or audio is sounds[0] else f"{audio.group(1)}:{audio.group(2)}"
    sound = re.search(r", (\d+) Hz, ([^,]+)", audio.group(4)) if audio else None
    audio_rate = int(sound.group(1)) if sound else 0
    layout = sound.group(2).strip() if sound else ""
    channels = {"mono": 1, "stereo": 2}.get(layout, int(re.match(r"(\d+)", layout).group(1)) if re.match(r"\d+", layout) else 2)
    if not has_audio:
        channels = 0

    times = _packet_times(path, stream)
    if times.size == 0:
        raise InstagError(f"{path}: the video stream has no frames; the file is truncated or corrupt")
    steps = np.diff(times)
    if steps.size:
        fps = 1.0 / float(np.median(steps)) if np.median(steps) > 0 else 0.0
        avg = (times.size - 1) / float(times[-1] - times[0]) if times[-1] > times[0] else fps
        variable = bool(np.std(steps) > 0.1 * np.mean(steps)) and abs(avg - fps) > 0.05 * fps
        fps = avg if variable else fps
    else:
        fps = float(fps_m.group(1)) if fps_m else (float(tbr_m.group(1)) if tbr_m else TARGET_FPS)
        variable = False
    if fps_m and not variable and abs(float(fps_m.group(1)) - fps) < 0.05 * fps:
        fps = float(fps_m.group(1))  # the container's exact rational (e.g. 29.97)
    info = VideoInfo(
        path=str(path),
        width=width,
        height=height,
        fps=float(fps),
        num_frames=int(times.size),
        duration=duration or float(times.size / max(fps, 1e-6)),
        variable_fps=variable,
        has_audio=has_audio,
        audio_rate=audio_rate,
        audio_channels=channels,
        codec=codec,
        rotation=rotation,
        stream=stream,
        sar=sar,
        audio_stream=audio_stream,
    )
    # the header's duration is the longest stream's: a picture that stops early is truncation only when the
    # sound stops early too (a sound track longer than the picture is handled by the audio step)
    tolerance = max(0.5, 0.05 * duration)
    if duration and info.frame_span < duration - tolerance and (not has_audio or _stream_end(path, audio_stream) < duration - tolerance):
        raise InstagError(f"{path}: the header says {duration:.2f} s but the video frames stop at "
                          f"{info.frame_span:.2f} s; the file is truncated or corrupt; copy or re-encode it and run again")
    if require_audio and not has_audio:
        raise InstagError(f"{path}: has no audio track; the speech drives training, so give a video with its sound "
                          "(mux one in with: ffmpeg -i video.mp4 -i speech.wav -c:v copy -shortest out.mp4)")
    return info


def _player_choice(streams: list[re.Match]) -> re.Match | None:
    """The stream a player picks among ``streams`` (lines of ffmpeg's listing): the first marked default, else the
    first."""
    return next((m for m in streams if m.group(4).rstrip().endswith("(default)")), streams[0] if streams else None)


def _filters(crop: tuple[int, int, int, int] | None, size: tuple[int, int] | None, fps: float | None,
             shape: tuple[int, int] | None = None) -> str:
    """ffmpeg's filter chain: ``shape`` (W, H) first (the picture as a player shows it: anamorphic pixels made
    square), then the frame rate, the crop (in that shape's pixels) and the output size."""
    parts = [f"scale={shape[0]}:{shape[1]},setsar=1"] if shape is not None else []
    if fps is not None:
        parts.append(f"fps={fps:g}")
    if crop is not None:
        x, y, w, h = crop
        parts.append(f"crop={w}:{h}:{x}:{y}")
    if size is not None:
        parts.append(f"scale={size[0]}:{size[1]}:flags=area")
    return ",".join(parts) or "null"


def _pipe_frames(path: Path, vf: str, width: int, height: int, stream: str = "0:v:0") -> Iterator[np.ndarray]:
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path), "-map", stream,
           "-vf", vf, "-f", "rawvideo", "-pix_fmt", "bgr24", "-"]
    frame_bytes = width * height * 3
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=frame_bytes * 2)
    try:
        while True:
            buf = proc.stdout.read(frame_bytes)
            if len(buf) < frame_bytes:
                break
            yield np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3)
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()
        proc.stderr.close()


def iter_frames(info: VideoInfo, crop: tuple[int, int, int, int] | None = None,
                size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """Decode every frame once at 25 FPS as BGR ``uint8 [H,W,3]``.

    ``crop`` = (x, y, w, h) in source pixels, applied before resizing to ``size`` = (W, H).
    """
    out_w, out_h = size if size is not None else ((crop[2], crop[3]) if crop is not None else (info.width, info.height))
    yield from _pipe_frames(Path(info.path), _filters(crop, size, TARGET_FPS, _shape(info)), out_w, out_h, info.stream)


def sample_frames(info: VideoInfo, per_second: float = 2.0, max_side: int = 1280) -> list[np.ndarray]:
    """A few frames per second at no more than ``max_side`` pixels, for locating the face."""
    scale = min(1.0, max_side / max(info.width, info.height))
    w = max(2, int(round(info.width * scale / 2)) * 2)
    h = max(2, int(round(info.height * scale / 2)) * 2)
    size = (w, h) if (w, h) != (info.width, info.height) else None
    return list(_pipe_frames(Path(info.path), _filters(None, size, per_second, _shape(info)), w, h, info.stream))


def _shape(info: VideoInfo) -> tuple[int, int] | None:
    """The picture's shape (W, H) to scale to when its pixels are not square (see :func:`_filters`)."""
    return None if info.sar == "1:1" else (info.width, info.height)


def read_audio(path: str | Path, sample_rate: int = AUDIO_RATE, stream: str = "0:a:0") -> np.ndarray:
    """The audio track ``stream`` (:attr:`VideoInfo.audio_stream`: the one a player plays) as mono float32 samples
    in [-1, 1] at ``sample_rate``."""
    path = Path(path)
    _check_file(path)
    proc = _run(["-loglevel", "error", "-i", str(path), "-map", stream, "-vn", "-ac", "1", "-ar", str(sample_rate),
                 "-f", "f32le", "-acodec", "pcm_f32le", "-"])
    if proc.returncode != 0 and not proc.stdout:
        msg = proc.stderr.decode("utf-8", "replace")
        if "matches no streams" in msg:
            raise InstagError(f"{path}: has no audio track; give a video with its sound")
        raise InstagError(f"{path}: cannot decode the audio ({_first_error_line(msg, path)}); the file may be corrupt")
    samples = np.frombuffer(proc.stdout, dtype=np.float32).copy()
    if samples.size == 0:
        raise InstagError(f"{path}: the audio track is empty; give a video with its sound")
    return samples
