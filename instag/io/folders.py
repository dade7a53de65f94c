"""Folders a run writes into: one run at a time, put back as they were when a run fails, and
replaced only when one of our runs made them.

- :func:`locked`: an exclusive ``flock`` on ``<folder>/.instag.lock`` for the whole run; a second
  run on the same folder stops at once with "another run is using this folder", touching nothing.
  The lock dies with its process (even on SIGKILL), so a stale lock file never blocks.
- :class:`Snapshot`: a copy of a folder made of hard links (no data copied) taken before a run
  changes it. It is a true copy because every writer in the package replaces a file by renaming
  a new one over it (:mod:`instag.io.atomic`) instead of writing into it. :meth:`Snapshot.restore`
  removes what the run created and links the old files back; a snapshot that a killed run left
  is restored by :func:`recover` when the next run takes the lock.
- :func:`check_replaceable` / :func:`replace_folder`: an output folder is replaced only when it
  is empty or carries the marker file (:data:`OUTPUT_MARK`) that :func:`replace_folder` writes.
- :func:`staging`: a hidden folder beside a run's outputs for what is not finished yet (a silent
  video before its sound is muxed, frames before the video is complete), removed however the run
  ends (an exception, Ctrl-C, SIGTERM: :mod:`instag.cli` raises SIGTERM like Ctrl-C). The run
  holds a lock in it, so the next run that stages in the same place removes one that a killed run
  left (:func:`sweep_staging`) and never one in use.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from instag.errors import InstagError
from instag.io.atomic import TEMP_MARK

LOCK_NAME = ".instag.lock"
SNAPSHOT_NAME = ".instag-snapshot"  # complete snapshot; ".instag-snapshot.<state>" while made or discarded
OUTPUT_MARK = ".instag-output"
STAGING_PREFIX = ".instag-staging-"
STALE_UNLOCKED_S = 600  # a staging folder without its lock file (killed while being made) is stale after this


def reserved(name: str) -> bool:
    """Whether ``name`` (an entry of a guarded folder) is this module's own bookkeeping."""
    return name == LOCK_NAME or name.startswith(SNAPSHOT_NAME)


# ------------------------------------------------------------------------------------------- lock
@contextlib.contextmanager
def locked(folder: str | os.PathLike) -> Iterator[None]:
    """Hold ``folder``'s lock; raises :class:`InstagError` at once when another run holds it."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError as err:
            raise InstagError(f"cannot write in {folder}: {err.strerror}; check its permissions or give another "
                              "output folder") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InstagError(f"{folder}: another run is using this folder; wait for it to finish, or give another "
                              "output folder") from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the run before us removed the file while we opened it: lock the one now there
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # still locked here, so a run that opened this file sees it is gone and retries
        os.close(fd)


# ------------------------------------------------------------------------------------------- snapshot
def _is_dir(entry: os.DirEntry | Path) -> bool:
    return entry.is_dir(follow_symlinks=False) if isinstance(entry, os.DirEntry) else entry.is_dir() and not entry.is_symlink()


def _remove(path: Path) -> None:
    if _is_dir(path):
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as err:  # a file system without hard links, or a file at its link limit
        if err.errno not in (errno.EPERM, errno.EMLINK, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        shutil.copy2(src, dst, follow_symlinks=False)


def _link_tree(live: Path, saved: Path, top: bool) -> None:
    saved.mkdir()
    with os.scandir(live) as entries:
        for entry in entries:
            if top and reserved(entry.name):
                continue
            if _is_dir(entry):
                _link_tree(Path(entry.path), saved / entry.name, False)
            else:
                _link_or_copy(Path(entry.path), saved / entry.name)


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _put_back(live: Path, saved: Path, top: bool) -> None:
    """Make ``live`` hold exactly what ``saved`` holds (idempotent, so a killed restore can be redone)."""
    with os.scandir(saved) as entries:
        kept = {entry.name: _is_dir(entry) for entry in entries}
    with os.scandir(live) as entries:
        for entry in entries:
            if top and reserved(entry.name):
                continue
            if kept.get(entry.name) != _is_dir(entry):  # created by the run, or a file turned folder
                _remove(Path(entry.path))
    for name, is_dir in kept.items():
        target, source = live / name, saved / name
        if is_dir:
            target.mkdir(exist_ok=True)
            _put_back(target, source, False)
        elif not _same_file(source, target):
            tmp = live / f".{Path(name).stem}{TEMP_MARK}{secrets.token_hex(4)}{Path(name).suffix}"
            _link_or_copy(source, tmp)
            os.replace(tmp, target)


class Snapshot:
    """``folder`` as it was when :meth:`take` ran, kept in ``<folder>/.instag-snapshot/``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / SNAPSHOT_NAME

    @classmethod
    def take(cls, folder: str | os.PathLike) -> Snapshot:
        snap = cls(Path(folder))
        partial = snap.folder / f"{SNAPSHOT_NAME}.partial"  # a run killed while linking leaves only this
        _discard(partial)
        _link_tree(snap.folder, partial, True)
        os.replace(partial, snap.path)
        return snap

    def restore(self) -> None:
        """Put the folder back as it was and drop the snapshot."""
        _put_back(self.folder, self.path, True)
        self.discard()

    def discard(self) -> None:
        _discard(self.path)


