"""``instag report output/<ID>``: the interaction logs (:mod:`instag.infer.sessionlog`) as one self-contained HTML page.

Sessions are numbered from 1 in the order logged, alike in every chart and in the table. Lip sync is reported as a
viewer sees it where the session's video is still on disk: its rendered mouth is measured as ``instag evaluate
--pred VIDEO -S <clip>`` measures it (:func:`instag.metrics.evaluate.lip_report`: MediaPipe landmarks, the person's
closed-mouth level from the clip's tracked openings; cached in ``logs/pixels/``), and shown beside what the log holds,
the model's predicted lip gap, named as such (the served page keeps no video: only the model's figures there).

Plots (matplotlib, inline PNG): lip sync of every session (gap–loudness correlation, closed in silence), coloured by
kind and with the model version changes marked; latency (first frame and the 95th percentile per frame) and frames
per second; expression use (mean AU intensities, the spread of the predicted lip gap, blinks per minute and head
pose); the feedback (thumbs up and down per version) and the versions' scores when ``instag refine`` has scored any.
Tables: every session with what was asked of it (expression, blink, pose) and its feedback, and the notes people
left. The page is written to ``<model>/logs/report.html`` (or ``--out``) and needs nothing else to open.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from instag.config import parse
from instag.errors import InstagError

KIND_COLOURS = {"synthesize": "#1f77b4", "stream": "#ff7f0e", "serve": "#2ca02c"}


@dataclass
class ReportConfig:
    """HTML dashboard of the sessions and feedback logged for a model."""

    model_path: str = field(metadata={"flags": ("-M", "-m"), "help": "trained model folder output/<ID> (its logs/sessions.jsonl); may come first without the flag"})
    out: str | None = field(default=None, metadata={"help": "HTML file to write (default <model>/logs/report.html)"})
    pixels: bool = field(default=True, metadata={
        "help": "measure the mouth in the sessions' videos still on disk, as instag evaluate --pred does (MediaPipe; "
                "cached in <model>/logs/pixels/)"})


def _figure(width: float = 7.5, height: float = 3.0):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    ax.grid(alpha=0.3)
    return fig, ax


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _num(value) -> float:
    return float(value) if isinstance(value, (int, float)) and value is not None and math.isfinite(value) else math.nan


def _finite(values) -> np.ndarray:
    a = np.asarray([_num(v) for v in values], np.float64)
    return a[np.isfinite(a)]


def numbers(sessions: list[dict]) -> np.ndarray:
    """The sessions' numbers in every chart and in the table: 1, 2, ... in the order logged."""
    return np.arange(1, len(sessions) + 1)


def _version_marks(ax, sessions: list[dict]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # sessions are counted
    last = None
    for number, s in zip(numbers(sessions), sessions):
        version = (s.get("model") or {}).get("version")
        if version != last and version is not None:
            ax.axvline(number, color="#999", lw=0.8, ls="--")
            ax.text(number, ax.get_ylim()[1], f" {version}", va="top", fontsize=8, color="#555")
        last = version


def model_sync(session: dict) -> tuple[float, float]:
    """(gap–loudness correlation, share of pauses with the gap closed) of the model's predicted lip gap, as logged
    (logs written before the keys were renamed called the second ``closed_in_silence``)."""
    sync = session.get("sync") or {}
    closed = sync.get("lip_gap_closed_in_silence", sync.get("closed_in_silence"))
    return _num(sync.get("score")), _num(closed)


def plot_sync(sessions: list[dict], pixels: dict[str, dict]) -> str:
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7.5, 5.2), dpi=100, sharex=True)
    x = numbers(sessions)
    model = np.array([model_sync(s) for s in sessions], np.float64).reshape(-1, 2)
    score, closed = model[:, 0], model[:, 1]
    pix_corr = np.array([_num((pixels.get(s.get("id")) or {}).get("opening_loudness_corr")) for s in sessions])
    pix_closed = np.array([_num((pixels.get(s.get("id")) or {}).get("closed_in_silence")) for s in sessions])
    for kind, colour in KIND_COLOURS.items():
        mask = np.array([s.get("kind") == kind for s in sessions], bool)
        if mask.any():
            ax.plot(x[mask], score[mask], "o", mfc="none", color=colour, label=f"predicted lip gap (model), {kind}")
            ax2.plot(x[mask], closed[mask], "o", mfc="none", color=colour, label=f"predicted lip gap (model), {kind}")
    if np.isfinite(pix_corr).any():
        ax.plot(x, pix_corr, "D", color="#222", label="rendered video (pixels)")
    if np.isfinite(pix_closed).any():
        ax2.plot(x, pix_closed, "D", color="#222", label="rendered video (pixels)")
    ax.axhline(0.4, color="#c33", lw=0.8, ls=":", label="bar for new speech (0.4)")
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("correlation")
    ax.set_title("Lip sync per session: mouth opening vs loudness")
    ax2.set_ylim(-0.05, 1.05)
    ax2.set_ylabel("share of pauses")
    ax2.set_title("Mouth closed in silence")
    ax2.set_xlabel("session")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        a.legend(fontsize=7, loc="lower left")
    _version_marks(ax, sessions)
    return _png(fig)


