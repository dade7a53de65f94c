"""Loading audio feature files and cutting the per-frame window the networks see.

Feature files keep upstream's layout (``[T, W, C]``: DeepSpeech ``[T,16,29]``, HuBERT
``[T,2,1024]``, AVE ``[T,512,1]`` ...). :func:`load_features` checks a file against its
extractor and the video length and returns the network layout ``[T, C, W]`` (upstream's
loader permute). :func:`frame_window` gives frame ``i`` the 8 items ``i-4 .. i+3``, zero
padded at the ends (METHOD §1.7): ``[8, C, W]``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from instag.audio.registry import FILE_ITEM_SHAPES, check_name, feature_definition, fit_length
from instag.errors import InstagError
from instag.io.checks import check_values

if TYPE_CHECKING:
    import torch

ATTENTION_WINDOW = 8
FEATURE_LIMIT = 1e6  # every extractor's values are within a few hundred: beyond this a file is damaged
SILENT_MISMATCH = 1  # rows: extractors round the clip length differently (AVE gives N+1, HuBERT N-1)


def max_mismatch(num_frames: int) -> int:
    """Largest length difference (rows) padded or trimmed instead of refused: 5 frames or 1 %."""
    return max(5, num_frames // 100)


def speech_beside(features: Path) -> Path | None:
    """The .wav a feature file was made from, by upstream's naming (``X.wav`` -> ``X.npy``, ``X_mel.npy``,
    ``X_hu.npy``, ...; a processed clip's ``aud_*.npy`` from its ``aud.wav``); None when none is there."""
    from instag.data.format import AUDIO_FEATURE_FILES

    stem = features.stem
    for name in AUDIO_FEATURE_FILES.values():
        tag = name.removeprefix("aud").removesuffix(".npy")
        if stem.endswith(tag):
            stem = stem.removesuffix(tag)
            break
    for candidate in (f"{stem}.wav", f"{features.stem}.wav"):
        if (features.parent / candidate).is_file():
            return features.parent / candidate
    return None


def _regenerate_hint(path: Path, extractor: str) -> str:
    """A command that makes ``extractor``'s features from the speech beside ``path``; what to give instead without it."""
    from instag.data.format import AUDIO_FEATURE_FILES

    wav = speech_beside(path)
    if wav is None:
        return (f"no .wav beside it to make {extractor} features from; give the speech's .wav instead (synthesis "
                f"extracts the features itself), or make them with instag features --extractor {extractor}")
    made = wav.with_name(wav.stem + AUDIO_FEATURE_FILES[extractor].removeprefix("aud"))
    return f"make them from {wav} with: instag features --wav {wav} --extractor {extractor} (writes {made})"


def definition_path(path: str | Path) -> Path:
    """The companion that records which feature definition made a feature file: ``X.npy`` -> ``X.json``."""
    return Path(path).with_suffix(".json")


