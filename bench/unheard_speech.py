"""Lip sync on speech the model never heard (DESIGN §4: opening-loudness correlation >= 0.4, closed_in_silence).

    python bench/unheard_speech.py RUN [RUN ...] [--audio EN.wav DE.wav ZH.wav] [--pauses true|false] [--out ...]

A RUN is ``data/<ID>=output/<ID>`` (the processed clip and its adapted model). Each model is driven by each wav
through ``instag synthesize``'s path; the rendered mp4 then goes through ``instag evaluate --pred``'s report
(:func:`instag.metrics.evaluate.lip_report`): the mouth opening of every frame against the loudness of the
speech (Pearson, best lag within +-5 frames), and closed_in_silence, the share of the speech's silent frames
(:mod:`instag.audio.activity`) in which the mouth is below the person's closed-mouth level (from the clip's
landmarks), and the spread of the opening (its standard deviation) over the person's own on the clip's training
frames (``spread_vs_own``, bar 0.7-1.3). Defaults: the shared English, German and Mandarin wavs. ``--pauses`` sets synthesis's pause
handling (default: synthesis's own), to show what it does. Needs a GPU for real models; prints a table and
writes JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _synthetic import RESULTS, device_name, table  # noqa: E402

from instag.errors import InstagError  # noqa: E402
from instag.io.atomic import write_json  # noqa: E402

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "audio"
DEFAULT_AUDIO = [SPEECH / n for n in ("synctalk_test_en.wav", "sadtalker_deyu_de.wav", "sadtalker_chinese_news_zh.wav")]


def person_spread(source: str) -> float:
    """Standard deviation of the person's own mouth opening over the clip's training frames (DESIGN §4's reference
    for the spread of a synthesized mouth)."""
    import json

    import numpy as np

    from instag.data.format import DatasetLayout
    from instag.io.safe_load import load_npy
    from instag.metrics.lips import mouth_opening

    layout = DatasetLayout.of(source)
    lms = load_npy(layout.landmarks, "rerun the landmark step (instag process --task landmarks)")
    opening = np.asarray(mouth_opening(lms), np.float64)
    frames = json.loads(layout.transforms("train").read_text())["frames"]
    ids = [int(f["img_id"]) for f in frames if int(f["img_id"]) < len(opening)]
    return float(np.nanstd(opening[ids]))


def main(argv: list[str] | None = None) -> int:
    from instag.infer.synthesize import SynthesizeConfig, synthesize
    from instag.metrics.evaluate import lip_report

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="data/<ID>=output/<ID>")
    ap.add_argument("--audio", nargs="+", default=[str(p) for p in DEFAULT_AUDIO])
    ap.add_argument("--pauses", choices=("true", "false"), default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=str(RESULTS / "unheard_speech.json"))
    args = ap.parse_args(argv)
    rows = []
    try:
        for run in args.runs:
            if "=" not in run:
                raise InstagError(f"{run!r}: give each run as data/<ID>=output/<ID>")
            source, model = run.split("=", 1)
            own = person_spread(source)
            for wav in args.audio:
                out = Path(model) / "inference" / "unheard" / f"{Path(wav).stem}.mp4"
                cfg = SynthesizeConfig(source_path=source, model_path=model, audio=wav, output=str(out), dilate=True,
                                       device=args.device, quiet=True,
                                       pauses=None if args.pauses is None else args.pauses == "true")
                t0 = time.perf_counter()
                synthesize(cfg, log=lambda *a: None)
                seconds = time.perf_counter() - t0
                report = lip_report(out, out.parent, log=lambda *a: None, progress=False, source_path=source)
                rows.append({"model": Path(model).name, "audio": Path(wav).stem, "frames": report["frames"],
                             "opening_loudness_corr": report["opening_loudness_corr"],
                             "lag": report["opening_loudness_lag_frames"], "closed_in_silence": report["closed_in_silence"],
                             "silent_frames": report["silent_frames"], "opening_std": report["mouth_opening_std"],
                             "spread_vs_own": report["mouth_opening_std"] / own if own > 0 else float("nan"),
                             "synth_s": seconds})
                print(f"{rows[-1]['model']} / {rows[-1]['audio']}: corr {report['opening_loudness_corr']:.2f}, closed in "
                      f"silence {report['closed_in_silence']:.2f}", flush=True)
    except InstagError as err:
        print(f"bench/unheard_speech.py: {err}", file=sys.stderr)
        return 1
    print(table(rows, ["model", "audio", "frames", "opening_loudness_corr", "lag", "closed_in_silence", "silent_frames",
                       "opening_std", "spread_vs_own", "synth_s"]))
    write_json(Path(args.out), {"device": device_name(), "pauses": args.pauses, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
