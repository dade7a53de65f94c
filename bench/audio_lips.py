"""How far the audio alone predicts the mouth: the ceiling the motion fields work under.

    python bench/audio_lips.py --train data/pretrain --eval data/cnn2 data/german [--seeds 0 1 2] [--steps 4000]

Trains the models' own audio encoder (``AudioEncoder``) with the pre-training lip head (``LipHead``) on every frame
of the training clips, regressing the normalised lip landmarks exactly as pre-training's ``--lip_aux`` loss does,
then predicts each evaluation clip's validation frames (its ``transforms_val.json``, else its last 12 s) and reports
the Pearson correlation of the predicted mouth opening (landmarks 13-14) with the observed one. Beside it: the
correlation of the speech loudness (the audio-video offset check's envelope) with the opening, at lag 0 and at the
best lag within +-3 frames, a baseline with nothing learned. ``--offsets`` also trains with each training clip's
audio moved by the offset that preprocessing found (confident ones only, and only where preprocessing did not
already shift it), to show what an uncorrected offset costs. ``--person_frames N`` adds what adaptation has to work
with: a ridge regression from each evaluation clip's own first N frames of audio to its opening (``person_ridge``).

Needs only the audio, frames, landmarks and audio-features steps of preprocessing (``instag process --task 1``, 3,
7, 2). CPU is enough (about a minute per run of 4 000 steps on 2 cores). Prints a table, writes JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _synthetic import RESULTS, table  # noqa: E402

from instag.data.format import DatasetLayout  # noqa: E402
from instag.errors import InstagError  # noqa: E402
from instag.io.atomic import write_json  # noqa: E402
from instag.metrics.lips import pearson  # noqa: E402

TEST_FRAMES = 300  # the protocol's last 12 s, when a clip has no validation split
LOUDNESS_LAGS = 3


class ClipData:
    """One processed clip: audio items, lip targets, mouth opening, loudness and its recorded A/V offset."""

    def __init__(self, root: Path, features: str):
        from instag.audio.activity import speech_envelope
        from instag.data.dataset import lip_targets
        from instag.io.safe_load import load_npy
        from instag.io.wav import read_wav, to_mono
        from instag.metrics.lips import mouth_opening
        from instag.preprocess.pipeline import load_meta

        self.layout = layout = DatasetLayout.of(root)
        self.name = layout.name
        for path in (layout.landmarks, layout.audio_wav):
            if not path.exists():
                raise InstagError(f"{path}: missing; preprocess {root} first (instag process --task 1, 3, 7, 2)")
        lm = load_npy(layout.landmarks, "rerun the landmark step (instag process --task landmarks)")
        self.num = len(lm)
        self.items = torch.from_numpy(feature_items(layout, features, self.num))
        self.target, self.valid = (torch.from_numpy(a) for a in lip_targets(layout, list(range(self.num))))
        self.opening = np.asarray(mouth_opening(lm), np.float64)
        samples, _ = read_wav(layout.audio_wav)
        self.loudness = speech_envelope(to_mono(samples), self.num)
        step = load_meta(layout).get("steps", {}).get("audio_features") or {}
        self.offset = int(step.get("av_offset_frames") or 0)
        self.confidence = float(step.get("av_offset_confidence") or 0.0)
        self.already_fixed = "av_offset_fixed" in step

    def shift(self, use_offsets: bool) -> int:
        from instag.preprocess.av_sync import MIN_CONFIDENCE

        if use_offsets and not self.already_fixed and abs(self.offset) > 1 and self.confidence >= MIN_CONFIDENCE:
            return self.offset
        return 0

    def test_frames(self) -> np.ndarray:
        path = self.layout.transforms("val")
        if path.exists():
            frames = json.loads(path.read_text(encoding="utf-8")).get("frames", [])
            return np.array([int(f["img_id"]) for f in frames if int(f["img_id"]) < self.num])
        return np.arange(max(0, self.num - TEST_FRAMES), self.num)


_WHISPER = {}


def whisper_states(layout: DatasetLayout, num: int, window: tuple[float, float] | None = None) -> np.ndarray:
    """Every hidden state of the Whisper encoder for the clip's audio: ``[num, 2, 7, 512]`` (two 50-Hz steps per
    frame), with the feature definition's window or ``window`` (left, right seconds)."""
    from instag.audio.whisper import LEFT_SECONDS, RIGHT_SECONDS, WhisperExtractor
    from instag.io.wav import read_wav, to_mono

    window = window or (LEFT_SECONDS, RIGHT_SECONDS)
    if window not in _WHISPER:
        _WHISPER[window] = WhisperExtractor(layers=tuple(range(7)), left=window[0], right=window[1])
    key = (str(layout.root), num, window)
    if key not in _WHISPER:
        samples, _ = read_wav(layout.audio_wav)
        pairs = _WHISPER[window].extract(to_mono(samples), num)  # [num, 2, 7 * 512]
        _WHISPER[key] = pairs.reshape(num, 2, 7, 512)
    return _WHISPER[key]