def save_features(path: str | Path, features: np.ndarray, extractor: str) -> Path:
    """Write a feature file (upstream layout ``[T, W, C]``) and, for extractors with a definition id, its companion
    (written last: a file whose companion is missing or stale is refused, never used)."""
    import json

    from instag.io.atomic import save_npy, write_json

    path = Path(path)
    definition = feature_definition(extractor)
    companion = definition_path(path)
    if definition is not None and companion.exists():
        try:
            ours = "definition" in json.loads(companion.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            ours = False
        if not ours:
            raise InstagError(f"{companion}: not a feature record of instag, and {path}'s record would replace it; "
                              "move it away or write the features elsewhere (--out)")
    save_npy(path, features)
    if definition is not None:
        write_json(definition_path(path), {"extractor": extractor, "definition": definition,
                                           "shape": list(np.shape(features))})
    return path


def check_definition(path: Path, extractor: str) -> None:
    """Refuse a feature file whose recorded definition is not the one ``extractor`` computes now."""
    import json

    wanted = feature_definition(extractor)
    if wanted is None:
        return
    companion = definition_path(path)
    got = None
    if companion.is_file():
        try:
            got = json.loads(companion.read_text(encoding="utf-8")).get("definition")
        except (OSError, ValueError, AttributeError):
            got = None
    if got != wanted:
        made = f"definition {got}" if got else "an older definition (no record beside it)"
        raise InstagError(f"audio features {path} were made by {made}, not {wanted}; {_regenerate_hint(path, extractor)}")


def resolve_feature_path(path: str | Path, extractor: str) -> Path:
    """``path``, or for DeepSpeech the upstream adaptation name ``aud.npy`` beside it when
    ``aud_ds.npy`` is absent (upstream's pre-training and adaptation loaders disagree)."""
    path = Path(path)
    if not path.exists() and extractor == "deepspeech":
        alt = path.with_name("aud.npy")
        if alt.exists():
            return alt
    return path


def load_features(path: str | Path, extractor_name: str, num_frames: int | None) -> np.ndarray:
    """Load a feature file in upstream layout -> float32 ``[T, C, W]`` (network layout).

    With ``num_frames`` (the video's frame count) the rows are made to match it: a
    difference of one row is fixed silently, up to :func:`max_mismatch` rows with a
    warning (repeat the last row or trim), larger differences are refused.
    """
    extractor = check_name(extractor_name)
    path = resolve_feature_path(path, extractor)
    if not path.is_file():
        raise InstagError(f"audio features {path} not found; {_regenerate_hint(path, extractor)}")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InstagError(f"cannot read audio features {path} ({err}); {_regenerate_hint(path, extractor)}") from err
    expected = FILE_ITEM_SHAPES[extractor]
    if arr.ndim != 3 or tuple(arr.shape[1:]) != expected:
        raise InstagError(
            f"audio features {path} have shape {tuple(arr.shape)} but {extractor} files are [T, {expected[0]}, "
            f"{expected[1]}]; was it made by another extractor? {_regenerate_hint(path, extractor)}"
        )
    check_definition(path, extractor)
    if not np.issubdtype(arr.dtype, np.number):
        raise InstagError(
            f"audio features {path} hold {arr.dtype} values, not numbers; {_regenerate_hint(path, extractor)}"
        )
    check_values(path, arr, "audio features: a value", _regenerate_hint(path, extractor), limit=FEATURE_LIMIT,
                 where=lambda i: f"of row {i[0]}")
    arr = arr.astype(np.float32, copy=False)
    if arr.shape[0] == 0:
        raise InstagError(f"audio features {path} are empty (0 rows); {_regenerate_hint(path, extractor)}")
    if num_frames is not None:
        diff = arr.shape[0] - int(num_frames)
        if abs(diff) > max_mismatch(int(num_frames)):
            which = "shorter" if diff < 0 else "longer"
            raise InstagError(
                f"audio features {path} have {arr.shape[0]} rows but the video has {num_frames} frames "
                f"({abs(diff)} {which}); they do not belong to this clip, {_regenerate_hint(path, extractor)}"
            )
        if abs(diff) > SILENT_MISMATCH:
            action = "repeating the last row" if diff < 0 else "trimming the extra rows"
            warnings.warn(
                f"audio features {path} have {arr.shape[0]} rows for {num_frames} video frames; {action}",
                stacklevel=2,
            )
        arr = fit_length(arr, int(num_frames))
    return np.ascontiguousarray(arr.transpose(0, 2, 1))


def frame_window(features: np.ndarray | torch.Tensor, i: int, size: int = ATTENTION_WINDOW):
    """Items ``i - size//2 .. i + size//2 - 1`` of ``features`` [T, C, W], zero padded: [size, C, W]."""
    import torch

    if isinstance(features, torch.Tensor):
        return frame_windows(features, torch.tensor([i], device=features.device), size)[0]
    return frame_windows(torch.from_numpy(np.asarray(features)), torch.tensor([i]), size)[0].numpy()


def frame_windows(features: torch.Tensor, indices: torch.Tensor, size: int = ATTENTION_WINDOW) -> torch.Tensor:
    """Batched :func:`frame_window`: features [T, C, W], indices [B] (long) -> [B, size, C, W]."""
    import torch

    offsets = torch.arange(size, device=features.device) - size // 2
    idx = indices.to(features.device).long()[:, None] + offsets[None, :]  # [B, size]
    valid = (idx >= 0) & (idx < features.shape[0])
    out = features[idx.clamp(0, max(features.shape[0] - 1, 0))]
    return out * valid[:, :, None, None].to(out.dtype)
