"""Bad input to preprocessing (DESIGN §5): one-line errors naming the file and the problem,
no partial outputs; or correct handling (frame-rate conversion, unusual paths).

Test videos are cut from ``../shared/data/video/r3dp_may_5s.mp4`` into a temporary folder with
the wheel's ffmpeg binary.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from instag.cli import run_command
from instag.errors import InstagError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLIP = DATA / "video" / "r3dp_may_5s.mp4"

pytestmark = pytest.mark.skipif(not CLIP.exists(), reason=f"test clip {CLIP} not found (../shared/data beside the repository)")


def ffmpeg(*args: str, stdin: bytes | None = None) -> None:
    from instag.io.video import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True, input=stdin)


def cut(out: Path, seconds: float = 2.0, extra: tuple[str, ...] = ()) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg("-i", str(CLIP), "-t", str(seconds), *extra, "-c:v", "libx264", "-preset", "ultrafast", str(out))
    return out


def process_cli(capsys, *argv: str) -> tuple[int, str]:
    code = run_command("process", list(argv))
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.startswith("instag process:")]
    assert code == 2, err
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]


def test_not_a_video(tmp_path, capsys):
    bad = tmp_path / "clip" / "clip.mp4"
    bad.parent.mkdir()
    bad.write_text("this is not a video\n" * 100)
    code, err = process_cli(capsys, str(bad), "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, str(bad), "not a readable video")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in bad.parent.iterdir()) == ["clip.mp4"]


def test_missing_file(tmp_path, capsys):
    code, err = process_cli(capsys, str(tmp_path / "nope.mp4"))
    assert_one_line_error(code, err, "no such file")


def test_truncated_video(tmp_path, capsys):
    full = cut(tmp_path / "src" / "full.mp4", 2.0, ("-c:a", "aac", "-movflags", "+faststart"))
    data = full.read_bytes()
    trunc = tmp_path / "t" / "t.mp4"
    trunc.parent.mkdir()
    trunc.write_bytes(data[: len(data) // 3])
    code, err = process_cli(capsys, str(trunc))
    assert_one_line_error(code, err, str(trunc))
    assert "truncated" in err or "corrupt" in err
    assert sorted(p.name for p in trunc.parent.iterdir()) == ["t.mp4"]  # no partial dataset beside it


def test_truncated_moov_at_end(tmp_path, capsys):
    full = cut(tmp_path / "src" / "full.mp4", 2.0, ("-c:a", "aac"))
    trunc = tmp_path / "t2.mp4"
    trunc.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    code, err = process_cli(capsys, str(trunc), "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, "not a readable video")
    assert not (tmp_path / "out").exists()


def test_no_audio_track(tmp_path, capsys):
    silent = cut(tmp_path / "na" / "na.mp4", 1.0, ("-an",))
    code, err = process_cli(capsys, str(silent))
    assert_one_line_error(code, err, str(silent), "no audio track")
    assert sorted(p.name for p in silent.parent.iterdir()) == ["na.mp4"]


def test_silent_audio(tmp_path, capsys):
    out = tmp_path / "quiet" / "quiet.mp4"
    out.parent.mkdir()
    ffmpeg("-i", str(CLIP), "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "1", "-map", "0:v", "-map", "1:a",
           "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(out))
    code, err = process_cli(capsys, str(out))
    assert_one_line_error(code, err, "silent")
    assert sorted(p.name for p in out.parent.iterdir()) == ["quiet.mp4"]


def test_non_25_fps_is_resampled(tmp_path, capsys):
    from instag.io.video import probe
    from instag.preprocess.pipeline import ProcessConfig, run

    clip = cut(tmp_path / "fps30" / "fps30.mp4", 2.0, ("-r", "30", "-c:a", "aac"))
    info = probe(clip)
    assert info.fps == pytest.approx(30, abs=0.01) and info.num_frames == 60
    meta = run(ProcessConfig(path=str(clip), task="frames"))
    assert "resampling to 25 FPS" in capsys.readouterr().out
    assert meta["num_frames"] == 50


def test_path_with_spaces_and_non_ascii(tmp_path):
    from instag.io.video import probe, read_audio
    from instag.preprocess.pipeline import ProcessConfig, run

    clip = cut(tmp_path / "my clips" / "Zoë's clip ü 日本.mp4", 1.0, ("-c:a", "aac"))
    assert probe(clip).has_audio
    assert read_audio(clip).size > 15000
    out = tmp_path / "out dir é"
    run(ProcessConfig(path=str(clip), out=str(out), task="audio"))
    meta = run(ProcessConfig(path=str(clip), out=str(out), task="frames"))
    assert meta["num_frames"] == 25 and (out / "ori_imgs" / "24.jpg").exists() and (out / "aud.wav").exists()


def test_long_face_gap_refused_without_partial_output(tmp_path, capsys):
    from instag.io.video import iter_frames, probe

    src = cut(tmp_path / "src" / "src.mp4", 2.0, ("-c:a", "aac"))
    frames = np.stack(list(iter_frames(probe(src))))
    frames[20:32] = 0  # 12 frames without a face
    gap = tmp_path / "gap" / "gap.mp4"
    gap.parent.mkdir()
    h, w = frames.shape[1:3]
    ffmpeg("-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}", "-r", "25", "-i", "-", "-i", str(src),
           "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
           "-shortest", str(gap), stdin=frames.tobytes())
    code, err = process_cli(capsys, str(gap))
    assert_one_line_error(code, err, "no face in frames 20-31", "cut those parts out")
    assert sorted(p.name for p in gap.parent.iterdir()) == ["gap.mp4"]


def test_split_too_short_is_clear(tmp_path):
    from instag.preprocess.split import split

    with pytest.raises(InstagError, match="track_params.pt: missing"):
        split(tmp_path)
