"""Frames to look at, as a viewer would: for each synthesized video, three frames in its pauses and three at its
loudest speech, side by side in one PNG (``look_<model>_<video>.png``), with the frame number, whether the sound is
silent there, and the mouth opening MediaPipe measures on the frame.

    python bench/look_frames.py VIDEO.mp4 [VIDEO.mp4 ...] [--out DIR]

The model's name is the folder above ``inference/``. Prints one line per video and writes JSON beside the PNGs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from instag.io.atomic import write_json  # noqa: E402

TILE = 256
PER_KIND = 3


def pick(silent: np.ndarray, level: np.ndarray) -> dict[str, list[int]]:
    """Frames deep inside pauses (the middle of the longest silent runs) and the loudest frames, ``PER_KIND`` each."""
    runs, start = [], None
    for i, s in enumerate(np.append(silent, False)):
        if s and start is None:
            start = i
        elif not s and start is not None:
            runs.append((i - start, (start + i) // 2))
            start = None
    pauses = [mid for _, mid in sorted(runs, reverse=True)[:PER_KIND]]
    loud = [int(i) for i in np.argsort(-level) if not silent[i]]
    chosen: list[int] = []
    for i in loud:
        if all(abs(i - j) > 10 for j in chosen):
            chosen.append(i)
        if len(chosen) == PER_KIND:
            break
    return {"pause": sorted(pauses), "loud": sorted(chosen)}


def main(argv: list[str] | None = None) -> int:
    from instag.audio.activity import frame_levels_db, silent_frames
    from instag.io.video import iter_frames, probe, read_audio
    from instag.metrics.lips import mouth_opening
    from instag.preprocess.landmarks import FaceMeshDetector

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("videos", nargs="+")
    ap.add_argument("--out", default=".")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    detector = FaceMeshDetector(video=False, max_faces=1)
    report = {}
    for video in args.videos:
        info = probe(video, require_audio=True)
        frames = [f for f in iter_frames(info)]
        sound = read_audio(video)
        silent = silent_frames(sound, len(frames))
        level = frame_levels_db(sound, 0, len(frames))
        chosen = pick(silent, level)
        tiles, facts = [], []
        for kind, ids in chosen.items():
            for i in ids:
                bgr = frames[i]
                lm = detector.detect(bgr)
                opening = float(mouth_opening(lm)) if lm is not None else float("nan")
                tile = cv2.resize(bgr, (TILE, TILE * bgr.shape[0] // bgr.shape[1]))
                cv2.putText(tile, f"{kind} #{i} open {opening:.3f}", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                            (255, 255, 255), 1, cv2.LINE_AA)
                tiles.append(tile)
                facts.append({"kind": kind, "frame": i, "silent": bool(silent[i]), "level_db": float(level[i]),
                              "opening": opening})
        name = f"look_{Path(video).parents[2].name}_{Path(video).stem}"
        if tiles:
            cv2.imwrite(str(out / f"{name}.png"), np.hstack(tiles))
        report[name] = facts
        print(name, " ".join(f"{f['kind']}#{f['frame']}:{f['opening']:.3f}" for f in facts))
    detector.close()
    write_json(out / "look_frames.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
