"""Atomic writes: write to a temporary sibling, then rename over the target.

A killed process or a failing disk never leaves a half-written file under the final name.
Temporaries are named ``.<stem>.tmp-<random><ext>``; a process killed mid-write (SIGKILL runs
no cleanup) leaves one behind, and :func:`remove_stale_temporaries` sweeps them when the
folder is written again.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from instag.errors import InstagError

TEMP_MARK = ".tmp-"
_TEMP_NAME = re.compile(r"^\..*" + re.escape(TEMP_MARK) + r"[a-z0-9_]{8}(\.[^.]*)?$")


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete temporaries that killed writers left under ``folder`` (recursively); returns how many.

    Call it only where no other process is writing the same folder (a stage starting on its own outputs).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    count = 0
    for path in folder.rglob(f".*{TEMP_MARK}*"):
        if _TEMP_NAME.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            count += 1
    return count


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``.

    The temporary name keeps the target's extension (or ``suffix``) so that writers which
    choose a format from the extension (OpenCV, numpy) behave as for the final name.
    """
    target = Path(path)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}{TEMP_MARK}", suffix=suffix or target.suffix or ".tmp", dir=parent)
        os.close(fd)
    except OSError as err:
        raise InstagError(f"cannot write {target}: {err.strerror or err}; check the folder exists and is writable") from err
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes 0600 files, and writers that recreate the file (safetensors) keep 0600: outputs follow the
        # umask like any other file, whoever wrote the temporary
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise InstagError(f"cannot write {target}: {err.strerror or err}; check free disk space and permissions") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:  # one of them does not exist (yet)
        return a.resolve() == b.resolve()


def check_output(path: str | os.PathLike, flag: str, suffixes: tuple[str, ...], inputs: dict[str, Any] | None = None) -> Path:
    """Refuse, before any work, an output file a command must not write: a folder, one of the command's own
    ``inputs`` (``{"--wav": path, ...}``; None values are skipped), or a name whose extension is not one of
    ``suffixes`` (what the command writes: it would replace, or pose as, a file of another kind). Returns the path."""
    target = Path(path)
    kinds = ", ".join(suffixes)
    if target.is_dir():
        raise InstagError(f"{flag} {target} is a folder; give a file name ending in {kinds}, e.g. "
                          f"{target / ('out' + suffixes[0])}")
    for name, source in (inputs or {}).items():
        if source is not None and _same_path(target, Path(source)):
            raise InstagError(f"{flag} {target} is also the input {name}; writing there would replace it: give "
                              f"another file name, e.g. {target.with_name(target.stem + '_out' + suffixes[0])}")
    if target.suffix.lower() not in suffixes:
        what = f"ends in {target.suffix!r}" if target.suffix else "has no extension"
        also = ", a file of another kind that it would replace" if target.exists() else ""
        raise InstagError(f"{flag} {target} {what}{also}; this command writes {kinds} files: give a name ending in "
                          f"{kinds} (e.g. {target.with_suffix(suffixes[0]).name})")
    return target


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def save_npy(path: str | os.PathLike, array: Any) -> None:
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(array), allow_pickle=False)


def write_image(path: str | os.PathLike, image: Any, params: tuple[int, ...] | list[int] = ()) -> None:
    """``cv2.imwrite`` atomically, the format chosen by the extension; a failed encode or write
    (OpenCV only returns False, e.g. on a full disk) raises instead of leaving a truncated image."""
    import cv2

    target = Path(path)
    with atomic_path(target) as tmp:
        if not cv2.imwrite(str(tmp), image, list(params)):
            raise InstagError(f"cannot write {target}: the image could not be encoded or saved; check free disk space "
                              "and permissions")


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` atomically, with the same bytes for the same content: written through a
    buffer, so the archive's inner folder name does not depend on the temporary file name."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())
