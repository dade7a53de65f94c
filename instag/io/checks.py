"""Checks of what a file holds, made where the file is read.

A value of the wrong type, NaN, infinite or far out of range fails at once with one
:class:`InstagError` line naming the file, where in it the bad value is and what to do, instead of
a crash deeper in (an ``IndexError``, "the loss became nan at step N").
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from instag.errors import InstagError


def check_values(path: str | os.PathLike, values: Any, what: str, hint: str, *, limit: float | None = None,
                 where: Callable[[tuple[int, ...]], str] | None = None) -> np.ndarray:
    """``values`` (array-like) as float64 after refusing NaN, infinities and, with ``limit``, magnitudes above it.

    ``what`` names the values in the message ("the AU intensities"); ``where`` turns the index of the first bad
    value into words ("row 12"); ``hint`` says what to do.
    """
    arr = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(arr)
    if limit is not None:
        bad |= np.abs(np.nan_to_num(arr)) > limit
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        place = where(first) if where is not None else (f"at index {list(first)}" if first else "")
        count = int(bad.sum())
        size = f"beyond ±{limit:g}" if limit is not None else "infinite"
        raise InstagError(f"{path}: {what} {place} is {float(arr[first]):.6g} ({count} value{'s' if count > 1 else ''} NaN or "
                          f"{size}); {hint}")
    return arr


def check_number(path: str | os.PathLike, value: Any, name: str, hint: str, *, low: float | None = None,
                 high: float | None = None, integer: bool = False, low_open: bool = False) -> float | int:
    """A JSON field that must be a number (an integer with ``integer``) in ``[low, high]`` (``(low, high]`` with
    ``low_open``); returns it."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (isinstance(value, float) and not math.isfinite(value)):
        raise InstagError(f"{path}: {name} is {value!r:.60}, not {kind}; {hint}")
    if low is not None and (value <= low if low_open else value < low):
        raise InstagError(f"{path}: {name} is {value!r}, it must be {'above' if low_open else 'at least'} {low:g}; {hint}")
    if high is not None and value > high:
        raise InstagError(f"{path}: {name} is {value!r}, far above any plausible value (at most {high:g}); {hint}")
    return value


_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def check_type(path: str | os.PathLike, value: Any, name: str, kind: type | tuple[type, ...], hint: str) -> Any:
    """A JSON field that must be of ``kind`` (``dict``, ``list``, ``str``, ``bool``); returns it."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)
        raise InstagError(f"{path}: {name} is {value!r:.60}, not {expected}; {hint}")
    return value
