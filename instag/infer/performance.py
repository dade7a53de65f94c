"""A performance: what the head does besides lip sync (expression, blinks, head gestures, pauses), over time.

One description drives ``synthesize_fuse.py``, ``instag synthesize`` and ``instag stream``. It comes from
``--performance perf.json``, ``--expression``, ``--blink``, ``--pose`` and ``--au_csv`` (flags win over the
file), and in a stream also from JSON lines that arrive while it runs. ``perf.json``::

    {"blink": "auto",                         # "auto" (the training clip's rate), "off", or blinks per minute
     "pose": "pingpong",                      # pingpong | train | still | a clip folder, track_params.pt or pose csv
     "au_csv": "curve.csv",                   # OpenFace-format AU curve, one row per frame (optional)
     "pauses": true,                          # close the mouth and relax the face in silence
     "events": [
       {"expression": "happy", "intensity": 0.7, "start": 2.0, "end": 4.5},
       {"aus": {"AU01": 2.0, "AU02": 2.0}, "start": 5, "end": 6, "ramp": 0.2},
       {"blink": 7.2},
       {"gesture": "nod", "at": 8.0, "duration": 1.0, "amplitude": 8, "times": 2}]}

Times are seconds of the output; paths are relative to the file. ``--expression happy:0.7@2.0-4.5,surprised:0.5@6-7``
is the short form of expression events (``NAME[:INTENSITY][@START[-END]]``; an ``AUxx`` name takes an AU amount).

How the per-frame AU condition is made (:class:`Performer`), in this order:

1. default: the training clip's AUs along the frames that give pose and torso, but the mouth-corner AUs
   (:data:`instag.data.format.SLOW_AUS`, which also followed the training clip's speech) at the clip's rest level
   (its median; ``--pose still``: every AU at rest); or the columns of ``--au_csv``;
2. pauses: in silence (:func:`instag.audio.activity.silent_frames`) the AUs relax toward the clip's rest level
   (its median) over :data:`FACE_RELAX_FRAMES`; the audio items blend toward the extractor's silence items
   (:func:`pause_weights`), so the mouth closes instead of holding the last word;
3. expressions: each event moves the AUs it names toward ``rest + intensity × amount`` (:data:`PRESETS`, AU units
   0-5), with smooth (C¹) onsets and offsets of ``ramp`` seconds; a later event goes over an earlier one;
4. blinks (AU45): irregular (one per slot of 60/rate s, at a random place in it), each closing for 100–300 ms
   (:func:`blink_schedule`), plus those requested, unless ``--au_csv`` holds AU45.

Every track of frame ``k`` depends only on frames ``<= k`` (pause weights are causal), so a stream, which
decides frame by frame, makes the frames an offline run makes for the same events and pauses.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from instag.data.format import EXPRESSION_AUS, FPS
from instag.errors import InstagError

AU45 = EXPRESSION_AUS.index("AU45")
AU_MAX, AU45_MAX = 5.0, 2.0
# AU amounts at intensity 1, added to the clip's rest level (OpenFace intensity units)
PRESETS: dict[str, dict[str, float]] = {
    "happy": {"AU06": 2.5, "AU12": 3.0},
    "sad": {"AU01": 2.5, "AU04": 2.0, "AU15": 2.5},
    "surprised": {"AU01": 3.0, "AU02": 3.0, "AU05": 2.5},
    "angry": {"AU04": 3.0, "AU07": 2.5},
    "brows_up": {"AU01": 3.0, "AU02": 3.0},
    "neutral": {a: 0.0 for a in EXPRESSION_AUS if a != "AU45"},
}
DEFAULT_RAMP_S = 0.4
GESTURES = {  # kind: (head-frame axis, default duration s, default amplitude degrees, default repetitions)
    "nod": ("pitch", 1.0, 8.0, 2),
    "shake": ("yaw", 1.2, 10.0, 2),
    "tilt": ("roll", 2.0, 8.0, 1),
}
BLINK_S = (0.1, 0.3)  # a blink's closure, from closing to open again
BLINK_MEDIAN_S = 0.18
AUTO_BLINKS_PER_MIN = (6.0, 30.0)  # the training clip's rate is kept inside this range
DEFAULT_BLINKS_PER_MIN = 15.0
REQUESTED_BLINK_CLEARANCE_S = 0.6  # automatic blinks this close to a requested one are dropped
ITEM_RISE_FRAMES, ITEM_FALL_FRAMES = 3, 2  # audio items: toward silence over 120 ms, back in 80 ms
FACE_RELAX_FRAMES, FACE_RETURN_FRAMES = 12, 5  # AUs: toward rest over 0.5 s, back over 0.2 s
EVENT_KEYS = {
    "expression": {"expression", "intensity", "start", "end", "ramp", "at", "duration"},
    "aus": {"aus", "intensity", "start", "end", "ramp", "at", "duration"},
    "blink": {"blink", "at", "duration"},
    "gesture": {"gesture", "at", "start", "duration", "amplitude", "times"},
}
SETTINGS_KEYS = {"blink", "pose", "au_csv", "pauses", "events"}
POSE_MODES = ("pingpong", "train", "still")


@dataclass(frozen=True)
class ExpressionCue:
    """AUs moved toward ``rest + intensity × amounts[AU]`` from ``start`` to ``end`` (None: the end), ramps of ``ramp`` s."""

    amounts: dict[str, float]
    start: float = 0.0
    end: float | None = None
    intensity: float = 1.0
    ramp: float = DEFAULT_RAMP_S
    label: str = ""


@dataclass(frozen=True)
class BlinkCue:
    at: float
    duration: float = BLINK_MEDIAN_S


@dataclass(frozen=True)
class GestureCue:
    """A head gesture: ``kind`` in :data:`GESTURES`, ``amplitude`` degrees, ``times`` repetitions."""

    kind: str
    start: float
    duration: float
    amplitude: float
    times: int = 1


@dataclass
class Performance:
    """Settings (None: not given) and events of a performance."""

    expressions: list[ExpressionCue] = field(default_factory=list)
    blinks: list[BlinkCue] = field(default_factory=list)
    gestures: list[GestureCue] = field(default_factory=list)
    blink: str | None = None
    pose: str | None = None
    au_csv: str | None = None
    pauses: bool | None = None

    def over(self, base: Performance) -> Performance:
        """This performance's settings where given, else ``base``'s; the events of both."""
        return Performance(
            base.expressions + self.expressions, base.blinks + self.blinks, base.gestures + self.gestures,
            self.blink if self.blink is not None else base.blink, self.pose if self.pose is not None else base.pose,
            self.au_csv if self.au_csv is not None else base.au_csv,
            self.pauses if self.pauses is not None else base.pauses,
        )

    def add(self, other: Performance) -> None:
        self.expressions += other.expressions
        self.blinks += other.blinks
        self.gestures += other.gestures

    def asked(self) -> dict:
        """What was asked of the head, with the defaults spelt out, as a session log records it (``settings.performance``)."""
        return {
            "expression": [{"name": c.label or "aus", "aus": dict(c.amounts), "intensity": c.intensity, "start": c.start,
                            "end": c.end} for c in self.expressions],
            "blink": self.blink or "auto", "blinks_at": [b.at for b in self.blinks],
            "pose": self.pose or "pingpong",
            "gestures": [{"gesture": g.kind, "start": g.start, "duration": g.duration, "amplitude": g.amplitude,
                          "times": g.times} for g in self.gestures],
            "au_csv": self.au_csv, "pauses": self.pauses is not False,
        }


# ---------------------------------------------------------------------------------------- parsing
def _number(value, where: str, what: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InstagError(f"{where}: {what} must be a number, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"from {lo:g} to {hi:g}" if hi is not None else f"at least {lo:g}"
        raise InstagError(f"{where}: {what} must be {bounds}, got {value:g}")
    return float(value)


def _amounts(name: str, where: str) -> dict[str, float]:
    if name not in PRESETS:
        raise InstagError(f"{where}: unknown expression {name!r}; use one of {', '.join(PRESETS)} or give AUs "
                          '({"aus": {"AU12": 2.0}})')
    return PRESETS[name]


def _au_amounts(aus, where: str) -> dict[str, float]:
    if not isinstance(aus, dict) or not aus:
        raise InstagError(f'{where}: "aus" must map AU names to amounts, e.g. {{"AU12": 2.0}}')
    out = {}
    for name, value in aus.items():
        key = str(name).strip().removesuffix("_r")
        if key not in EXPRESSION_AUS or key == "AU45":
            raise InstagError(f"{where}: {name!r} is not an AU the face field reads; use "
                              f"{', '.join(a for a in EXPRESSION_AUS if a != 'AU45')} (blinks are events of their own)")
        out[key] = _number(value, where, name, 0.0, AU_MAX)
    return out


def _span(event: dict, where: str, now: float, default_duration: float | None = None) -> tuple[float, float | None]:
    """(start, end) seconds of an event: ``start``/``at`` (default ``now``) and ``end`` or ``duration``."""
    start = event.get("start", event.get("at"))
    start = now if start is None else _number(start, where, "start", 0.0)
    end = event.get("end")
    if end is not None:
        end = _number(end, where, "end", 0.0)
    elif event.get("duration") is not None:
        end = start + _number(event["duration"], where, "duration", 1e-3)
    elif default_duration is not None:
        end = start + default_duration
    if end is not None and end <= start:
        raise InstagError(f"{where}: ends at {end:g} s, not after its start {start:g} s")
    return start, end


def parse_event(event, where: str, now: float = 0.0) -> Performance:
    """One timeline event (a dict, see the module docstring) as a :class:`Performance` of events.
    ``now`` (seconds) is the start of an event that gives none (stream events)."""
    if not isinstance(event, dict):
        raise InstagError(f"{where}: an event must be a JSON object, got {event!r:.60}")
    kinds = [k for k in EVENT_KEYS if k in event]
    if len(kinds) != 1:
        raise InstagError(f"{where}: an event names exactly one of {', '.join(EVENT_KEYS)}, got {sorted(event)}")
    kind = kinds[0]
    unknown = sorted(set(event) - EVENT_KEYS[kind])
    if unknown:
        raise InstagError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in a "
                          f"{kind} event; it takes {', '.join(sorted(EVENT_KEYS[kind]))}")
    perf = Performance()
    if kind in ("expression", "aus"):
        if kind == "expression":
            if not isinstance(event["expression"], str):
                raise InstagError(f"{where}: expression must be a name ({', '.join(PRESETS)}), got {event['expression']!r}")
            amounts, label = _amounts(event["expression"], where), event["expression"]
        else:
            amounts, label = _au_amounts(event["aus"], where), "aus"
        intensity = _number(event.get("intensity", 1.0), where, "intensity", 0.0, 1.0)
        ramp = _number(event.get("ramp", DEFAULT_RAMP_S), where, "ramp", 0.0, 10.0)
        start, end = _span(event, where, now)
        perf.expressions.append(ExpressionCue(amounts, start, end, intensity, ramp, label))
    elif kind == "blink":
        at = event["blink"]
        if at is True:
            at = event.get("at", now)
        elif "at" in event:
            raise InstagError(f'{where}: give the time as {{"blink": 3.2}} or {{"blink": true, "at": 3.2}}, not both')
        at = _number(at, where, "blink time", 0.0)
        dur = _number(event.get("duration", BLINK_MEDIAN_S), where, "duration", *BLINK_S)
        perf.blinks.append(BlinkCue(at, dur))
    else:
        name = event["gesture"]
        if name not in GESTURES:
            raise InstagError(f"{where}: unknown gesture {name!r}; use {', '.join(GESTURES)}")
        _, duration, amplitude, times = GESTURES[name]
        start, end = _span(event, where, now, duration)
        amplitude = _number(event.get("amplitude", amplitude), where, "amplitude (degrees)", -30.0, 30.0)
        times = event.get("times", times)
        if isinstance(times, bool) or not isinstance(times, int) or not 1 <= times <= 10:
            raise InstagError(f"{where}: times must be a whole number from 1 to 10, got {times!r}")
        perf.gestures.append(GestureCue(name, start, end - start, amplitude, times))
    return perf


_EXPRESSION_ITEM = re.compile(r"^(?P<name>[A-Za-z_0-9]+)(?::(?P<amount>[^@]+))?(?:@(?P<start>[^-]+)(?:-(?P<end>.*))?)?$")


def _item_number(value: str | None, key: str, where: str) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise InstagError(f"{where}: {key} {value!r} is not a number") from None


def parse_expression_arg(text: str, flag: str = "--expression") -> list[ExpressionCue]:
    """``happy:0.7@2.0-4.5,surprised:0.5@6-7,AU12:2@1-2`` -> expression cues (one-line errors name the item)."""
    cues = []
    for k, item in enumerate(p.strip() for p in text.split(",")):
        where = f"{flag} item {k + 1} ({item!r})"
        m = _EXPRESSION_ITEM.match(item)
        if not item or m is None:
            raise InstagError(f"{where}: expected NAME[:INTENSITY][@START[-END]], e.g. happy:0.7@2.0-4.5")
        start, end, amount = (_item_number(m.group(key), key, where) for key in ("start", "end", "amount"))
        event = {"start": start or 0.0, "end": end}
        name = m.group("name")
        if re.fullmatch(r"AU\d\d", name):
            event["aus"] = {name: 1.0 if amount is None else amount}
        else:
            event["expression"] = name.lower()
            if amount is not None:
                event["intensity"] = amount
        cues += parse_event({k2: v for k2, v in event.items() if v is not None}, where).expressions
    return cues


def load_performance(path: str | Path) -> Performance:
    """A ``perf.json`` timeline (see the module docstring); its paths resolved against its folder."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InstagError(f"{path}: no such performance file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InstagError(f"{path}: cannot read it ({err})") from err
    except ValueError as err:
        raise InstagError(f"{path}: not valid JSON ({err})") from err
    if isinstance(data, list):
        data = {"events": data}
    if not isinstance(data, dict):
        raise InstagError(f"{path}: expected a JSON object with settings and \"events\", or a list of events")
    unknown = sorted(set(data) - SETTINGS_KEYS)
    if unknown:
        raise InstagError(f"{path}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                          f"a performance holds {', '.join(sorted(SETTINGS_KEYS))}")
    perf = Performance()
    if "blink" in data:
        perf.blink = check_blink(data["blink"], f"{path}: blink")
    for key in ("pose", "au_csv"):
        if key in data:
            value = data[key]
            if not isinstance(value, str) or not value:
                raise InstagError(f"{path}: {key} must be a string, got {value!r}")
            if key == "au_csv" or value not in POSE_MODES:  # a path: relative to the performance file
                value = str(path.parent / value)
            setattr(perf, key, value)
    if "pauses" in data:
        if not isinstance(data["pauses"], bool):
            raise InstagError(f"{path}: pauses must be true or false, got {data['pauses']!r}")
        perf.pauses = data["pauses"]
    events = data.get("events", [])
    if not isinstance(events, list):
        raise InstagError(f'{path}: "events" must be a list of events')
    for k, event in enumerate(events):
        perf.add(parse_event(event, f"{path}: events[{k}]"))
    return perf



def check_blink(value, where: str) -> str:
    """``auto``, ``off`` or a rate per minute (0 < rate <= 60), as text."""
    if isinstance(value, str) and value.strip().lower() in ("auto", "off"):
        return value.strip().lower()
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise InstagError(f"{where}: expected auto, off or blinks per minute, got {value!r}") from None
    if not 0.0 < rate <= 60.0:
        raise InstagError(f"{where}: blinks per minute must be above 0 and at most 60, got {value!r} (off: no blinks)")
    return f"{rate:g}"


def check_pose(value: str, where: str = "--pose") -> str:
    if value in POSE_MODES or Path(value).exists():
        return value
    raise InstagError(f"{where} {value!r}: neither {', '.join(POSE_MODES)} nor an existing clip folder, "
                      "track_params.pt or pose csv")


def performance_from_options(performance: str | None = None, expression: str | None = None, blink: str | None = None,
                             pose: str | None = None, au_csv: str | None = None, clip: str | Path | None = None) -> Performance:
    """The performance of a command line: ``--performance`` with the other flags over it. ``clip``: the processed
    clip ``-S``, whose own AU csv an error about a missing one names as an example."""
    base = load_performance(performance) if performance else Performance()
    flags = Performance(parse_expression_arg(expression) if expression else [],
                        blink=check_blink(blink, "--blink") if blink is not None else None, pose=pose, au_csv=au_csv)
    perf = flags.over(base)
    if perf.pose is not None:
        check_pose(perf.pose, "--pose" if pose is not None else f"{performance}: pose")
    if perf.au_csv is not None and not Path(perf.au_csv).is_file():
        where = "--au_csv" if au_csv is not None else f"au_csv of {performance}, relative to it"
        example = Path(clip) / "au.csv" if clip is not None else None
        raise InstagError(f"{perf.au_csv} does not exist ({where}); give an OpenFace-format AU csv, one row per output "
                          "frame" + (f", e.g. --au_csv {example} (the clip's own)" if example and example.is_file() else ""))
    return perf


# ---------------------------------------------------------------------------------------- curves
def smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, 3x² − 2x³ between (C¹ at both ends)."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def envelope(t: np.ndarray, start: float, end: float | None, ramp: float) -> np.ndarray:
    """Weight in [0, 1] at times ``t`` (s) of a span with smooth ramps inside it (full from start+ramp to end−ramp)."""
    if end is None:
        end = math.inf
    r = min(ramp, (end - start) / 2)
    if r <= 0:
        return ((t >= start) & (t < end)).astype(np.float64)
    return smoothstep((t - start) / r) * smoothstep((end - t) / r)


def pause_weights(silent: np.ndarray, rise: int, fall: int) -> np.ndarray:
    """Causal weights [T] in [0,1] toward the pause state: up over ``rise`` frames while silent, down over ``fall``
    after; eased with :func:`smoothstep`. Frame k depends on ``silent[:k+1]`` only (streams decide frame by frame)."""
    state = np.zeros(len(silent))
    s = 0.0
    for k, quiet in enumerate(np.asarray(silent, bool)):
        s = min(1.0, s + 1.0 / rise) if quiet else max(0.0, s - 1.0 / fall)
        state[k] = s
    return smoothstep(state)


# ---------------------------------------------------------------------------------------- blinks
def blink_rate_and_depth(train_au45: np.ndarray) -> tuple[float, float, float]:
    """(blinks per minute, open level, closed level) of a training clip's AU45 [n].

    The open level is the 10th percentile, a blink peaks at the 95th; blinks are rises through the midpoint
    (the rate kept in :data:`AUTO_BLINKS_PER_MIN`); with no visible blink, 15 a minute one unit deep."""
    au45 = np.asarray(train_au45, np.float64)
    rest, peak = (float(np.percentile(au45, 10)), float(np.percentile(au45, 95))) if au45.size else (0.0, 0.0)
    if au45.size < 2 or peak - rest < 0.2:
        return DEFAULT_BLINKS_PER_MIN, rest, max(peak, rest + 1.0)
    mid = (rest + peak) / 2
    rises = int(np.sum((au45[1:] >= mid) & (au45[:-1] < mid)))
    rate = 60.0 * rises / max(au45.size / FPS, 6.0)
    return float(np.clip(rate, *AUTO_BLINKS_PER_MIN)), rest, peak


def blink_schedule(per_minute: float, until_s: float, seed: int = 0) -> list[BlinkCue]:
    """Blinks up to ``until_s``: one per slot of 60/rate s, at a uniformly drawn place in its middle 70 % (gaps of
    0.3–1.7 slots: irregular, yet the count stays the rate), on a frame (so each blink shows fully closed), lasting
    100–300 ms (log-normal around 180 ms). A longer ``until_s`` extends the same list (streams)."""
    rng = np.random.default_rng(seed)
    slot = 60.0 / per_minute
    out = []
    k = 0
    while k * slot < until_s:
        place, spread = rng.uniform(0.15, 0.85), rng.standard_normal()
        at = round((k + place) * slot * FPS) / FPS
        out.append(BlinkCue(at, float(np.clip(BLINK_MEDIAN_S * math.exp(0.3 * spread), *BLINK_S))))
        k += 1
    return [b for b in out if b.at < until_s]


def blink_curve(blinks: list[BlinkCue], frames: np.ndarray, rest: float, peak: float) -> np.ndarray:
    """AU45 at ``frames`` [T]: ``rest`` with each blink a cos² bump to ``peak`` over its duration."""
    t = np.asarray(frames, np.float64) / FPS
    bump = np.zeros(t.shape)
    for b in blinks:
        x = (t - b.at) / b.duration
        inside = np.abs(x) < 0.5
        bump[inside] = np.maximum(bump[inside], np.cos(np.pi * x[inside]) ** 2)
    return rest + (peak - rest) * bump


# ---------------------------------------------------------------------------------------- AU curves
def read_au_curve(path: str | Path, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """An OpenFace-format AU csv as the condition: (values [T, len(EXPRESSION_AUS)], given [len]) with the columns
    it holds (AU45 clipped to [0, 2]); the last row repeats past its end."""
    from instag.preprocess.au import read_au_csv

    table = read_au_csv(path, required=())
    given = np.array([f"{a}_r" in table for a in EXPRESSION_AUS])
    if not given.any():
        raise InstagError(f"{path}: holds none of the AU columns {', '.join(a + '_r' for a in EXPRESSION_AUS)}; "
                          "give an OpenFace FeatureExtraction csv")
    rows = len(next(iter(table.values())))
    values = np.zeros((max(rows, 1), len(EXPRESSION_AUS)), np.float32)
    for j, name in enumerate(EXPRESSION_AUS):
        if given[j]:
            values[:, j] = table[f"{name}_r"]
    if values.shape[0] < num_frames:
        values = np.concatenate([values, np.repeat(values[-1:], num_frames - values.shape[0], 0)])
    values = values[:num_frames].copy()
    values[:, AU45] = np.clip(values[:, AU45], 0, AU45_MAX)
    return values, given


@dataclass
class Performer:
    """Per-frame AU condition and pause weights of one performance on one training clip.

    ``train_au [n, len(EXPRESSION_AUS)]``: the training clip's AUs (``Clip.au_exp``); ``has_au``: whether the clip
    had an au.csv (without one the model never saw AUs, so none are generated).
    """

    train_au: np.ndarray
    has_au: bool
    performance: Performance = field(default_factory=Performance)
    seed: int = 0
    pauses: bool = True
    expression_gain: float = 1.0  # multiplier on requested expression amounts (instag.infer.delivery)

    def __post_init__(self):
        self.train_au = np.asarray(self.train_au, np.float32)
        self.rest = np.median(self.train_au, axis=0) if len(self.train_au) else np.zeros(len(EXPRESSION_AUS), np.float32)
        rate, self.blink_rest, self.blink_peak = blink_rate_and_depth(self.train_au[:, AU45])
        self.rest[AU45] = self.blink_rest
        setting = self.performance.blink or "auto"
        self.blinks_per_minute = 0.0 if setting == "off" or not self.has_au else rate if setting == "auto" else float(setting)
        self._auto_blinks: list[BlinkCue] = []
        self._curve: tuple[np.ndarray, np.ndarray] | None = None
        self._curve_frames = 0

    def add(self, events: Performance, from_frame: int) -> None:
        """Events that arrive while frames ``>= from_frame`` are still to come: one that would have begun earlier
        begins at ``from_frame`` (its onset stays smooth; frames already made do not change)."""
        now = from_frame / FPS

        def later(cue):
            start = cue.at - cue.duration / 2 if isinstance(cue, BlinkCue) else cue.start
            if start >= now:
                return cue
            if isinstance(cue, BlinkCue):  # ``at`` is the blink's middle: it closes from ``now`` on
                return replace(cue, at=now + cue.duration / 2)
            if isinstance(cue, ExpressionCue):
                return replace(cue, start=now, end=None if cue.end is None else max(cue.end, now + 2 * cue.ramp))
            return replace(cue, start=now)

        self.performance.add(Performance([later(c) for c in events.expressions], [later(c) for c in events.blinks],
                                         [later(c) for c in events.gestures]))

    def _blinks(self, until_s: float) -> list[BlinkCue]:
        if self.blinks_per_minute > 0 and (not self._auto_blinks or self._auto_blinks[-1].at < until_s):
            self._auto_blinks = blink_schedule(self.blinks_per_minute, max(until_s, 60.0) * 2, self.seed)
        requested = self.performance.blinks
        auto = [b for b in self._auto_blinks
                if all(abs(b.at - r.at) >= REQUESTED_BLINK_CLEARANCE_S for r in requested)]
        return auto + list(requested)

    def au(self, default: np.ndarray, frames: np.ndarray, silent: np.ndarray | None = None) -> np.ndarray:
        """The AU condition [T, len(EXPRESSION_AUS)] of ``frames`` (consecutive, from 0 or on): ``default`` [T, ...]
        (the training clip's AUs along the plan), ``silent`` [frames[-1]+1] pause flags from frame 0 (None: no pauses)."""
        frames = np.asarray(frames)
        au = np.array(default, np.float64, copy=True)
        given = np.zeros(au.shape[1], bool)
        if self.performance.au_csv:
            curve, given = self._au_curve(int(frames[-1]) + 1 if len(frames) else 0)
            au[:, given] = curve[frames][:, given]
        if silent is not None and self.pauses and len(frames):
            w = pause_weights(silent[: frames[-1] + 1], FACE_RELAX_FRAMES, FACE_RETURN_FRAMES)[frames, None]
            keep = np.arange(au.shape[1]) != AU45
            au[:, keep] = (1 - w) * au[:, keep] + w * self.rest[None, keep]
        t = frames / FPS
        for cue in sorted(self.performance.expressions, key=lambda c: c.start):
            e = envelope(t, cue.start, cue.end, cue.ramp)[:, None]
            cols = [EXPRESSION_AUS.index(a) for a in cue.amounts]
            target = self.rest[cols] + self.expression_gain * cue.intensity * np.array([cue.amounts[a] for a in cue.amounts])
            au[:, cols] = (1 - e) * au[:, cols] + e * target[None]
        if not given[AU45] and (self.has_au or self.performance.blinks):
            au[:, AU45] = blink_curve(self._blinks(t[-1] + 1 if len(t) else 0.0), frames, self.blink_rest, self.blink_peak)
        elif self.performance.blinks:  # the csv's own blinks, and those requested
            au[:, AU45] = np.maximum(au[:, AU45], blink_curve(self.performance.blinks, frames, 0.0, self.blink_peak))
        au[:, :] = np.clip(au, 0.0, AU_MAX)
        au[:, AU45] = np.clip(au[:, AU45], 0.0, AU45_MAX)
        return au.astype(np.float32)

    def requested_aus(self) -> dict[str, tuple[float, str]]:
        """The AUs the performance asks to move, each with the value farthest from rest it asks for and what asked
        (an expression's name, ``blinks``, the AU csv); the clip's own default motion is not a request."""
        out: dict[str, tuple[float, str]] = {}

        def ask(name: str, value: float, what: str) -> None:
            j = EXPRESSION_AUS.index(name)
            value = float(np.clip(value, 0.0, AU45_MAX if j == AU45 else AU_MAX))
            gap = abs(value - self.rest[j])
            if gap > 1e-6 and (name not in out or gap > abs(out[name][0] - self.rest[j])):
                out[name] = (value, what)

        for cue in self.performance.expressions:
            for name, amount in cue.amounts.items():
                ask(name, self.rest[EXPRESSION_AUS.index(name)] + self.expression_gain * cue.intensity * amount,
                    cue.label or "aus")
        if self.performance.blinks or self.performance.blink not in (None, "off"):
            ask("AU45", self.blink_peak, "blinks")
        if self.performance.au_csv:
            curve, given = self._au_curve(1)
            for j in np.flatnonzero(given):
                far = curve[np.argmax(np.abs(curve[:, j] - self.rest[j])), j]
                ask(EXPRESSION_AUS[j], far, Path(self.performance.au_csv).name)
        return out

    def _au_curve(self, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
        if self._curve is None or self._curve_frames < num_frames:
            self._curve_frames = max(num_frames, 2 * self._curve_frames, 30 * FPS)
            self._curve = read_au_curve(self.performance.au_csv, self._curve_frames)
        return self._curve

    def item_weights(self, silent: np.ndarray) -> np.ndarray:
        """Per audio item [T] the share of the extractor's silence item blended in (0 everywhere without pauses)."""
        if not self.pauses:
            return np.zeros(len(silent))
        return pause_weights(silent, ITEM_RISE_FRAMES, ITEM_FALL_FRAMES)


def blend_toward_silence(items, weights: np.ndarray, silence_item):
    """Audio items ``[T, C, W]`` (torch) blended per item toward ``silence_item`` ``[C, W]`` by ``weights`` [T]."""
    import torch

    w = torch.as_tensor(np.asarray(weights, np.float32)[: items.shape[0]], dtype=items.dtype, device=items.device)
    if not bool((w > 0).any()):
        return items
    w = w[:, None, None]
    return items * (1 - w) + silence_item.to(items.device, items.dtype)[None] * w
