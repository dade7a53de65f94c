"""Nothing of the user's is lost (issue 14, "Data loss"), through the real commands in a subprocess.

- ``synthesize --save_frames`` replaces the frames folder beside the video only when instag wrote
  it: not the dataset it reads (``-S data/May --output data/May.mp4``), not a user's folder;
- a ``process`` run that fails in a processed folder (a bad video, Ctrl-C, SIGKILL and a re-run)
  leaves it as it was, byte for byte;
- a video replaced under the same name is processed anew, and nothing derived from the old one
  stays (frames beyond the new count, the estimated au.csv); a user's OpenFace csv of the old video
  is neither deleted nor used;
- a second ``process`` run on a folder in use stops at once with one line, touching nothing.

The processed folder is a real 1.2-s cut (30 frames, 256²) of ``../shared/data``, processed once per
module and copied for each test.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from badinputs import (
    REPO,
    SECOND_FACE,
    cli_env,
    corpus,
    cut,
    fused_model,
    needs_data,
    one_line_error,
    run_cli,
    stray_temporaries,
    synthetic_dataset,
    tree,
)

from instag.io import folders

pytestmark = needs_data

PER_FRAME = ("ori_imgs", "parsing", "gt_imgs", "torso_imgs", "teeth_mask", "depth", "normal")


# ------------------------------------------------------------------------------------------- synthesis
@pytest.fixture(scope="module")
def head(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    clip = synthetic_dataset(root / "data" / "May", size=16, n_train=8, n_val=4)
    return {"clip": clip.root, "model": fused_model(root / "model"), "wav": corpus(tmp_path_factory).wav("speech", seconds=0.4)}


def synth(head, out: Path):
    return run_cli("synthesize", "-S", str(head["clip"]), "-M", str(head["model"]), "--audio", str(head["wav"]),
                   "--device", "cpu", "--output", str(out), "--save_frames")


def test_save_frames_replaces_only_a_folder_instag_wrote(head, tmp_path):
    dataset = head["clip"]
    before = tree(dataset)
    out = dataset.with_suffix(".mp4")  # -S data/May --output data/May.mp4: the frames folder is the dataset
    one_line_error(synth(head, out), str(dataset), "not written by instag")
    assert tree(dataset) == before and not out.exists()

    mine = tmp_path / "talk"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    one_line_error(synth(head, tmp_path / "talk.mp4"), str(mine), "not written by instag")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and not (tmp_path / "talk.mp4").exists()

    out = tmp_path / "again.mp4"
    frames = out.with_suffix("")
    for _ in range(2):  # a folder of ours is replaced by the next run
        proc = synth(head, out)
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in frames.iterdir()) == [folders.OUTPUT_MARK, *(f"{i:05d}.png" for i in range(10))]
        (frames / "99999.png").write_bytes(b"")  # a stale file: gone after the next run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "again.mp4", "talk"]


# ------------------------------------------------------------------------------------------- preprocessing
@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """``data/A/A.mp4`` processed in place."""
    video = cut(tmp_path_factory.mktemp("processed") / "data" / "A" / "A.mp4")
    proc = run_cli("process", str(video))
    assert proc.returncode == 0, proc.stderr
    return video.parent


@pytest.fixture(scope="module")
def other_person(tmp_path_factory):
    """Another speaker, 1.0 s (25 frames, fewer than the processed clip's 30)."""
    return cut(tmp_path_factory.mktemp("other") / "B.mp4", seconds=1.0, src=SECOND_FACE)


def copy_of(processed: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "data" / "A"
    shutil.copytree(processed, folder)
    return folder


def test_failed_video_leaves_the_processed_folder_as_it_was(processed, tmp_path_factory, tmp_path):
    folder = copy_of(processed, tmp_path)
    before = tree(folder)
    bad = corpus(tmp_path_factory).face_gap(10, 12)  # audio and frames are written, then landmarks refuse it
    one_line_error(run_cli("process", str(bad), "--out", str(folder), "--force"), str(bad), "no face in frames 10-21")
    assert tree(folder) == before
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in processed.iterdir())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-then-rerun"])
def test_interrupted_run_leaves_the_processed_folder_as_it_was(processed, other_person, tmp_path, sig):
    folder = copy_of(processed, tmp_path)
    before = tree(folder)
    with open(tmp_path / "stderr.txt", "w") as err:
        run = subprocess.Popen([sys.executable, "-m", "instag", "process", str(other_person), "--out", str(folder), "--force"],
                               stdout=subprocess.PIPE, stderr=err, text=True, env=cli_env(), cwd=str(REPO))
        for line in run.stdout:  # interrupt once the other video's audio and frames have replaced ours
            if "[ 3] frames" in line:
                run.send_signal(sig)
                break
        rest = run.communicate(timeout=120)[0]
    assert "[ 3] frames" in line, rest
    if sig == signal.SIGINT:  # KeyboardInterrupt: the run restores the folder itself
        assert run.returncode == 130, (tmp_path / "stderr.txt").read_text()
    else:  # nothing runs on SIGKILL: the next run finds the snapshot and restores it
        assert run.returncode == -signal.SIGKILL
        assert tree(folder) != before and (folder / folders.SNAPSHOT_NAME).is_dir()
        proc = run_cli("process", str(folder / "A.mp4"))
        assert proc.returncode == 0, proc.stderr
        assert "put back as it was before an interrupted run" in proc.stdout
        assert proc.stdout.count("done before, skipped") == 13, proc.stdout
    assert tree(folder) == before
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in processed.iterdir())