def feature_items(layout: DatasetLayout, features: str, num: int) -> np.ndarray:
    """Network-layout items ``[num, C, W]`` for a feature spec: an extractor's file (``mel``, ``hubert``, ...),
    ``whisper:L`` (layer L; ``whisper:2+3`` layers side by side; ``whisper:mean2-4`` their average), or
    ``whisper:L+mel`` (layer L at the mel's 16 taps of 50-Hz steps, beside the mel bands); ``@LEFT-RIGHT`` after
    the spec (``whisper:3@0.8-0.2``) sets the frame's window in seconds (default: the feature definition's)."""
    from instag.audio.windows import load_features

    if not features.startswith("whisper:"):
        return load_features(layout.audio_features(features), features, num)
    spec = features.split(":", 1)[1]
    window = None
    if "@" in spec:
        spec, win = spec.split("@", 1)
        window = tuple(float(v) for v in win.split("-"))
    with_mel = spec.endswith("+mel")
    spec = spec.removesuffix("+mel")
    states = whisper_states(layout, num, window)
    if spec.startswith("mean"):
        lo, hi = (int(v) for v in spec[4:].split("-"))
        chosen = states[:, :, lo : hi + 1].mean(axis=2)
    else:
        chosen = np.concatenate([states[:, :, int(k)] for k in spec.split("+")], axis=-1)  # [num, 2, C]
    if not with_mel:
        return np.ascontiguousarray(chosen.transpose(0, 2, 1), dtype=np.float32)
    from instag.audio.mel import HALF

    mel = load_features(layout.audio_features("mel"), "mel", num)  # [num, 80, 16]: steps 2i-8 .. 2i+7
    steps = chosen.reshape(num * 2, -1)
    idx = np.clip(2 * np.arange(num)[:, None] + np.arange(-HALF, HALF)[None], 0, len(steps) - 1)
    taps = steps[idx].transpose(0, 2, 1)  # [num, C, 16]
    return np.ascontiguousarray(np.concatenate([taps, mel], axis=1), dtype=np.float32)


def loudness_baseline(clip: ClipData) -> tuple[float, float, int]:
    """(correlation at lag 0, best correlation within +-LOUDNESS_LAGS, that lag) of loudness with opening."""
    frames = clip.test_frames()
    by_lag = {}
    for lag in range(-LOUDNESS_LAGS, LOUDNESS_LAGS + 1):
        idx = np.clip(frames + lag, 0, clip.num - 1)
        by_lag[lag] = pearson(clip.opening[frames], clip.loudness[idx])
    best = max(by_lag, key=by_lag.get)
    return by_lag[0], by_lag[best], best


