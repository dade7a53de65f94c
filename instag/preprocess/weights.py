"""Registry of the optional upstream weights: where each file goes, what uses it, how to get it.

Nothing here is needed for the default path (MediaPipe, mel features, the mesh priors). Each
optional tool looks its file up with :func:`resolve` and, when it is missing, raises an
:class:`~instag.errors.InstagError` whose text comes from :func:`where`, so every message says
the same thing about the same file. ``bash scripts/prepare.sh`` prints :func:`report` and, with
``--fetch``, downloads the entries that have a public URL (see :func:`fetch`).

Default paths are relative to the directory the command runs in (upstream's habit: commands run
from the repository root); a relative path is also looked up under the repository root, so a
tool started from elsewhere still finds ``data_utils/...``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from instag.config import parse
from instag.errors import InstagError

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class OptionalWeight:
    """One optional weight file (or model directory) of an upstream tool."""

    name: str  # registry key, e.g. "easyportrait"
    path: str  # default location (relative paths: cwd first, then the repository root)
    used_by: str  # what needs it, in words
    how_to_get: str  # one sentence a user can follow
    urls: tuple[str, ...] = ()  # public direct downloads (mirrors), tried in order by fetch()
    hf_repo: str | None = None  # Hugging Face model id, also accepted from the HF cache
    unzip: bool = False  # the URL serves a .zip holding the file
    alternatives: tuple[str, ...] = ()  # other places upstream versions put the same file


_AD_NERF_3DMM = "https://github.com/YudongGuo/AD-NeRF/blob/master/data_util/face_tracking/3DMM/{}?raw=true"
_SAPIENS_HF = "https://huggingface.co/facebook/{repo}/resolve/main/{file}"

SAPIENS_DEPTH_FILE = "sapiens_0.3b_render_people_epoch_100_torchscript.pt2"
SAPIENS_NORMAL_FILE = "sapiens_0.3b_normal_render_people_epoch_66_torchscript.pt2"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def torch_hub_checkpoints() -> str:
    """torch.hub's checkpoint folder (``torch.hub.get_dir()/checkpoints``), found as torch finds it but without importing it."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "torch")
    return os.path.join(home, "hub", "checkpoints")


