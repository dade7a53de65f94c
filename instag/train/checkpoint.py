"""Checkpoints: safetensors + a JSON of the config and audio extractor, written atomically.

A checkpoint named ``<stem>`` in a folder is ``<stem>.safetensors`` (all tensors; the safetensors
header also records the iteration), ``<stem>.json`` (written last: format, stage, iteration, audio
extractor, item shape, config) and, for resumable training state, ``<stem>.optim.pt`` (optimizer
states: tensors, numbers and lists only, loaded with ``torch.load(weights_only=True)``).

Files per run:

- adaptation ``output/<ID>/``: ``chkpnt_{face,mouth,fuse}_latest`` (:class:`TalkingHead` layout)
  and ``train_{face,mouth,fuse}`` (resumable state);
- pre-training ``output/<proj>/``: ``chkpnt_ema_{face,mouth}_latest`` (the EMA universal field,
  what adaptation starts from) and ``train_pretrain_{face,mouth}`` (resumable state of all identities).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from instag.errors import InstagError
from instag.io.atomic import atomic_path

UNIVERSAL_FORMAT = "instag-universal-field"
STATE_FORMAT = "instag-train-state"


def stem_paths(folder: Path, stem: str) -> tuple[Path, Path, Path]:
    return folder / f"{stem}.safetensors", folder / f"{stem}.json", folder / f"{stem}.optim.pt"


def write_checkpoint(folder: str | Path, stem: str, tensors: dict[str, Tensor], meta: dict, optim: dict | None = None) -> Path:
    """Write ``<stem>.safetensors`` (+ ``.optim.pt``) and ``<stem>.json``; returns the tensor file.

    All files are written to temporaries first and renamed together at the end, ``.json`` last, so
    a kill can only fall between renames (microseconds), not between a file and a long write.
    """
    import contextlib
    import io

    from safetensors.torch import save_file

    folder = Path(folder)
    t_path, j_path, o_path = stem_paths(folder, stem)
    iteration = str(meta.get("iteration", ""))
    with contextlib.ExitStack() as stack:  # exits in reverse: .optim.pt, .safetensors, then .json are renamed
        j_tmp = stack.enter_context(atomic_path(j_path))
        t_tmp = stack.enter_context(atomic_path(t_path))
        if optim is not None:
            buf = io.BytesIO()  # through a buffer: the same bytes for the same state (see io.atomic.save_torch)
            torch.save({"iteration": iteration, "state": optim}, buf)
            stack.enter_context(atomic_path(o_path)).write_bytes(buf.getvalue())
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(t_tmp), metadata={"iteration": iteration})
        j_tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return t_path


def read_checkpoint(folder: str | Path, stem: str, with_optim: bool = False) -> tuple[dict[str, Tensor], dict, dict | None]:
    """Tensors, meta and (optionally) optimizer states of ``<stem>``; InstagError if missing or inconsistent."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    folder = Path(folder)
    t_path, j_path, o_path = stem_paths(folder, stem)
    if not j_path.exists() or not t_path.exists():
        raise InstagError(f"checkpoint {t_path} (with {j_path.name}) not found")
    try:
        meta = json.loads(j_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InstagError(f"cannot read {j_path} ({err}); it is corrupt, delete it and {t_path.name} and re-run the stage") from err
    if not isinstance(meta, dict):
        raise InstagError(f"{j_path} does not hold a checkpoint description; delete it and {t_path.name} and re-run the stage")
    try:
        tensors = load_file(str(t_path))
        with safe_open(str(t_path), "pt") as fh:
            t_iter = (fh.metadata() or {}).get("iteration", "")
    except (OSError, ValueError, SafetensorError) as err:
        raise InstagError(f"cannot read checkpoint {t_path} ({err}); it is corrupt, delete it and re-run the stage") from err
    if t_iter != str(meta.get("iteration", "")):
        raise InstagError(f"{t_path} (iteration {t_iter}) and {j_path.name} (iteration {meta.get('iteration')}) disagree; "
                          "a write was interrupted: delete both and re-run the stage")
    optim = None
    if with_optim:
        if not o_path.exists():
            raise InstagError(f"{o_path} missing: the checkpoint cannot be resumed; delete {t_path} to start the stage afresh")
        try:
            blob = torch.load(o_path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for corrupt pickles
            raise InstagError(f"cannot read {o_path} ({err}); delete it and the stage's checkpoint, then re-run") from err
        if blob.get("iteration") != t_iter:
            raise InstagError(f"{o_path} is from another iteration than {t_path.name}; delete both and re-run the stage")
        optim = blob["state"]
    return tensors, meta, optim


@contextlib.contextmanager
def fitting(path: Path, hint: str) -> Iterator[None]:
    """Turn what loading ``path``'s tensors into a model raises when they have other shapes or names (a damaged or
    foreign checkpoint) into one :class:`InstagError` line naming the file; ``hint`` says what to do."""
    try:
        yield
    except (RuntimeError, KeyError, ValueError, IndexError) as err:
        raise InstagError(f"{path}: its tensors do not fit this model ({' '.join(str(err).split())[:200]}); {hint}") from err


def prefixed(prefix: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in state.items()}


def unprefixed(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------- universal fields
def universal_stem(field: str) -> str:
    return f"chkpnt_ema_{field}_latest"


def save_universal(folder: Path, field: str, state: dict[str, Tensor], meta: dict) -> Path:
    """The pre-trained (EMA) universal ``field`` ("face" | "mouth") that adaptation starts from."""
    return write_checkpoint(folder, universal_stem(field), prefixed(f"{field}_field.", state), {**meta, "format": UNIVERSAL_FORMAT, "field": field})


def resolve_pretrain_dir(path: str | Path) -> Path:
    """``--pretrain_path`` may name the pre-training folder or one of its files (upstream passes the .pth)."""
    p = Path(path)
    return p if p.is_dir() or not p.suffix else p.parent


def load_universal(pretrain_path: str | Path, field: str, module: nn.Module, extractor: str | None) -> dict:
    """Load the pre-trained universal ``field`` into ``module``; refuses another audio extractor."""
    folder = resolve_pretrain_dir(pretrain_path)
    t_path = stem_paths(folder, universal_stem(field))[0]
    if not t_path.exists():
        raise InstagError(
            f"no pre-trained {field} field at {t_path}; run pre-training first "
            "(bash scripts/pretrain_con.sh data/pretrain output/pretrain_model 0) or pass --pretrain_path to its folder"
        )
    tensors, meta, _ = read_checkpoint(folder, universal_stem(field))
    if meta.get("format") != UNIVERSAL_FORMAT:
        raise InstagError(f"{t_path} is not a pre-trained universal field (format {meta.get('format')!r})")
    check_extractor(meta, extractor, t_path)
    from instag.audio.registry import check_feature_meta

    check_feature_meta(meta, t_path, "re-run pre-training with this version (bash scripts/pretrain_con.sh data/pretrain "
                                     "output/pretrain_model 0)")
    state = unprefixed(f"{field}_field.", tensors)
    try:
        if hasattr(module, "use_au_dim"):  # a face field pre-trained on the six-AU condition keeps its six
            from instag.model.motion import au_dim_of

            module.use_au_dim(au_dim_of(state))
        module.load_state_dict(state)
    except (RuntimeError, ValueError) as err:
        raise InstagError(f"{t_path} does not fit this model ({' '.join(str(err).split())[:300]}); re-run pre-training with this version") from err
    return meta


def check_extractor(meta: dict, extractor: str | None, path: Path) -> None:
    got = meta.get("audio_extractor")
    if extractor is not None and got != extractor:
        raise InstagError(
            f"{path} was pre-trained with the {got!r} audio extractor but {extractor!r} was asked for; "
            f"adapt with --audio_extractor {got}, or pre-train with --audio_extractor {extractor} "
            f"(scripts/pretrain_con{'' if extractor == 'mel' else '_' + {'ave': 'ave', 'esperanto': 'eo', 'hubert': 'hu', 'deepspeech': 'ds'}.get(extractor, extractor)}.sh)"
        )


def pretrained_extractor(pretrain_path: str | Path) -> str | None:
    """The audio extractor recorded in a pre-training folder (face field), or None if absent."""
    folder = resolve_pretrain_dir(pretrain_path)
    j_path = stem_paths(folder, universal_stem("face"))[1]
    if not j_path.exists():
        return None
    try:
        return json.loads(j_path.read_text(encoding="utf-8")).get("audio_extractor")
    except (OSError, ValueError):
        return None