def plot_latency(sessions: list[dict]) -> str:
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7.5, 4.6), dpi=100, sharex=True)
    x = numbers(sessions)
    first = np.array([_num((s.get("latency") or {}).get("first_frame_ms")) for s in sessions])
    p95 = np.array([_num((s.get("latency") or {}).get("p95_ms")) for s in sessions])
    fps = np.array([_num((s.get("latency") or {}).get("fps")) for s in sessions])
    ax.plot(x, first, "o-", label="first frame (ms)")
    ax.plot(x, p95, "s-", label="95th percentile per frame (ms)")
    ax.axhline(150, color="#c33", lw=0.8, ls=":", label="real-time bar (150 ms)")
    ax.set_ylabel("ms")
    ax.set_title("Latency and throughput per session")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax2.plot(x, fps, "o-", color="#2ca02c", label="frames per second (wall clock)")
    ax2.axhline(25, color="#c33", lw=0.8, ls=":", label="25 FPS")
    ax2.set_xlabel("session")
    _version_marks(ax, sessions)
    ax2.set_ylabel("FPS")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    return _png(fig)


def expression_summary(sessions: list[dict]) -> dict:
    """Mean AU intensities over all frames, blinks per minute and pose spread per session."""
    au_values: dict[str, list[float]] = defaultdict(list)
    blinks, pose_std, openings = [], defaultdict(list), []
    for s in sessions:
        pf = s.get("per_frame") or {}
        for name, values in (pf.get("au") or {}).items():
            au_values[name].extend(_finite(values).tolist())
        blink = _finite(pf.get("blink") or [])
        if blink.size >= 2:
            mid = (np.percentile(blink, 10) + np.percentile(blink, 95)) / 2
            rises = int(np.sum((blink[1:] >= mid) & (blink[:-1] < mid))) if np.ptp(blink) > 0.2 else 0
            blinks.append(60.0 * rises / (blink.size / float(s.get("fps") or 25)))
        for key, values in (pf.get("pose") or {}).items():
            v = _finite(values)
            if v.size:
                pose_std[key].append(float(v.std()))
        openings.append(_finite(pf.get("mouth_opening") or []))
    return {"au_mean": {k: float(np.mean(v)) for k, v in sorted(au_values.items()) if v},
            "blinks_per_minute": blinks, "pose_std": dict(pose_std), "openings": openings}


def asked(session: dict) -> str:
    """What was asked of the head in a session (``settings.performance``), briefly; "–" when not logged."""
    perf = (session.get("settings") or {}).get("performance")
    if not isinstance(perf, dict):
        return "–"
    parts = [f"{e.get('name')}:{_num(e.get('intensity')):g}@{_num(e.get('start')):g}"
             + ("" if e.get("end") is None else f"-{_num(e.get('end')):g}") for e in perf.get("expression") or []]
    parts.append(f"blink {perf.get('blink')}" + (f" +{len(perf['blinks_at'])}" if perf.get("blinks_at") else ""))
    parts.append(f"pose {Path(str(perf.get('pose'))).name}")
    parts += [str(g.get("gesture")) for g in perf.get("gestures") or []]
    if perf.get("au_csv"):
        parts.append(f"AUs {Path(str(perf['au_csv'])).name}")
    return ", ".join(parts)


