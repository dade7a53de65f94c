"""The bad-input corpus of the robustness tests, generated at test time (never committed media).

Every video is cut from a real clip of ``../shared/data`` with the wheel's ffmpeg binary
(``imageio_ffmpeg``) and OpenCV, kept short (about a second) and small so the whole corpus
builds in seconds. :func:`corpus` returns one :class:`Corpus` per test session: each item is
built on first use and cached.

Helpers for asserting the CLI's behaviour are here too: :func:`run_cli` runs ``python -m
instag ...`` (or an upstream wrapper) in a subprocess, optionally with writes failing like on a
full disk (:data:`FAILING_REPLACE`), and :func:`one_line_error` checks the one-line message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CLIP = DATA / "video" / "r3dp_may_5s.mp4"  # frontal, static, 25 FPS, AAC 48 kHz
SECOND_FACE = DATA / "video" / "mimictalk_german_20s.mp4"  # another frontal speaker, for two faces side by side

needs_data = pytest.mark.skipif(
    not (CLIP.exists() and SECOND_FACE.exists()),
    reason=f"test clips not found in {DATA} (../shared/data beside the repository)",
)


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg(*args: str, stdin: bytes | None = None) -> None:
    quiet = ("-nostdin",) if stdin is None else ()
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", *quiet, "-y", *args], check=True, input=stdin)


X264 = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")


def cut(out: Path, seconds: float = 1.2, side: int = 256, src: Path = CLIP, start: float = 0.0,
        audio: tuple[str, ...] = ("-c:a", "aac"), extra: tuple[str, ...] = ()) -> Path:
    """``seconds`` of ``src`` from ``start``, scaled to ``side``² (0 = native), H.264 + ``audio`` args."""
    out.parent.mkdir(parents=True, exist_ok=True)
    vf = ("-vf", f"scale={side}:{side}") if side else ()
    ffmpeg("-ss", f"{start}", "-i", str(src), "-t", f"{seconds}", *vf, *X264, *audio, *extra, str(out))
    return out


def read_frames(path: Path) -> np.ndarray:
    """Every frame of ``path`` as BGR uint8 ``[N,H,W,3]`` (OpenCV)."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return np.stack(frames)


