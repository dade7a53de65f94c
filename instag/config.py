"""Typed stage configs and the CLI generated from them.

Every stage (process, pretrain, adapt, synthesize, ...) declares its settings as one
dataclass with defaults. :func:`parse` builds an ``argparse`` parser from the dataclass
fields, so each flag exists in exactly one place. A field's help text comes from
``field(metadata={"help": ...})``; extra spellings (``-S`` for ``--source_path``) from
``metadata={"flags": ("-S", "-s")}``. ``--help`` shows each field's default; every boolean field
is the same kind of flag whatever its default: ``--dilate`` alone means true, ``--dilate false``
turns it off.

Numbers are checked once parsed, here and not in each command: every float must be finite (NaN and
infinities are never a setting), and a field may bound its values with ``metadata={"min": 0}``,
``"max"`` (both inclusive), ``"above"`` and ``"below"`` (exclusive) and ``"special": (-1,)`` (values outside the bounds
that the help gives a meaning, such as -1 for "the preset's"). A value out of bounds stops the command
with one line naming the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _str2bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def _with_default(text: str, default: Any) -> str:
    """``text`` with the field's default appended, unless it has none or ``text`` already explains it."""
    if default is dataclasses.MISSING:
        return f"{text} (required)".strip()
    if default is None or default == "" or re.search(r"\(default|^default:|default: ", text):
        return text
    if isinstance(default, (list, tuple)):
        shown = " ".join(map(str, default))
    else:
        shown = str(default).lower() if isinstance(default, bool) else str(default)
    return f"{text} (default: {shown.replace('%', '%%')})".strip()


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per field of the dataclass ``cls`` to ``parser``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("cli") is False:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        flags = [f"--{f.name}", *f.metadata.get("flags", ())]
        default = _field_default(f)
        kwargs: dict[str, Any] = {"help": _with_default(f.metadata.get("help", ""), default), "dest": f.name}
        if default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        choices = f.metadata.get("choices")
        if choices:
            kwargs["choices"] = choices
        if tp is bool:
            kwargs.update(type=_str2bool, nargs="?", const=True, metavar="BOOL")
        elif typing.get_origin(tp) in (list, tuple):
            (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
            kwargs["type"] = item
            kwargs["nargs"] = "+" if not optional else "*"
        elif tp in (int, float, str):
            kwargs["type"] = tp
        else:
            kwargs["type"] = str
        parser.add_argument(*flags, **kwargs)


def _bounds(meta) -> str:
    """The allowed values of a field's ``min``/``max``/``above``/``special`` metadata, in words."""
    parts = []
    if "above" in meta:
        parts.append(f"above {meta['above']}")
    if "below" in meta:
        parts.append(f"below {meta['below']}")
    if "min" in meta and "max" in meta:
        parts.append(f"from {meta['min']} to {meta['max']}")
    elif "min" in meta:
        parts.append(f"at least {meta['min']}")
    elif "max" in meta:
        parts.append(f"at most {meta['max']}")
    special = " or ".join(map(str, meta.get("special", ())))
    return (f"{special}, or a value " if special else "a value ") + " and ".join(parts)


def check_value(f: dataclasses.Field, value: Any) -> None:
    """Refuse a parsed value of field ``f`` that no run can use: a float that is not finite, or one outside the
    field's bounds (see the module docstring); raises :class:`InstagError` naming the flag."""
    import math

    from instag.errors import InstagError

    meta = f.metadata
    for item in value if isinstance(value, (list, tuple)) else (value,):
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        what = f"{meta.get('help', '')}".split(" (")[0]
        if isinstance(item, float) and not math.isfinite(item) and meta.get("finite", True):
            raise InstagError(f"--{f.name} {item}: not a number of any use here; give a finite value ({what})")
        if item in meta.get("special", ()):
            continue
        low, high, above, below = meta.get("min"), meta.get("max"), meta.get("above"), meta.get("below")
        if ((low is not None and item < low) or (high is not None and item > high)
                or (above is not None and item <= above) or (below is not None and item >= below)):
            raise InstagError(f"--{f.name} {item}: out of range; give {_bounds(meta)} ({what})")


def parse(cls: type[T], argv: list[str] | None, prog: str | None = None, description: str | None = None) -> T:
    """Parse ``argv`` into an instance of the dataclass ``cls``."""
    parser = argparse.ArgumentParser(prog=prog, description=description or (cls.__doc__ or "").strip())
    add_dataclass_arguments(parser, cls)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    ns = parser.parse_args(argv)
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(ns, f.name)}
    for f in dataclasses.fields(cls):
        if typing.get_origin(typing.get_type_hints(cls)[f.name]) is tuple and f.name in values:
            values[f.name] = tuple(values[f.name])
        if f.name in values and values[f.name] is not None:
            check_value(f, values[f.name])
    return cls(**values)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def command_line(prog: str, cfg: Any, **changes: Any) -> str:
    """The shell command ``prog`` (e.g. "instag adapt") with the flags that :func:`parse` turns into ``cfg``
    with ``changes`` applied (e.g. ``resume=True``): every field that differs from its default."""
    args: list[str] = []
    for f in dataclasses.fields(cfg):
        if not f.init or f.metadata.get("cli") is False:
            continue
        value = changes.get(f.name, getattr(cfg, f.name))
        if value is None or value == _field_default(f):
            continue
        if isinstance(value, bool):
            args += [f"--{f.name}"] if value else [f"--{f.name}", "false"]
        elif isinstance(value, (list, tuple)):
            args += [f"--{f.name}", *map(str, value)]
        else:
            args += [f"--{f.name}", str(value)]
    return shlex.join([*prog.split(), *args])