def plot_expression(sessions: list[dict]) -> str:
    import matplotlib.pyplot as plt

    summary = expression_summary(sessions)
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.2), dpi=100)
    names = list(summary["au_mean"])
    axes[0].bar(names, [summary["au_mean"][n] for n in names], color="#6a8caf")
    axes[0].set_title("mean AU intensity (all frames)")
    axes[0].tick_params(axis="x", rotation=60, labelsize=8)
    shown = [(n, o) for n, o in zip(numbers(sessions), summary["openings"]) if o.size]
    if shown:
        axes[1].boxplot([o for _, o in shown], positions=[int(n) for n, _ in shown], showfliers=False)
    axes[1].set_title("predicted lip gap per session\n(model units)")
    axes[1].set_xlabel("session")
    bpm = summary["blinks_per_minute"]
    pose = summary["pose_std"]
    keys = [k for k in ("yaw", "pitch", "roll") if k in pose]
    axes[2].bar(keys, [float(np.mean(pose[k])) for k in keys], color="#b07aa1", label="head pose std (deg)")
    if bpm:
        axes[2].bar(["blinks/min"], [float(np.mean(bpm))], color="#59a14f")
    axes[2].set_title("head motion and blinks\n(mean over sessions)")
    for ax in axes:
        ax.grid(alpha=0.3)
    return _png(fig)


def plot_feedback(sessions: list[dict], feedback: list[dict], versions: dict | None) -> str:
    import matplotlib.pyplot as plt

    version_of = {s["id"]: (s.get("model") or {}).get("version") or "unversioned" for s in sessions}
    counts: dict[str, Counter] = defaultdict(Counter)
    for f in feedback:
        counts[version_of.get(f.get("session"), "unknown session")][f.get("rating")] += 1
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.2), dpi=100)
    groups = list(counts) or ["none yet"]
    x = np.arange(len(groups))
    axes[0].bar(x - 0.2, [counts[g]["up"] for g in groups], 0.4, color="#59a14f", label="thumbs up")
    axes[0].bar(x + 0.2, [counts[g]["down"] for g in groups], 0.4, color="#e15759", label="thumbs down")
    axes[0].set_xticks(x, groups)
    axes[0].set_title("feedback per model version")
    axes[0].legend(fontsize=8)
    rows = (versions or {}).get("versions") or []
    scored = [v for v in rows if v.get("scores")]
    if scored:
        names = [v["name"] for v in scored]
        for key, marker in (("psnr", "o"), ("ssim", "s")):
            vals = [_num((v["scores"].get("validation") or {}).get(key)) for v in scored]
            if key == "ssim":
                vals = [30 * v for v in vals]
            axes[1].plot(names, vals, marker + "-", label=key if key == "psnr" else "ssim x 30")
        sync = [_num((v["scores"].get("logged_audio") or {}).get("sync_score")) for v in scored]
        if np.isfinite(sync).any():
            ax2 = axes[1].twinx()
            ax2.plot(names, sync, "^-", color="#2ca02c", label="sync on logged audio")
            ax2.set_ylim(-1, 1)
            ax2.legend(fontsize=8, loc="lower right")
        axes[1].legend(fontsize=8, loc="lower left")
        axes[1].set_title("versions on the fixed validation set")
    else:
        axes[1].text(0.5, 0.5, "no versions scored yet (instag refine)", ha="center", va="center")
        axes[1].set_axis_off()
    for ax in axes:
        ax.grid(alpha=0.3)
    return _png(fig)