def encode_frames(out: Path, frames: np.ndarray, audio_from: Path | None, fps: float = 25.0) -> Path:
    """Encode BGR ``frames`` [N,H,W,3] at ``fps``, with the audio track of ``audio_from``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    audio = ("-i", str(audio_from), "-map", "0:v", "-map", "1:a", "-c:a", "aac", "-shortest") if audio_from else ()
    ffmpeg("-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}", "-r", f"{fps}", "-i", "-", *audio, *X264, str(out),
           stdin=np.ascontiguousarray(frames).tobytes())
    return out


class Corpus:
    """Bad (and good) inputs, each built on first use under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[str, Path] = {}

    def _get(self, name: str, build) -> Path:
        if name not in self._cache:
            self._cache[name] = build(self.root / name)
        return self._cache[name]

    # ------------------------------------------------------------------ videos
    def good(self) -> Path:
        """1.2 s at 256², 25 FPS, AAC: the clean reference every bad video is cut like."""
        return self._get("good", lambda d: cut(d / "good.mp4"))

    def fps30(self) -> Path:
        return self._get("fps30", lambda d: cut(d / "fps30.mp4", extra=("-r", "30")))

    def variable_fps(self) -> Path:
        """25 FPS for the first 0.6 s, then 12.5 FPS (every other frame dropped, timestamps kept)."""

        def build(d: Path) -> Path:
            out = d / "vfr.mp4"
            out.parent.mkdir(parents=True, exist_ok=True)
            ffmpeg("-i", str(CLIP), "-t", "1.6", "-vf", "scale=256:256,select='lt(n\\,15)+not(mod(n\\,2))'",
                   "-fps_mode", "vfr", *X264, "-c:a", "aac", str(out))
            return out

        return self._get("vfr", build)

    def no_audio(self) -> Path:
        return self._get("no_audio", lambda d: cut(d / "no_audio.mp4", seconds=1.0, audio=("-an",)))

    def silent_audio(self) -> Path:
        def build(d: Path) -> Path:
            out = d / "silent.mp4"
            out.parent.mkdir(parents=True, exist_ok=True)
            ffmpeg("-i", str(CLIP), "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "1", "-map", "0:v", "-map", "1:a",
                   "-vf", "scale=256:256", *X264, "-c:a", "aac", str(out))
            return out

        return self._get("silent", build)

    def stereo(self, rate: int) -> Path:
        return self._get(f"stereo{rate}", lambda d: cut(d / f"stereo_{rate}.mp4", audio=("-c:a", "aac", "-ac", "2", "-ar", str(rate))))

    def truncated(self) -> Path:
        """The first 40 % of a 2-s mp4 whose index (moov) is at the front: frames stop early."""

        def build(d: Path) -> Path:
            full = cut(d / "src" / "full.mp4", seconds=2.0, extra=("-movflags", "+faststart"))
            out = d / "truncated.mp4"
            out.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.4)])
            return out

        return self._get("truncated", build)

    def truncated_no_index(self) -> Path:
        """The first half of an mp4 whose index (moov) is at the end: nothing can be decoded."""

        def build(d: Path) -> Path:
            full = cut(d / "src" / "full.mp4", seconds=2.0)
            out = d / "no_index.mp4"
            out.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
            return out

        return self._get("no_index", build)

    def not_a_video(self) -> Path:
        def build(d: Path) -> Path:
            d.mkdir(parents=True, exist_ok=True)
            out = d / "notes.mp4"
            out.write_text("These are meeting notes, not a video.\n" * 200)
            return out

        return self._get("not_video", build)

    def face_gap(self, first: int, count: int, seconds: float = 1.6) -> Path:
        """A real clip with frames ``first .. first+count-1`` blanked (no face there)."""

        def build(d: Path) -> Path:
            src = self.good() if seconds == 1.2 else cut(d / "src" / "src.mp4", seconds=seconds)
            frames = read_frames(src)
            frames[first : first + count] = 0
            return encode_frames(d / "gap.mp4", frames, src)

        return self._get(f"gap_{first}_{count}_{seconds}", build)

    def two_faces(self) -> Path:
        """Two real speakers side by side (512x256), the sound of the left one."""

        def build(d: Path) -> Path:
            out = d / "two_faces.mp4"
            out.parent.mkdir(parents=True, exist_ok=True)
            ffmpeg("-i", str(CLIP), "-i", str(SECOND_FACE), "-t", "1.2", "-filter_complex",
                   "[0:v]scale=256:256[a];[1:v]scale=256:256[b];[a][b]hstack=inputs=2[v]", "-map", "[v]", "-map", "0:a",
                   *X264, "-c:a", "aac", str(out))
            return out

        return self._get("two_faces", build)

    def tiny(self) -> Path:
        return self._get("tiny", lambda d: cut(d / "tiny.mp4", side=64))

    def huge(self) -> Path:
        """3840x2160 (4K): the 512² clip upscaled to 2160² and padded; 0.6 s to stay fast."""

        def build(d: Path) -> Path:
            out = d / "huge.mp4"
            out.parent.mkdir(parents=True, exist_ok=True)
            ffmpeg("-i", str(CLIP), "-t", "0.6", "-vf", "scale=2160:2160,pad=3840:2160:840:0", *X264, "-c:a", "aac", str(out))
            return out

        return self._get("huge", build)

    def odd_path(self) -> Path:
        """The good clip under a folder and file name with spaces, an apostrophe and non-ASCII letters."""

        def build(d: Path) -> Path:
            out = d / "my clips ü" / "Zoë's clip 日本.mp4"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(self.good().read_bytes())
            return out

        return self._get("odd_path", build)

    # ------------------------------------------------------------------ audio
    def wav(self, name: str, seconds: float = 1.0, rate: int = 16000, channels: int = 1, silent: bool = False) -> Path:
        """A speech-like WAV: a 150 Hz buzz gated at 4 Hz (or digital silence)."""

        def build(d: Path) -> Path:
            from instag.io.wav import write_wav

            t = np.arange(int(seconds * rate)) / rate
            sig = 0.3 * (np.sin(2 * np.pi * 4 * t) > 0) * np.sign(np.sin(2 * np.pi * 150 * t))
            sig = np.zeros_like(t) if silent else sig
            samples = np.repeat(sig[:, None], channels, 1) if channels > 1 else sig
            d.mkdir(parents=True, exist_ok=True)
            out = d / f"{name}.wav"
            write_wav(out, samples.astype(np.float32), rate)
            return out

        return self._get(f"wav_{name}", build)


_CORPUS: Corpus | None = None


def corpus(tmp_path_factory) -> Corpus:
    """The session's corpus (one per pytest session)."""
    global _CORPUS
    if _CORPUS is None:
        _CORPUS = Corpus(tmp_path_factory.mktemp("badinputs"))
    return _CORPUS