def _lpips_package_weights() -> tuple[str, ...]:
    """The ``alex.pth`` shipped in the pip ``lpips`` package, when it is installed (found without importing it)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return ()
    return (os.path.join(next(iter(spec.submodule_search_locations)), "weights", "v0.1", "alex.pth"),)


REGISTRY: dict[str, OptionalWeight] = {
    w.name: w
    for w in (
        OptionalWeight(
            "deepspeech",
            "~/.tensorflow/models/deepspeech-0_1_0-b90017e8.pb",
            "audio extractor 'deepspeech' (aud_ds.npy; needs the tensorflow extra)",
            "download the DeepSpeech 0.1.0 frozen graph zip and unzip it to this path",
            urls=(
                "https://github.com/osmr/deepspeech_features/releases/download/v0.0.1/deepspeech-0_1_0-b90017e8.pb.zip",
            ),
            unzip=True,
        ),
        OptionalWeight(
            "esperanto",
            "data_utils/wav2vec2-large-xlsr-53-esperanto",
            "audio extractor 'esperanto' (aud_eo.npy; needs transformers)",
            "a local copy of the Hugging Face model cpierse/wav2vec2-large-xlsr-53-esperanto, or that model in the HF cache",
            hf_repo="cpierse/wav2vec2-large-xlsr-53-esperanto",
        ),
        OptionalWeight(
            "hubert",
            "data_utils/hubert-large-ls960-ft",
            "audio extractor 'hubert' (aud_hu.npy; needs transformers)",
            "a local copy of the Hugging Face model facebook/hubert-large-ls960-ft, or that model in the HF cache",
            hf_repo="facebook/hubert-large-ls960-ft",
        ),
        OptionalWeight(
            "ave",
            "data_utils/audio_visual_encoder.pth",
            "audio extractor 'ave' (aud_ave.npy)",
            "copy SyncTalk's audio_visual_encoder.pth (SyncTalk repository, nerf_triplane/checkpoints/) to this path",
            alternatives=("data/audio_visual_encoder.pth",),
        ),
        OptionalWeight(
            "easyportrait",
            "data_utils/easyportrait/fpn-fp-512.pth",
            "EasyPortrait teeth masks (data_utils/easyportrait/create_teeth_mask.py)",
            "download EasyPortrait's 'FPN + ResNet50, 512' face-parsing checkpoint fpn-fp-512.pth to this path",
            urls=(
                "https://rndml-team-cv.obs.ru-moscow-1.hc.sbercloud.ru/datasets/easyportrait/experiments/models/fpn-fp-512.pth",
                "https://n-ws-620xz-pd11.s3pd11.sbercloud.ru/b-ws-620xz-pd11-jux/easyportrait/experiments/models/fpn-fp-512.pth",
            ),
        ),
        OptionalWeight(
            "sapiens_depth",
            f"data_utils/sapiens/checkpoints/{SAPIENS_DEPTH_FILE}",
            "Sapiens depth priors (data_utils/sapiens/run.sh)",
            "download the Sapiens-lite 0.3b depth TorchScript model (Hugging Face facebook/sapiens-depth-0.3b-torchscript) to this path",
            urls=(_SAPIENS_HF.format(repo="sapiens-depth-0.3b-torchscript", file=SAPIENS_DEPTH_FILE),),
        ),
        OptionalWeight(
            "sapiens_normal",
            f"data_utils/sapiens/checkpoints/{SAPIENS_NORMAL_FILE}",
            "Sapiens normal priors (data_utils/sapiens/run.sh)",
            "download the Sapiens-lite 0.3b normal TorchScript model (Hugging Face facebook/sapiens-normal-0.3b-torchscript) to this path",
            urls=(_SAPIENS_HF.format(repo="sapiens-normal-0.3b-torchscript", file=SAPIENS_NORMAL_FILE),),
        ),
        OptionalWeight(
            "lpips_alex",
            "data_utils/lpips/alex.pth",
            "LPIPS metric and training term, with alexnet; INSTAG_LPIPS_LIN overrides this path",
            "pip install lpips (its lpips/weights/v0.1/alex.pth is found there) or copy that file to this path",
            urls=("https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth",),
            alternatives=_lpips_package_weights(),
        ),
        OptionalWeight(
            "alexnet",
            os.path.join(torch_hub_checkpoints(), ALEXNET_FILE),
            "LPIPS metric and training term, with lpips_alex; INSTAG_ALEXNET overrides this path",
            "torchvision's ImageNet AlexNet, which alexnet(weights='IMAGENET1K_V1') downloads to this path",
            urls=(f"https://download.pytorch.org/models/{ALEXNET_FILE}",),
        ),
        OptionalWeight(
            "bfm",
            "data_utils/face_tracking/3DMM/01_MorphableModel.mat",
            "BFM tracker (convert_BFM.py, then --tracker bfm)",
            "register for the Basel Face Model 2009 at faces.dmi.unibas.ch/bfm (licence-gated, not fetched) and copy 01_MorphableModel.mat to this path",
        ),
        OptionalWeight(
            "bfm_exp_info",
            "data_utils/face_tracking/3DMM/exp_info.npy",
            "convert_BFM.py (AD-NeRF's expression basis)",
            "AD-NeRF's data_util/face_tracking/3DMM/exp_info.npy",
            urls=(_AD_NERF_3DMM.format("exp_info.npy"),),
        ),
        OptionalWeight(
            "bfm_keys_info",
            "data_utils/face_tracking/3DMM/keys_info.npy",
            "convert_BFM.py (AD-NeRF's 68 keypoint vertices and jaw contours)",
            "AD-NeRF's data_util/face_tracking/3DMM/keys_info.npy",
            urls=(_AD_NERF_3DMM.format("keys_info.npy"),),
        ),
        OptionalWeight(
            "bfm_topology_info",
            "data_utils/face_tracking/3DMM/topology_info.npy",
            "convert_BFM.py (AD-NeRF's 34650-vertex sub-mesh selection)",
            "AD-NeRF's data_util/face_tracking/3DMM/topology_info.npy",
            urls=(_AD_NERF_3DMM.format("topology_info.npy"),),
        ),
        OptionalWeight(
            "bfm_sub_mesh",
            "data_utils/face_tracking/3DMM/sub_mesh.obj",
            "convert_BFM.py (AD-NeRF's sub-mesh triangles, for mesh overlays and priors)",
            "AD-NeRF's data_util/face_tracking/3DMM/sub_mesh.obj",
            urls=(_AD_NERF_3DMM.format("sub_mesh.obj"),),
        ),
        OptionalWeight(
            "bfm_info",
            "data_utils/face_tracking/3DMM/3DMM_info.npz",
            "BFM tracker (the converted face model)",
            "run (cd data_utils/face_tracking && python convert_BFM.py) once the BFM .mat and AD-NeRF helper files are in 3DMM/",
            alternatives=("data_utils/face_tracking/3DMM/3DMM_info.npy",),
        ),
    )
}


def positional_as_flag(argv: list[str] | None, flag: str) -> list[str]:
    """Upstream's tools take the dataset path positionally (``create_teeth_mask.py data/<ID>``);
    :func:`instag.config.parse` knows only flags, so a leading bare argument becomes ``--flag``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):
        return [f"--{flag}", *args]
    return args


def _get(name: str) -> OptionalWeight:
    try:
        return REGISTRY[name]
    except KeyError:
        raise InstagError(f"unknown optional weight {name!r}; known: {', '.join(REGISTRY)}") from None


def _candidates(path: str) -> list[Path]:
    p = Path(os.path.expanduser(path))
    if p.is_absolute():
        return [p]
    return [Path.cwd() / p, REPO_ROOT / p]


