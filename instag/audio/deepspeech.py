"""DeepSpeech 0.1.0 character logits, upstream's default audio features (``aud.npy``).

The frozen TensorFlow graph (``deepspeech-0_1_0-b90017e8.pb``) is the user's local copy;
TensorFlow is the ``deepspeech`` extra and is imported only here, when features are made.
The MFCC front-end is re-implemented in numpy to match what the graph was trained on:
25 ms rectangular frames every 10 ms, pre-emphasis 0.97, 512-point power spectrum, 26 mel
filters, log, orthonormal DCT-II, 26 cepstra liftered by 22, c0 replaced by log frame
energy (computed on int16-scaled samples). Every second MFCC row is kept (50 Hz), each with
±9 rows of context, and the whole input is standardised by one mean and deviation.

The graph's 29 logits at 50 Hz are interpolated onto exactly ``2 * num_frames`` steps, zero
padded by 8 on both ends and cut into windows of 16 with stride 2: one window per video
frame, centred on it. File layout: float32 ``[T, 16, 29]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from instag.audio.registry import fit_length
from instag.data.format import AUDIO_FEATURE_FILES
from instag.errors import InstagError

GRAPH_NAME = "deepspeech-0_1_0-b90017e8.pb"
NUM_CEPSTRA = 26
NUM_CONTEXT = 9
NUM_LOGITS = 29
LOGIT_RATE = 50
WINDOW, STRIDE = 16, 2
SAMPLE_RATE = 16000


def default_graph_paths() -> list[Path]:
    """Where the graph is looked for when no path is given (upstream's location last)."""
    paths = [Path("data_utils/deepspeech_features") / GRAPH_NAME]
    if os.environ.get("INSTAG_DEEPSPEECH_PB"):
        paths.insert(0, Path(os.environ["INSTAG_DEEPSPEECH_PB"]))
    paths.append(Path.home() / ".tensorflow" / "models" / GRAPH_NAME)
    return paths


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def _triangle_filters(num_filters: int, n_fft: int, sample_rate: int) -> np.ndarray:
    """HTK-style triangles on integer FFT bins: [num_filters, n_fft//2+1]."""
    points = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2.0), num_filters + 2))
    bins = np.floor((n_fft + 1) * points / sample_rate).astype(np.int64)
    bank = np.zeros((num_filters, n_fft // 2 + 1))
    for j in range(num_filters):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        if mid > lo:
            bank[j, lo:mid] = (np.arange(lo, mid) - lo) / (mid - lo)
        if hi > mid:
            bank[j, mid:hi] = (hi - np.arange(mid, hi)) / (hi - mid)
    return bank


def _dct2_ortho(x: np.ndarray, count: int) -> np.ndarray:
    """First ``count`` orthonormal DCT-II coefficients along the last axis."""
    n = x.shape[-1]
    k = np.arange(count)[:, None]
    basis = np.cos(np.pi * k * (2 * np.arange(n)[None, :] + 1) / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return x @ basis.T


def mfcc(signal: np.ndarray, sample_rate: int = SAMPLE_RATE, num_cepstra: int = NUM_CEPSTRA) -> np.ndarray:
    """MFCC of ``signal`` [n] (int16 scale) -> float64 [frames, num_cepstra] at 100 Hz."""
    signal = np.asarray(signal, dtype=np.float64)
    frame_len, frame_step, n_fft = int(round(0.025 * sample_rate)), int(round(0.01 * sample_rate)), 512
    emphasised = np.append(signal[:1], signal[1:] - 0.97 * signal[:-1])
    count = 1 if emphasised.size <= frame_len else 1 + int(np.ceil((emphasised.size - frame_len) / frame_step))
    padded = np.concatenate([emphasised, np.zeros(max(0, (count - 1) * frame_step + frame_len - emphasised.size))])
    index = np.arange(frame_len)[None, :] + frame_step * np.arange(count)[:, None]
    frames = padded[index]
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2 / n_fft
    eps = np.finfo(np.float64).eps
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, eps, energy)
    fbank = power @ _triangle_filters(26, n_fft, sample_rate).T
    fbank = np.where(fbank == 0, eps, fbank)
    cep = _dct2_ortho(np.log(fbank), num_cepstra)
    cep *= 1.0 + 11.0 * np.sin(np.pi * np.arange(num_cepstra) / 22.0)  # lifter L = 22
    cep[:, 0] = np.log(energy)
    return cep


def network_input(samples: np.ndarray) -> np.ndarray:
    """16 kHz float samples [n] in [-1, 1] -> the graph's input [steps, (2*9+1)*26], standardised."""
    pcm = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32768.0), -32768, 32767)
    features = mfcc(pcm)[::2]  # the network's BiRNN stride: 50 Hz
    steps = features.shape[0]
    context = np.zeros((NUM_CONTEXT, NUM_CEPSTRA))
    padded = np.concatenate([context, features, context])
    width = 2 * NUM_CONTEXT + 1
    stacked = padded[np.arange(width)[None, :] + np.arange(steps)[:, None]].reshape(steps, -1)
    std = stacked.std()
    return ((stacked - stacked.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def logits_to_windows(logits: np.ndarray, audio_seconds: float, num_frames: int | None) -> np.ndarray:
    """Logits [L, 29] at 50 Hz -> windows [T, 16, 29], one centred on each 25-FPS frame."""
    if num_frames is None:
        num_frames = int(round(audio_seconds * 25))
    steps = 2 * num_frames
    if steps == 0 or logits.shape[0] == 0:
        return np.zeros((num_frames, WINDOW, logits.shape[1]), dtype=np.float32)
    out_rate = steps / audio_seconds if audio_seconds > 0 else LOGIT_RATE
    src_t = np.arange(logits.shape[0]) / LOGIT_RATE
    dst_t = np.arange(steps) / out_rate
    resampled = np.stack([np.interp(dst_t, src_t, logits[:, c]) for c in range(logits.shape[1])], axis=1)
    padded = np.concatenate(
        [np.zeros((WINDOW // 2, logits.shape[1])), resampled, np.zeros((WINDOW // 2, logits.shape[1]))]
    )
    starts = np.arange(0, padded.shape[0] - WINDOW, STRIDE)
    windows = padded[starts[:, None] + np.arange(WINDOW)[None, :]]
    return fit_length(windows.astype(np.float32), num_frames)


def load_graph_runner(graph_path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Load the frozen graph; returns ``run(input [steps, 494]) -> logits [steps, 29]``."""
    try:
        import tensorflow as tf
    except ImportError as err:
        raise InstagError("deepspeech features need TensorFlow: pip install 'instag[deepspeech]'") from err
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(graph_path.read_bytes())
    except Exception as err:  # protobuf raises its own DecodeError
        raise InstagError(
            f"{graph_path} is not a TensorFlow frozen graph ({err}); download {GRAPH_NAME} again"
        ) from err
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="deepspeech")
    try:
        logits = graph.get_tensor_by_name("deepspeech/logits:0")
        inputs = graph.get_tensor_by_name("deepspeech/input_node:0")
        lengths = graph.get_tensor_by_name("deepspeech/input_lengths:0")
    except KeyError as err:
        raise InstagError(f"{graph_path} lacks DeepSpeech 0.1.0's input_node/input_lengths/logits tensors") from err
    session = tf.compat.v1.Session(graph=graph)

    def run(vector: np.ndarray) -> np.ndarray:
        out = session.run(logits, feed_dict={inputs: vector[None], lengths: [vector.shape[0]]})
        return np.asarray(out)[:, 0]  # time-major [steps, batch, 29]

    return run


class DeepSpeechExtractor:
    name = "deepspeech"
    file_name = AUDIO_FEATURE_FILES["deepspeech"]
    item_shape = (NUM_LOGITS, WINDOW)
    file_item_shape = (WINDOW, NUM_LOGITS)

    def __init__(self, weights: str | os.PathLike | None = None, device: str | None = None):
        del device  # TensorFlow places the graph itself
        self.weights = Path(weights) if weights else None
        self._run: Callable[[np.ndarray], np.ndarray] | None = None

    def graph_path(self) -> Path:
        candidates = [self.weights] if self.weights else default_graph_paths()
        for path in candidates:
            if path.is_file():
                return path
        where = " or ".join(str(p) for p in candidates)
        raise InstagError(f"DeepSpeech graph {GRAPH_NAME} not found: put it at {where} (or pass --weights PATH)")

    def extract(self, samples: np.ndarray, num_frames: int | None = None) -> np.ndarray:
        """16 kHz mono float32 [n] -> float32 [T, 16, 29]."""
        if self._run is None:
            self._run = load_graph_runner(self.graph_path())
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        logits = self._run(network_input(samples))
        if logits.ndim != 2 or logits.shape[1] != NUM_LOGITS:
            raise InstagError(f"DeepSpeech graph returned logits of shape {logits.shape}, expected [steps, 29]")
        return logits_to_windows(logits, samples.size / SAMPLE_RATE, num_frames)