# ---------------------------------------------------------------------- datasets and checkpoints
# adaptation flags of the training-side cases: the tiny preset, a few iterations, CPU, no evaluation
QUICK_ADAPT = ("--preset", "tiny", "--iterations", "12", "--mouth_iterations", "4", "--fuse_iterations", "2", "--device",
               "cpu", "--quiet", "--workers", "0", "--evaluate", "false")


def synthetic_dataset(root: Path, size: int = 32, n_train: int = 10, n_val: int = 4, seed: int = 0):
    """A generated processed clip (``tests/synthetic_clip.py``) for training-side cases."""
    from synthetic_clip import make_clip

    return make_clip(root, size=size, n_train=n_train, n_val=n_val, seed=seed)


def pretrained(folder: Path, extractor: str = "mel") -> Path:
    """An (untrained) pre-training folder: the universal face and mouth fields for ``extractor``."""
    from instag.audio.registry import get_extractor
    from instag.model.motion import UniversalFaceField, UniversalMouthField
    from instag.train.checkpoint import save_universal

    shape = tuple(get_extractor(extractor).item_shape)
    torch_seed(0)
    save_universal(folder, "face", UniversalFaceField(shape).state_dict(), {"audio_extractor": extractor, "iteration": 1})
    save_universal(folder, "mouth", UniversalMouthField(shape).state_dict(), {"audio_extractor": extractor, "iteration": 1})
    return folder


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def fused_model(folder: Path, extractor: str = "mel") -> Path:
    """An untrained fused checkpoint (what synthesis loads) in ``folder``."""
    import torch

    from instag.audio.registry import get_extractor
    from instag.model.talking_head import TalkingHead

    head = TalkingHead.create(extractor, tuple(get_extractor(extractor).item_shape), face_init=200, mouth_init=80,
                              generator=torch.Generator().manual_seed(0))
    head.save(folder)
    return folder


def corrupt(path: Path, keep: float = 0.5) -> Path:
    """Cut ``path`` to ``keep`` of its bytes and scribble over its first bytes (a damaged download)."""
    data = bytearray(path.read_bytes()[: max(16, int(path.stat().st_size * keep))])
    data[8:16] = b"\xffGARBAGE"
    path.write_bytes(bytes(data))
    return path


# ---------------------------------------------------------------------- running the CLI
# Code run before the CLI in the subprocess so that writes fail as on a full disk: every rename of
# a finished temporary file onto its final name (what atomic writes end with) raises ENOSPC after
# INSTAG_FAIL_AFTER successful ones, and so do the plain ``open(..., "w")`` calls after that.
FAILING_REPLACE = """
import builtins, errno, os
_left = [int(os.environ.get("INSTAG_FAIL_AFTER", "0"))]
_replace, _open = os.replace, builtins.open
def _full(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")
def replace(src, dst, *a, **k):
    if _left[0] <= 0:
        _full()
    _left[0] -= 1
    return _replace(src, dst, *a, **k)
def opener(file, mode="r", *a, **k):
    if _left[0] <= 0 and any(c in mode for c in "wax+") and not str(file).startswith("/dev/"):
        _full()
    return _open(file, mode, *a, **k)
os.replace = replace
builtins.open = opener
if os.environ.get("INSTAG_FAIL_IMWRITE"):  # OpenCV reports a failed write by returning False, leaving a stub file
    import cv2
    _imwrite = cv2.imwrite
    _images = [int(os.environ["INSTAG_FAIL_IMWRITE"])]
    def imwrite(path, img, *a, **k):
        if _images[0] <= 0:
            _open(path, "wb").close()
            return False
        _images[0] -= 1
        return _imwrite(path, img, *a, **k)
    cv2.imwrite = imwrite
"""


# Code run before the CLI so that the loss becomes NaN from the INSTAG_NAN_FROM-th photometric loss on.
KILL_AFTER_RENAME = """
import json, os, signal
_replace_for_kill = os.replace
_kill_name, _kill_iteration = os.environ["INSTAG_KILL_AFTER"].split("@")
def replace(src, dst, *a, **k):
    out = _replace_for_kill(src, dst, *a, **k)
    if os.path.basename(str(dst)) == _kill_name:
        try:
            reached = str(json.loads(open(dst, encoding="utf-8").read()).get("iteration"))
        except ValueError:
            reached = None
        if reached == _kill_iteration:
            os.kill(os.getpid(), signal.SIGKILL)
    return out
os.replace = replace
"""


