"""``instag report output/<ID>``: the interaction logs (:mod:`instag.infer.sessionlog`) as one self-contained HTML page.

Plots (matplotlib, inline PNG): the sync score and closed_in_silence of every session in order, coloured by kind
and with the model version changes marked; latency (first frame and the 95th percentile per frame) and frames per
second; expression use (mean AU intensities, blinks per minute, the spread of mouth opening and head pose); the
feedback (thumbs up and down per version) and the versions' scores when ``instag refine`` has scored any. Tables:
every session with its feedback, and the notes people left. The page is written to ``<model>/logs/report.html``
(or ``--out``) and needs nothing else to open.
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


def _version_marks(ax, sessions: list[dict]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # sessions are counted
    last = None
    for k, s in enumerate(sessions):
        version = (s.get("model") or {}).get("version")
        if version != last and version is not None:
            ax.axvline(k, color="#999", lw=0.8, ls="--")
            ax.text(k, ax.get_ylim()[1], f" {version}", va="top", fontsize=8, color="#555")
        last = version


def plot_sync(sessions: list[dict]) -> str:
    fig, ax = _figure()
    x = np.arange(len(sessions))
    score = np.array([_num((s.get("sync") or {}).get("score")) for s in sessions])
    closed = np.array([_num((s.get("sync") or {}).get("closed_in_silence")) for s in sessions])
    for kind, colour in KIND_COLOURS.items():
        mask = np.array([s.get("kind") == kind for s in sessions], bool)
        if mask.any():
            ax.plot(x[mask], score[mask], "o", color=colour, label=f"sync score ({kind})")
    if np.isfinite(closed).any():
        ax.plot(x, closed, "s", mfc="none", color="#777", label="closed_in_silence")
    if np.isfinite(score).sum() >= 2:
        ax.plot(x, score, "-", color="#bbb", lw=0.8, zorder=0)
    ax.axhline(0.4, color="#c33", lw=0.8, ls=":", label="bar for new speech (0.4)")
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("session (in order)")
    ax.set_ylabel("score")
    ax.set_title("Lip sync per session: opening-loudness correlation")
    _version_marks(ax, sessions)
    ax.legend(fontsize=8, loc="lower left")
    return _png(fig)


def plot_latency(sessions: list[dict]) -> str:
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7.5, 4.6), dpi=100, sharex=True)
    x = np.arange(len(sessions))
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
    ax2.set_xlabel("session (in order)")
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


def plot_expression(sessions: list[dict]) -> str:
    import matplotlib.pyplot as plt

    summary = expression_summary(sessions)
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.2), dpi=100)
    names = list(summary["au_mean"])
    axes[0].bar(names, [summary["au_mean"][n] for n in names], color="#6a8caf")
    axes[0].set_title("mean AU intensity (all frames)")
    axes[0].tick_params(axis="x", rotation=60, labelsize=8)
    openings = [o for o in summary["openings"] if o.size]
    if openings:
        axes[1].boxplot(openings, showfliers=False)
    axes[1].set_title("mouth opening per session")
    axes[1].set_xlabel("session")
    bpm = summary["blinks_per_minute"]
    pose = summary["pose_std"]
    keys = [k for k in ("yaw", "pitch", "roll") if k in pose]
    axes[2].bar(keys, [float(np.mean(pose[k])) for k in keys], color="#b07aa1", label="head pose std (deg)")
    if bpm:
        axes[2].bar(["blinks/min"], [float(np.mean(bpm))], color="#59a14f")
    axes[2].set_title("head motion and blinks (mean over sessions)")
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


def render_html(model_path: Path, sessions: list[dict], feedback: list[dict], unreadable: int, versions: dict | None) -> str:
    kinds = Counter(s.get("kind") for s in sessions)
    ratings = Counter(f.get("rating") for f in feedback)
    by_session: dict[str, list[dict]] = defaultdict(list)
    for f in feedback:
        by_session[f.get("session")].append(f)
    scores = _finite((s.get("sync") or {}).get("score") for s in sessions)
    plots = [("Lip sync", plot_sync(sessions)), ("Latency", plot_latency(sessions)),
             ("Expression use", plot_expression(sessions)), ("Feedback and versions", plot_feedback(sessions, feedback, versions))]
    rows = []
    for s in sessions:
        audio, sync, lat = s.get("audio") or {}, s.get("sync") or {}, s.get("latency") or {}
        fb = " ".join(("👍" if f.get("rating") == "up" else "👎") + (f" {html.escape(f['note'])}" if f.get("note") else "")
                      for f in by_session.get(s.get("id"), []))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in (
            _cell(s.get("started", "")[:19].replace("T", " ")), _cell(s.get("kind")), _cell((s.get("model") or {}).get("version")),
            _cell(audio.get("name")), _cell(audio.get("language")), _cell(audio.get("seconds"), 1), _cell(s.get("frames")),
            _cell(sync.get("score"), 2), _cell(sync.get("closed_in_silence"), 2), _cell(lat.get("first_frame_ms"), 0),
            _cell(lat.get("fps"), 1), fb)) + "</tr>")
    notes = [f"<li>{'👍' if f.get('rating') == 'up' else '👎'} {html.escape(f['note'])} "
             f"<span class=dim>({html.escape(str(f.get('time', ''))[:19])}, session {html.escape(str(f.get('session')))})</span></li>"
             for f in feedback if f.get("note")]
    current = (versions or {}).get("current")
    summary = (f"{len(sessions)} sessions ({', '.join(f'{n} {k}' for k, n in kinds.items()) or 'none'}); "
               f"feedback: {ratings.get('up', 0)} up, {ratings.get('down', 0)} down; "
               f"median sync score {np.median(scores):.2f}" if scores.size else
               f"{len(sessions)} sessions; feedback: {ratings.get('up', 0)} up, {ratings.get('down', 0)} down")
    if current:
        summary += f"; current version {html.escape(current)}"
    if unreadable:
        summary += f"; {unreadable} unreadable log line(s) skipped (a writer killed mid-line)"
    figures = "\n".join(f'<h2>{html.escape(title)}</h2>\n<img class="plot" alt="{html.escape(title)}" '
                        f'src="data:image/png;base64,{data}">' for title, data in plots)
    head = "".join(f"<th>{h}</th>" for h in ("started (UTC)", "kind", "version", "audio", "language", "s", "frames",
                                              "sync", "closed in silence", "first frame ms", "FPS", "feedback"))
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
<p class=dim>Sync score: correlation of the model's predicted lip opening with the speech's loudness (best lag within
±5 frames); closed_in_silence: share of the speech's pauses with the mouth closed. Latency: for streams and the page,
from the arrival of the audio that completes a frame to the frame being ready; for offline synthesis, the time
spent producing it.</p>
{figures}
<h2>Sessions</h2>
<table><tr>{head}</tr>
{''.join(rows) or '<tr><td colspan=12>no sessions logged yet</td></tr>'}
</table>
<h2>Notes</h2>
<ul>{''.join(notes) or '<li class=dim>no notes yet</li>'}</ul>
</body></html>
"""


def write_report(model_path: str | Path, out: str | Path | None = None) -> Path:
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
    out = Path(out) if out else log_path(model_path).with_name("report.html")
    write_text(out, render_html(model_path, sessions, feedback, unreadable, versions))
    return out


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):  # instag report output/<ID>
        args = ["--model_path", *args]
    cfg = parse(ReportConfig, args, prog="instag report")
    if cfg.out:
        from instag.io.atomic import check_output

        check_output(cfg.out, "--out", (".html", ".htm"))
    out = write_report(cfg.model_path, cfg.out)
    print(f"instag report: wrote {out}", file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