def test_another_videos_data_is_replaced_only_with_force(processed, other_person, tmp_path):
    """Processing another video into a processed folder would delete the data a model adapted on it renders with:
    refused in one line naming the folder, the old video and the model, unless --force; with --force the model is
    named in the notice."""
    folder = copy_of(processed, tmp_path)
    fingerprint = json.loads((folder / "meta.json").read_text())["source"]["fingerprint"]
    model = tmp_path / "output" / "A"  # data/A -> output/A, as the scripts lay them out
    model.mkdir(parents=True)
    (model / "chkpnt_fuse_latest.json").write_text(json.dumps({"source_clip": {"path": str(folder.resolve()),
                                                                               "fingerprint": fingerprint}}))
    before = tree(folder)
    for target in (["--out", str(folder)], []):  # B.mp4 into data/A, then A.mp4 replaced under the same name
        if not target:
            shutil.copyfile(other_person, folder / "A.mp4")
            before = tree(folder)
        video = str(other_person) if target else str(folder / "A.mp4")
        line = one_line_error(run_cli("process", video, *target), str(folder), "processed data of", str(model), "--force")
        assert tree(folder) == before
    held = int(line.split("(")[1].split()[0])

    proc = run_cli("process", str(folder / "A.mp4"), "--force")
    assert proc.returncode == 0, proc.stderr
    assert "processing it as a new video (--force)" in proc.stdout and str(model) in proc.stdout
    removed = int(proc.stdout.split("instag process: removed ")[1].split()[0])
    assert removed == held and removed > 8 * 30, proc.stdout  # the 30 old frames' per-frame files, the whole-clip files


def test_replaced_video_is_processed_anew(processed, other_person, tmp_path):
    from instag.preprocess.au import read_au_csv

    folder = copy_of(processed, tmp_path)
    shutil.copyfile(other_person, folder / "A.mp4")  # same path, another person, 25 frames instead of 30
    proc = run_cli("process", str(folder / "A.mp4"), "--force")
    assert proc.returncode == 0, proc.stderr
    assert "done before" not in proc.stdout and "processing it as a new video" in proc.stdout
    for name in PER_FRAME:
        stems = sorted(int(p.name.split(".")[0]) for p in (folder / name).iterdir())
        per_frame = 2 if name == "ori_imgs" else 1  # .jpg and .lms
        assert stems == sorted(list(range(25)) * per_frame), name
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["num_frames"] == 25 and meta["steps"]["au"]["source"] == "estimated"
    assert len(next(iter(read_au_csv(folder / "au.csv").values()))) == 25  # re-estimated, not the old 30 rows
    assert meta["source"]["bytes"] == other_person.stat().st_size
    assert not stray_temporaries(folder)

    proc = run_cli("process", str(folder / "A.mp4"))  # the same video again: every step is kept
    assert proc.returncode == 0 and proc.stdout.count("done before, skipped") == 13, proc.stdout