def person_ridge(clip: ClipData, n_train: int, lags: int = 3, lambdas=(1.0, 10.0, 100.0, 1e3, 1e4, 1e5), folds: int = 5) -> tuple[float, float, float]:
    """(held-out correlation, std ratio of predicted to observed opening, chosen lambda) of a ridge regression from the clip's own audio items to its mouth
    opening, fitted on its first ``n_train`` frames as adaptation sees them. Features: each item averaged over the
    central half of its time axis (the AVE vector as it is), frames t-lags..t+lags side by side, standardised on the
    training frames. Lambda is chosen by contiguous ``folds``-fold cross-validation inside the training frames only."""
    items = clip.items.numpy().astype(np.float64)
    if items.shape[1] == 1:
        per_frame = items[:, 0, :]
    else:
        w = items.shape[2]
        per_frame = items[:, :, w // 4 : w - w // 4].mean(axis=2)
    idx = np.arange(clip.num)
    feats = np.concatenate([per_frame[np.clip(idx + lag, 0, clip.num - 1)] for lag in range(-lags, lags + 1)], axis=1)
    train = np.arange(min(n_train, clip.num))
    train = train[np.isfinite(clip.opening[train])]
    test = clip.test_frames()

    def fit_predict(fit: np.ndarray, pred: np.ndarray, lam: float) -> np.ndarray:
        mu, sd = feats[fit].mean(0), feats[fit].std(0) + 1e-8
        a = (feats[fit] - mu) / sd
        y = clip.opening[fit]
        w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (y - y.mean()))
        return ((feats[pred] - mu) / sd) @ w + y.mean()

    blocks = np.array_split(train, folds)
    scores = {}
    for lam in lambdas:
        cv = [pearson(fit_predict(np.setdiff1d(train, b), b, lam), clip.opening[b]) for b in blocks if len(b) > 2]
        scores[lam] = float(np.mean(cv)) if cv else 0.0
    best = max(scores, key=scores.get)
    pred = fit_predict(train, test, best)
    return pearson(pred, clip.opening[test]), std_ratio(pred, clip.opening[test]), best


def std_ratio(pred: np.ndarray, truth: np.ndarray) -> float:
    """Spread of the predicted opening over that of the observed one (DESIGN's mouth_amp)."""
    sd = float(np.std(truth))
    return float(np.std(pred)) / sd if sd > 0 else 0.0