def _cell(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


def pixel_measures(model_path: Path, sessions: list[dict], log=print) -> dict[str, dict]:
    """Per session id whose video is still on disk: its rendered mouth measured as ``instag evaluate --pred VIDEO
    -S <clip>`` measures it (:func:`instag.metrics.evaluate.lip_report`), or ``{"note": why not}``. Results are kept
    in ``logs/pixels/<id>/measure.json`` with the video's size and time, and measured again when either changes."""
    from instag.metrics.evaluate import lip_report

    out: dict[str, dict] = {}
    for s in sessions:
        video = Path(str(s.get("output") or ""))
        if not s.get("output") or not video.is_file() or not s.get("id"):
            continue
        folder = model_path / "logs" / "pixels" / str(s["id"])
        stat = video.stat()
        key = {"video": str(video), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        try:
            cached = json.loads((folder / "measure.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cached = None
        if isinstance(cached, dict) and cached.get("key") == key:
            out[s["id"]] = cached["measure"]
            continue
        source = (s.get("model") or {}).get("source_path")
        source = source if source and Path(source).is_dir() else None
        log(f"instag report: measuring the mouth in {video}")
        try:
            res = lip_report(video, folder, log=lambda *_: None, progress=False, source_path=source)
            measure = {k: res[k] for k in ("opening_loudness_corr", "closed_in_silence", "silent_frames", "closed_level",
                                            "closed_level_from", "frames_without_face")}
            measure["command"] = f"instag evaluate --pred {video}" + (f" -S {source}" if source else "")
        except InstagError as err:
            measure = {"note": str(err)}
        from instag.io.atomic import write_json

        write_json(folder / "measure.json", {"key": key, "measure": measure})
        out[s["id"]] = measure
    return out


def render_html(model_path: Path, sessions: list[dict], feedback: list[dict], unreadable: int, versions: dict | None,
                pixels: dict[str, dict] | None = None) -> str:
    pixels = pixels or {}
    kinds = Counter(s.get("kind") for s in sessions)
    ratings = Counter(f.get("rating") for f in feedback)
    by_session: dict[str, list[dict]] = defaultdict(list)
    for f in feedback:
        by_session[f.get("session")].append(f)
    scores = _finite((s.get("sync") or {}).get("score") for s in sessions)
    seen = _finite(m.get("closed_in_silence") for m in pixels.values())
    plots = [("Lip sync", plot_sync(sessions, pixels)), ("Latency", plot_latency(sessions)),
             ("Expression use", plot_expression(sessions)), ("Feedback and versions", plot_feedback(sessions, feedback, versions))]
    rows = []
    for number, s in zip(numbers(sessions), sessions):
        audio, lat = s.get("audio") or {}, s.get("latency") or {}
        corr, closed = model_sync(s)
        pix = pixels.get(s.get("id")) or {}
        fb = " ".join(("👍" if f.get("rating") == "up" else "👎") + (f" {html.escape(f['note'])}" if f.get("note") else "")
                      for f in by_session.get(s.get("id"), []))
        pix_title = html.escape(pix.get("note") or pix.get("command") or "no video kept (the served page) or --pixels false",
                                quote=True)
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in (
            int(number), _cell(s.get("started", "")[:19].replace("T", " ")), _cell(s.get("kind")),
            _cell((s.get("model") or {}).get("version")), _cell(audio.get("name")), _cell(audio.get("language")),
            _cell(audio.get("seconds"), 1), _cell(s.get("frames")), _cell(asked(s)), _cell(corr, 2),
            f'<span title="{pix_title}">{_cell(pix.get("opening_loudness_corr"), 2)}</span>', _cell(closed, 2),
            f'<span title="{pix_title}">{_cell(pix.get("closed_in_silence"), 2)}</span>',
            _cell(lat.get("first_frame_ms"), 0), _cell(lat.get("fps"), 1), fb)) + "</tr>")
    notes = [f"<li>{'👍' if f.get('rating') == 'up' else '👎'} {html.escape(f['note'])} "
             f"<span class=dim>({html.escape(str(f.get('time', ''))[:19])}, session {html.escape(str(f.get('session')))})</span></li>"
             for f in feedback if f.get("note")]
    current = (versions or {}).get("current")
    summary = (f"{len(sessions)} sessions ({', '.join(f'{n} {k}' for k, n in kinds.items()) or 'none'}); "
               f"feedback: {ratings.get('up', 0)} up, {ratings.get('down', 0)} down")
    if scores.size:
        summary += f"; median predicted lip gap–loudness correlation (model) {np.median(scores):.2f}"
    if seen.size:
        summary += f"; mouth closed in silence in the rendered videos (pixels): median {np.median(seen):.2f} over {seen.size}"
    if current:
        summary += f"; current version {html.escape(current)}"
    if unreadable:
        summary += f"; {unreadable} unreadable log line(s) skipped (a writer killed mid-line)"
    figures = "\n".join(f'<h2>{html.escape(title)}</h2>\n<img class="plot" alt="{html.escape(title)}" '
                        f'src="data:image/png;base64,{data}">' for title, data in plots)
    head = "".join(f"<th>{h}</th>" for h in SESSION_COLUMNS)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>instag: sessions of {html.escape(model_path.name)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 20px auto; max-width: 1100px; color: #222; }}
img.plot {{ max-width: 100%; border: 1px solid #ddd; }}
table {{ border-collapse: collapse; font-size: 12px; }} td, th {{ border: 1px solid #ddd; padding: 3px 6px; }}
th {{ background: #f2f2f2; }} .dim {{ color: #777; }}
</style></head><body>
<h1>Sessions of {html.escape(str(model_path))}</h1>
<p>{summary}</p>
<p class=dim>Two measures of lip sync. <b>Pixels</b>: the mouth a viewer sees, measured in the session's video as
<code>instag evaluate --pred VIDEO -S &lt;clip&gt;</code> measures it (MediaPipe inner-lip gap; closed below the
person's closed-mouth level from the clip's tracked frames); only where the video is still on disk. <b>Model</b>: the
lip gap the model predicts for each frame, in its own units, with its closed level taken from the session's own gaps:
it can say closed where the rendered lips stay apart. Correlation: with the speech's loudness, best lag within
±5 frames; closed in silence: share of the speech's pauses with the mouth closed. Latency: for streams and the page,
from the arrival of the audio that completes a frame to the frame being ready; for offline synthesis, the time
spent producing it. Sessions are numbered from 1 in the order logged, in the charts as in the table.</p>
{figures}
<h2>Sessions</h2>
<table><tr>{head}</tr>
{''.join(rows) or f'<tr><td colspan={len(SESSION_COLUMNS)}>no sessions logged yet</td></tr>'}
</table>
<h2>Notes</h2>
<ul>{''.join(notes) or '<li class=dim>no notes yet</li>'}</ul>
</body></html>
"""


SESSION_COLUMNS = ("#", "started (UTC)", "kind", "version", "audio", "language", "s", "frames", "asked (expression, blink, pose)",
                   "lip gap–loudness corr (model)", "opening–loudness corr (pixels)",
                   "predicted lip gap closed in silence (model)", "closed in silence (pixels)", "first frame ms", "FPS",
                   "feedback")


def write_report(model_path: str | Path, out: str | Path | None = None, pixels: bool = True, log=print) -> Path:
    from instag.infer.sessionlog import log_path, read_records
    from instag.io.atomic import write_text

    model_path = Path(model_path)
    if not model_path.is_dir():
        raise InstagError(f"model folder {model_path} does not exist")
    records, unreadable = read_records(model_path)
    if not records and not log_path(model_path).exists():
        raise InstagError(f"{log_path(model_path)} does not exist: nothing logged yet; run instag synthesize, stream or serve "
                          f"with -M {model_path} first")
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
    except ImportError as err:
        raise InstagError("instag report needs matplotlib (pip install matplotlib)") from err
    sessions = [r for r in records if r["type"] == "session"]
    feedback = [r for r in records if r["type"] == "feedback"]
    versions = None
    registry = model_path / "versions" / "versions.json"
    if registry.exists():
        try:
            versions = json.loads(registry.read_text(encoding="utf-8"))
        except ValueError:
            versions = None
    measured = pixel_measures(model_path, sessions, log) if pixels else {}
    out = Path(out) if out else log_path(model_path).with_name("report.html")
    write_text(out, render_html(model_path, sessions, feedback, unreadable, versions, measured))
    return out


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):  # instag report output/<ID>
        args = ["--model_path", *args]
    cfg = parse(ReportConfig, args, prog="instag report")
    if cfg.out:
        from instag.io.atomic import check_output

        check_output(cfg.out, "--out", (".html", ".htm"))
    out = write_report(cfg.model_path, cfg.out, cfg.pixels)
    print(f"instag report: wrote {out}", file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