def hf_cache_dir(repo_id: str) -> Path | None:
    """The newest snapshot of ``repo_id`` in the Hugging Face hub cache, if one is there."""
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if not hub:
        hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
        hub = os.path.join(hf_home, "hub")
    snapshots = Path(hub) / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    found = [s for s in snapshots.glob("*") if (s / "config.json").is_file()] if snapshots.is_dir() else []
    return max(found, key=lambda s: s.stat().st_mtime) if found else None


def resolve(name: str, override: str | os.PathLike | None = None) -> Path | None:
    """The existing location of optional weight ``name`` (``override`` first), or None."""
    w = _get(name)
    if override:
        p = Path(os.path.expanduser(str(override)))
        return p if p.exists() else None
    for path in (w.path, *w.alternatives):
        for p in _candidates(path):
            if p.exists():
                return p
    if w.hf_repo:
        return hf_cache_dir(w.hf_repo)
    return None


def where(name: str) -> str:
    """One sentence: where to put weight ``name``, what it is for and how to get it."""
    w = _get(name)
    fetch = "; or run `bash scripts/prepare.sh --fetch " + name + "`" if (w.urls or w.hf_repo) else ""
    return f"put it at {w.path} ({w.used_by}): {w.how_to_get}{fetch}"


def require(name: str, override: str | os.PathLike | None = None) -> Path:
    """Like :func:`resolve` but a missing file is a one-line :class:`InstagError`."""
    found = resolve(name, override)
    if found is None:
        missing = override if override else _get(name).path
        raise InstagError(f"missing optional weight {missing}: {where(name)}")
    return found


def report() -> list[tuple[str, bool, str]]:
    """(name, present, location or where-to-put-it) for every registered weight."""
    rows = []
    for name in REGISTRY:
        found = resolve(name)
        rows.append((name, found is not None, str(found) if found else where(name)))
    return rows


def _default_target(path: str) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else REPO_ROOT / p


def _download(url: str, target: Path, unzip: bool) -> None:
    import urllib.request

    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        part = Path(tmp) / "download"
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as fh:  # noqa: S310 (fixed public URLs)
            shutil.copyfileobj(response, fh, length=1 << 20)
        if unzip:  # (not is_zipfile: torch .pth files are zip archives too)
            with zipfile.ZipFile(part) as zf:
                members = [m for m in zf.namelist() if m.endswith(target.suffix) and not m.endswith("/")]
                if len(members) != 1:
                    raise InstagError(
                        f"{url} did not hold exactly one {target.suffix} file; put {target.name} at {target} by hand"
                    )
                extracted = Path(tmp) / "extracted"
                with zf.open(members[0]) as src, open(extracted, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 20)
                part = extracted
        os.replace(part, target)


def fetch(name: str) -> Path:
    """Download weight ``name`` to its default path (network needed); returns the path.

    Files are written under a temporary name and renamed, so an interrupted download leaves
    nothing behind. Licence-gated files (the BFM) are never fetched.
    """
    w = _get(name)
    present = resolve(name)
    if present is not None:
        return present
    target = _default_target(w.path)
    if w.hf_repo:
        try:
            from huggingface_hub import snapshot_download
        except ImportError as err:
            raise InstagError(
                f"fetching {name} needs huggingface_hub (pip install transformers); or {where(name)}"
            ) from err
        snapshot_download(repo_id=w.hf_repo, local_dir=str(target))
        return target
    if not w.urls:
        raise InstagError(f"{name} cannot be fetched automatically: {where(name)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in w.urls:
        try:
            _download(url, target, w.unzip)
            return target
        except InstagError:
            raise
        except Exception as err:  # network failures: try the next mirror, report all
            errors.append(f"{url}: {err}")
    raise InstagError(f"could not download {name} ({'; '.join(errors)}); {where(name)}")


@dataclass
class WeightsConfig:
    """Report which optional upstream weights are present; with --fetch, download public ones."""

    fetch: list[str] | None = field(
        default=None,
        metadata={
            "help": "download these weights (names from the report, or 'all' for every public one); needs network"
        },
    )
    only: list[str] | None = field(default=None, metadata={"help": "report only these names"})


def main(argv: list[str] | None = None) -> int:
    cfg = parse(WeightsConfig, argv, prog="instag weights")
    if cfg.fetch is not None:
        names = list(cfg.fetch) or ["all"]
        if "all" in names:
            names = [n for n, w in REGISTRY.items() if w.urls or w.hf_repo]
        for name in names:
            print(f"fetching {name} ...", flush=True)
            print(f"  {name}: {fetch(name)}")
    rows = [r for r in report() if not cfg.only or r[0] in cfg.only]
    width = max(len(r[0]) for r in rows) if rows else 0
    print("optional upstream weights (none is needed for the default path):")
    for name, present, text in rows:
        print(f"  {name:<{width}}  {'present' if present else 'missing'}  {text}")
    sys.stdout.flush()
    return 0