NAN_LOSS = """
import os
import instag.train.losses as _losses
_photometric, _calls = _losses.photometric, [0]
def photometric(*a, **k):
    _calls[0] += 1
    loss = _photometric(*a, **k)
    return loss * float("nan") if _calls[0] >= int(os.environ["INSTAG_NAN_FROM"]) else loss
_losses.photometric = photometric
"""


def cli_env() -> dict[str, str]:
    """Environment of the CLI runs: quiet MediaPipe/TFLite logs, UTF-8 output, and one OpenMP thread
    (the cases are tiny; several torch processes spinning on 2 shared cores slow each other down 10x)."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_cli(*args: str, fail_writes_after: int | None = None, fail_images_after: int | None = None,
            nan_from: int | None = None, kill_after: str | None = None, wrapper: str | None = None,
            timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m instag <args>`` (or ``python <wrapper> <args>``) and capture its output.

    ``fail_writes_after``: renames and opens for writing fail with ENOSPC after that many renames;
    ``fail_images_after``: ``cv2.imwrite`` fails (returns False) after that many images;
    ``nan_from``: the training loss is NaN from that call of the photometric loss on;
    ``kill_after``: ``"NAME@ITERATION"``: the run SIGKILLs itself right after it renames a JSON file
    called NAME into place whose ``iteration`` is ITERATION (a kill at an exact checkpoint boundary).
    """
    env = cli_env()
    prelude = ""
    if fail_images_after is not None:
        env["INSTAG_FAIL_IMWRITE"] = str(fail_images_after)
        fail_writes_after = 1 << 30 if fail_writes_after is None else fail_writes_after
    if fail_writes_after is not None:
        env["INSTAG_FAIL_AFTER"] = str(fail_writes_after)
        prelude += FAILING_REPLACE
    if nan_from is not None:
        env["INSTAG_NAN_FROM"] = str(nan_from)
        prelude += NAN_LOSS
    if kill_after is not None:
        env["INSTAG_KILL_AFTER"] = kill_after
        prelude += KILL_AFTER_RENAME
    if prelude:
        target = f"import runpy, sys; sys.argv = {[wrapper or 'instag', *args]!r}; " + (
            f"runpy.run_path({str(REPO / wrapper)!r}, run_name='__main__')" if wrapper else "runpy.run_module('instag', run_name='__main__')"
        )
        cmd = [sys.executable, "-c", prelude + "\n" + target]
    elif wrapper:
        cmd = [sys.executable, str(REPO / wrapper), *args]
    else:
        cmd = [sys.executable, "-m", "instag", *args]
    return subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", env=env, timeout=timeout,
                          cwd=str(cwd or REPO))


# Lines third-party libraries print on stderr by themselves (MediaPipe/TFLite/absl start-up, tqdm bars);
# they are not our messages and carry no traceback.
_NOISE = ("W0000", "I0000", "E0000", "INFO:", "WARNING: All log messages", "Feedback manager", "\r")


def message_lines(stderr: str) -> list[str]:
    lines = []
    for line in stderr.replace("\r", "\n").splitlines():
        line = line.strip()
        if not line or any(line.startswith(n) or n in line for n in _NOISE):
            continue
        if "%|" in line:  # a progress bar
            continue
        lines.append(line)
    return lines


def one_line_error(proc: subprocess.CompletedProcess, *words: str, code: int = 2) -> str:
    """Assert the run failed with ``code`` and exactly one error line naming ``words``; return it."""
    err = proc.stderr
    assert "Traceback" not in err, err
    lines = message_lines(err)
    assert proc.returncode == code, f"exit {proc.returncode}, stderr:\n{err}\nstdout:\n{proc.stdout[-2000:]}"
    assert len(lines) == 1 and ": error:" in lines[0], err
    line = lines[0]
    assert "internal error" not in line, line
    for word in words:
        assert str(word) in line, f"{word!r} not in {line!r}"
    return line


def tree(folder: Path) -> dict[str, str]:
    """Relative path -> content hash of every file under ``folder``."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def stray_temporaries(folder: Path) -> list[str]:
    """Hidden temporary files an interrupted atomic write leaves (``.<stem>.<random><ext>``)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if p.is_file())


def meta_without_timings(path: Path) -> dict:
    """``meta.json`` minus what legitimately differs between runs (step timings, notes)."""
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta.pop("notes", None)
    for record in meta.get("steps", {}).values():
        record.pop("seconds", None)
    return meta