def train_and_predict(train: list[ClipData], evals: list[ClipData], item_shape, steps: int, batch: int, lr: float,
                      seed: int, use_offsets: bool) -> dict[str, float]:
    from instag.audio.windows import frame_windows
    from instag.metrics.lips import LIP_INDICES, LOWER_INNER_LIP, UPPER_INNER_LIP
    from instag.model.audio_encoder import AudioEncoder, LipHead

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pool = np.concatenate([np.stack([np.full(int(c.valid.sum()), k), np.flatnonzero(c.valid.numpy())], 1)
                           for k, c in enumerate(train)])
    shifts = [c.shift(use_offsets) for c in train]
    encoder, head = AudioEncoder(item_shape), LipHead(train[0].target.shape[1])
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=lr)
    for _ in range(steps):
        pick = pool[rng.integers(len(pool), size=batch)]
        windows, targets = [], []
        for k in np.unique(pick[:, 0]):
            frames = torch.from_numpy(pick[pick[:, 0] == k, 1])
            windows.append(frame_windows(train[k].items, frames + shifts[k]))
            targets.append(train[k].target[frames])
        loss = ((head(encoder(torch.cat(windows))) - torch.cat(targets)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    encoder.eval()
    head.eval()
    upper, lower = LIP_INDICES.index(UPPER_INNER_LIP), LIP_INDICES.index(LOWER_INNER_LIP)
    out = {}
    with torch.no_grad():
        for clip in evals:
            frames = clip.test_frames()
            pred = head(encoder(frame_windows(clip.items, torch.from_numpy(frames)))).numpy().reshape(len(frames), -1, 2)
            opening = (pred[:, lower, 1] - pred[:, upper, 1]) / 10.0  # lip targets are x10 inter-ocular units
            out[clip.name] = (pearson(opening, clip.opening[frames]), std_ratio(opening, clip.opening[frames]))
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True, help="folder of processed training clips (data/pretrain)")
    ap.add_argument("--eval", nargs="+", required=True, help="processed evaluation clips (data/<ID>)")
    ap.add_argument("--audio_extractor", nargs="+", default=["mel"],
                    help="feature specs: extractor names (their files) and whisper:L, whisper:2+3, whisper:mean2-4, whisper:L+mel")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2],
                    help="seeds of the corpus-trained encoder (none: only the loudness and per-person ridge rows)")
    ap.add_argument("--offsets", action="store_true", help="also train with the recorded A/V offsets applied")
    ap.add_argument("--person_frames", type=int, nargs="+", default=[],
                    help="also fit a ridge regression on each evaluation clip's own first N frames (one N, or one per --eval clip)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--out", default=str(RESULTS / "audio_lips.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        root = Path(args.train)
        if not root.is_dir():
            raise InstagError(f"{root}: not a folder of processed clips")
        eval_roots = {Path(p).resolve() for p in args.eval}
        dirs = sorted(d for d in root.iterdir() if d.is_dir() and d.resolve() not in eval_roots
                      and DatasetLayout.of(d).landmarks.exists())
        if not dirs:
            raise InstagError(f"{root}: no processed clips (landmarks.npy) in it")
    except InstagError as err:
        print(f"bench/audio_lips.py: {err}", file=sys.stderr)
        return 1
    rows = []
    for k, features in enumerate(args.audio_extractor):
        try:
            train = [ClipData(d, features) for d in dirs] if args.seeds else []  # per-person rows need no corpus
            evals = [ClipData(Path(p), features) for p in args.eval]
        except InstagError as err:
            print(f"bench/audio_lips.py: {err}", file=sys.stderr)
            return 1
        if k == 0:
            for clip in evals:
                lag0, best, lag = loudness_baseline(clip)
                rows.append({"features": "-", "predictor": "loudness, lag 0", "clip": clip.name, "corr": lag0})
                rows.append({"features": "-", "predictor": f"loudness, best lag ({lag:+d})", "clip": clip.name, "corr": best})
        status = bench_features(args, features, train, evals, rows)
        if status:
            return status
        result = {"features": args.audio_extractor, "done": args.audio_extractor[: k + 1], "train_clips": [c.name for c in train],
                  "train_frames": int(sum(int(c.valid.sum()) for c in train)), "steps": args.steps, "batch": args.batch,
                  "seeds": args.seeds, "offsets_applied_in_variant": {c.name: c.offset for c in train if c.shift(True)},
                  "rows": rows}
        write_json(Path(args.out), result)  # after every feature spec: a long run keeps what it measured
    print(table(rows, ["features", "predictor", "clip", "corr", "amp", "min", "max", "seeds", "lambda"]))
    print(f"{len(train)} training clips, {result['train_frames']} frames; validation frames of each evaluation clip; "
          "amp: std of the predicted opening over the observed one")
    write_json(Path(args.out), result)
    print(f"wrote {args.out}")
    return 0


def bench_features(args, features: str, train: list[ClipData], evals: list[ClipData], rows: list[dict]) -> int:
    """Add the rows of one feature spec: the per-person ridge (``--person_frames``) and the corpus-trained encoder."""
    item_shape = tuple(evals[0].items.shape[1:])
    if args.person_frames:
        counts = args.person_frames * len(evals) if len(args.person_frames) == 1 else args.person_frames
        if len(counts) != len(evals):
            print(f"bench/audio_lips.py: --person_frames takes one N or one per --eval clip ({len(evals)})", file=sys.stderr)
            return 1
        for clip, n in zip(evals, counts):
            corr, amp, lam = person_ridge(clip, n)
            rows.append({"features": features, "predictor": f"ridge on its own first {n} frames", "clip": clip.name,
                         "corr": corr, "amp": amp, "lambda": lam})
    variants = [False, True] if args.offsets else [False]
    for use_offsets in variants if args.seeds else []:
        label = "audio encoder, corpus-trained" + (", offsets applied" if use_offsets else "")
        per_seed = []
        for seed in args.seeds:
            t0 = time.time()
            per_seed.append(train_and_predict(train, evals, item_shape, args.steps, args.batch, args.lr, seed, use_offsets))
            print(f"{features}: {label}, seed {seed}: {per_seed[-1]} ({time.time() - t0:.0f} s)", flush=True)
        for clip in evals:
            values = [r[clip.name][0] for r in per_seed]
            rows.append({"features": features, "predictor": label, "clip": clip.name, "corr": float(np.mean(values)),
                         "amp": float(np.mean([r[clip.name][1] for r in per_seed])),
                         "min": float(np.min(values)), "max": float(np.max(values)), "seeds": len(values)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
