"""Reading arrays and tensors without executing code from the file.

``.npy`` files are read with ``allow_pickle=False`` and ``.pt`` files with
``torch.load(weights_only=True)``: a file holding pickled objects (which could run code when
unpickled) is refused. Every failure is an :class:`InstagError` naming the file and ``hint``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from instag.errors import InstagError


def load_npy(path: str | os.PathLike, hint: str = "re-run the step that wrote it", mmap_mode: str | None = None,
             shape: tuple[int | None, ...] | None = None):
    """A plain numeric array from ``path``; InstagError if missing, corrupt, pickled, or (with ``shape``, None
    meaning any size) of another shape."""
    import numpy as np

    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode=mmap_mode)
    except FileNotFoundError as err:
        raise InstagError(f"{path}: missing; {hint}") from err
    except (OSError, ValueError, EOFError) as err:
        detail = " ".join(str(err).split())[:200]
        raise InstagError(f"cannot read {path} ({detail}); it is corrupt or holds objects instead of numbers; {hint}") from err
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
        raise InstagError(f"{path} holds {arr.dtype} values, not numbers; {hint}")
    if shape is not None and (arr.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, arr.shape))):
        expected = "[" + ",".join("N" if s is None else str(s) for s in shape) + "]"
        raise InstagError(f"{path} holds an array of shape {list(arr.shape)}, expected {expected}; {hint}")
    return arr


def load_torch(path: str | os.PathLike, hint: str = "re-run the step that wrote it") -> Any:
    """Tensors, numbers, strings and containers of them from a ``torch.save`` file; never code."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise InstagError(f"{path}: missing; {hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise InstagError(f"{path} holds objects beyond tensors and numbers; it is not loaded because unpickling them "
                          f"could run code; {hint}") from err
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        detail = " ".join(str(err).split())[:200]
        raise InstagError(f"cannot read {path} ({detail}); it is corrupt or truncated; {hint}") from err