def _discard(path: Path) -> None:
    """Delete a snapshot folder, first renaming it so that a kill half-way leaves no complete-looking one."""
    if not path.exists():
        return
    doomed = path.with_name(f"{SNAPSHOT_NAME}.discarded")
    if path != doomed:
        if doomed.exists():
            shutil.rmtree(doomed)
        os.replace(path, doomed)
    shutil.rmtree(doomed)


def recover(folder: str | os.PathLike) -> bool:
    """Restore a snapshot a killed run left in ``folder`` (call it holding the lock); True if there was one."""
    folder = Path(folder)
    for leftover in (f"{SNAPSHOT_NAME}.partial", f"{SNAPSHOT_NAME}.discarded"):
        _discard(folder / leftover)
    snap = Snapshot(folder)
    if not snap.path.is_dir():
        return False
    snap.restore()
    return True


# ------------------------------------------------------------------------------------------- output folders
def check_replaceable(folder: str | os.PathLike, contents: str) -> None:
    """Refuse (before any work) to replace ``folder`` with ``contents`` (what the run writes there, e.g.
    "the frames of out.mp4 (--save_frames)") unless it is missing, empty or made by one of our runs."""
    folder = Path(folder)
    if not os.path.lexists(folder):
        return
    if not _is_dir(folder):
        raise InstagError(f"{folder} is a file, so it cannot hold {contents}; choose another --output or move that file")
    if (folder / OUTPUT_MARK).is_file() or not any(folder.iterdir()):
        return
    raise InstagError(f"{folder} already exists and was not written by instag, so it is not replaced with {contents}; "
                      "choose another --output or move that folder")


def replace_folder(staged: Path, target: Path, contents: str) -> None:
    """Move the finished folder ``staged`` (holding ``contents``) to ``target``, replacing a folder of ours
    there (see :func:`check_replaceable`); ``staged`` and ``target`` are on one file system."""
    from instag.io.atomic import write_text

    check_replaceable(target, contents)
    write_text(staged / OUTPUT_MARK, f"{contents}, written by instag; it replaces this folder when it writes it again\n")
    if os.path.lexists(target):
        old = staged.with_name(f"{staged.name}.replaced")
        os.replace(target, old)
        os.replace(staged, target)
        shutil.rmtree(old)
    else:
        os.replace(staged, target)


# ------------------------------------------------------------------------------------------- staging
@contextlib.contextmanager
def staging(parent: str | os.PathLike) -> Iterator[Path]:
    """A fresh hidden folder ``<parent>/.instag-staging-<random>/`` for unfinished outputs, removed on exit
    whatever the reason; staging folders that dead runs left in ``parent`` are removed first."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    sweep_staging(parent)
    path = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent))
    fd = None
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until the folder is gone: it marks the folder as in use
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if fd is not None:
            os.close(fd)


def sweep_staging(parent: str | os.PathLike) -> int:
    """Remove the staging folders in ``parent`` whose run is dead (nobody holds their lock); returns how many."""
    count = 0
    for path in Path(parent).glob(f"{STAGING_PREFIX}*"):
        if not _is_dir(path):
            continue
        try:
            fd = os.open(path / LOCK_NAME, os.O_RDWR)
        except FileNotFoundError:  # a run killed between making the folder and locking it, or one doing that now
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > STALE_UNLOCKED_S:
                    shutil.rmtree(path, ignore_errors=True)
                    count += 1
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live run's
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        count += 1
    return count
