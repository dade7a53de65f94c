"""``instag split`` / ``python data_utils/split.py data/<ID>/<ID>.mp4``: keep the last 12 s for evaluation.

Upstream's rule: the split index is N - 25*12 - 1, so ``transforms_val.json`` holds the last
301 frames (the loader drops the last one: exactly 12 s are evaluated) and training uses
the frames before them. ``--val_fraction f`` instead keeps the last fraction f of the frames
(for clips shorter than 13 s). Both files are rewritten from ``track_params.pt``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from instag.config import parse
from instag.data.format import DatasetLayout
from instag.errors import InstagError


@dataclass
class SplitConfig:
    """Rewrite transforms_train.json / transforms_val.json: the last 12 s become the validation split."""

    path: str = field(metadata={"help": "the processed video (data/<ID>/<ID>.mp4) or its folder"})
    val_fraction: float | None = field(default=None, metadata={"above": 0, "below": 1, "help": "keep this last fraction of the frames for "
                                                                       "validation instead of the last 12 s"})


def dataset_root(path: str | Path) -> Path:
    p = Path(path)
    return p if p.is_dir() else p.parent


def split(root: str | Path, val_fraction: float | None = None) -> tuple[int, int]:
    """Rewrite the split of the processed clip in ``root``; return (train frames, val frames)."""
    from instag.preprocess import tracking

    layout = DatasetLayout.of(root)
    if not layout.track_params.exists():
        raise InstagError(f"{layout.track_params}: missing; run `python data_utils/process.py` on the video first")
    rule = "fraction" if val_fraction is not None else "upstream"
    return tracking.write_transforms(layout, rule=rule, val_fraction=val_fraction or 0.0)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):
        args = ["--path", *args]
    cfg = parse(SplitConfig, args, prog="instag split")
    n_train, n_val = split(dataset_root(cfg.path), cfg.val_fraction)
    print(f"instag split: {n_train} training frames, {n_val} validation frames ({n_val / 25:.2f} s)")
    return 0