def test_users_au_csv_of_the_old_video_is_neither_deleted_nor_used(processed, other_person, tmp_path):
    folder = copy_of(processed, tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    meta["steps"]["au"] = {"done": True, "source": "user", "path": str(folder / "au.csv")}  # as --au_csv records it
    (folder / "meta.json").write_text(json.dumps(meta))
    shutil.copyfile(other_person, folder / "A.mp4")
    before = tree(folder)
    one_line_error(run_cli("process", str(folder / "A.mp4")), str(folder / "au.csv"), "--au_csv")
    assert tree(folder) == before


def test_second_run_on_a_folder_in_use_touches_nothing(processed, tmp_path):
    out = tmp_path / "busy"
    with open(tmp_path / "stderr.txt", "w") as err:
        first = subprocess.Popen([sys.executable, "-m", "instag", "process", str(processed / "A.mp4"), "--out", str(out)],
                                 stdout=subprocess.PIPE, stderr=err, text=True, env=cli_env(), cwd=str(REPO))
        for line in first.stdout:
            if "[ 1] audio" in line:  # running, with about ten seconds of steps ahead
                break
        second = run_cli("process", str(processed / "A.mp4"), "--out", str(out))
        rest = first.communicate(timeout=300)[0]
    assert first.returncode == 0, (tmp_path / "stderr.txt").read_text()
    one_line_error(second, str(out), "another run is using this folder")
    assert "[13] debug" in rest
    a, b = tree(processed), tree(out)
    for name in ("A.mp4", "meta.json"):
        a.pop(name, None), b.pop(name, None)
    assert a == b  # the first run's result is whole: the second deleted nothing
    with folders.locked(out):  # a lock held by another process is refused the same way, before anything is read
        one_line_error(run_cli("process", str(processed / "A.mp4"), "--out", str(out)), "another run is using")
    assert not (out / folders.LOCK_NAME).exists()


# ------------------------------------------------------------------------------------------- units
def test_snapshot_restores_files_folders_and_links(tmp_path):
    import os

    folder = tmp_path / "A"
    (folder / "ori_imgs").mkdir(parents=True)
    (folder / "aud.wav").write_text("old audio")
    (folder / "ori_imgs" / "0.jpg").write_text("frame 0")
    (folder / "empty").mkdir()
    os.symlink("aud.wav", folder / "link")
    before = tree(folder)
    with folders.locked(folder):
        snap = folders.Snapshot.take(folder)
        from instag.io.atomic import write_text

        write_text(folder / "aud.wav", "new audio")  # replaced, as every writer does
        (folder / "ori_imgs" / "0.jpg").unlink()
        (folder / "ori_imgs" / "1.jpg").write_text("new frame")
        (folder / "empty").rmdir()
        (folder / "empty").write_text("a file where a folder was")
        snap.restore()
    assert tree(folder) == before and os.readlink(folder / "link") == "aud.wav"
    assert sorted(p.name for p in folder.iterdir()) == ["aud.wav", "empty", "link", "ori_imgs"]


def test_same_video_needs_the_same_bytes():
    from instag.preprocess.pipeline import same_video

    facts = {"path": "data/A/A.mp4", "width": 512, "duration": 5.0, "bytes": 100, "fingerprint": "ab"}
    assert same_video(facts, {**facts, "path": "elsewhere/B.mp4"}, Path("elsewhere/B.mp4"))  # moved or renamed
    assert not same_video(facts, {**facts, "fingerprint": "cd"}, Path("data/A/A.mp4"))  # replaced under its name
    old = {k: v for k, v in facts.items() if k not in ("bytes", "fingerprint")}  # recorded by an older version
    assert same_video(old, facts, Path("data/A/A.mp4"))
    assert not same_video(old, {**facts, "duration": 4.0}, Path("data/A/A.mp4"))
    assert not same_video(old, {**facts, "path": "x/B.mp4"}, Path("x/B.mp4"))
