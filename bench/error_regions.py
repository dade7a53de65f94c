"""Where an adapted model's image error lies: squared error per parsing region (face, hair, mouth, rest).

    python bench/error_regions.py -S data/<ID> -M output/<ID> [--split val|train] [--N_views 250] [--every 10]

Renders every ``--every``-th frame of the split the way ``instag evaluate`` does (synthesis path, mouth alpha
dilated unless ``--no_dilate``), compares with ``gt_imgs`` in RGB [0,255] and sums the squared error inside each
region of the clip's own parsing masks (face skin and lips, hair, inside of the mouth, everything else: torso and
background). Prints, per region, its share of the total squared error, its share of the pixels and its mean
squared error, plus the PSNR of the frames used; several models / splits may be given as ``-M a -M b``. A region
that holds much more of the error than of the pixels is where quality is lost; the same figures on the training
split tell underfitting (as bad on the frames the model saw) from a generalisation gap. Runs on the CPU (reference
rasterizer) or the GPU. Writes JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _synthetic import RESULTS, table  # noqa: E402

from instag.errors import InstagError  # noqa: E402
from instag.io.atomic import write_json  # noqa: E402

REGIONS = ("face", "hair", "mouth", "rest")


def region_masks(masks: np.ndarray) -> dict[str, np.ndarray]:
    """Parsing mask bits ``[H,W]`` -> one boolean mask per region; the regions cover every pixel once."""
    from instag.data.dataset import FACE, HAIR, MOUTH

    mouth = (masks & MOUTH) > 0
    hair = ((masks & HAIR) > 0) & ~mouth
    face = ((masks & FACE) > 0) & ~mouth & ~hair
    return {"face": face, "hair": hair, "mouth": mouth, "rest": ~(face | hair | mouth)}


def error_by_region(source: str, model_path: str, split: str, n_views: int, every: int, dilate: bool,
                    device: str | None) -> dict:
    from instag.data.dataset import read_masks, resize_to
    from instag.infer.synthesize import Backgrounds, render_frames
    from instag.metrics.evaluate import load_split, read_ground_truth

    layout, model, plan, items = load_split(source, model_path, split, n_views, device)
    backgrounds = Backgrounds(layout, (plan.cameras[0].height, plan.cameras[0].width))
    sums = {r: 0.0 for r in REGIONS}
    counts = {r: 0 for r in REGIONS}
    used = 0
    try:
        for k in range(0, len(plan), max(1, every)):
            pred = next(render_frames(model, plan, items, backgrounds, dilate, batch=1, start=k, stop=k + 1))
            index = int(plan.background_index[k])
            gt = read_ground_truth(layout, index, pred.shape[:2])[:, :, ::-1].astype(np.float64)
            masks = resize_to(read_masks(layout, index), pred.shape[:2], nearest=True)
            se = ((pred.astype(np.float64) - gt) ** 2).mean(-1)
            for name, m in region_masks(masks).items():
                sums[name] += float(se[m].sum())
                counts[name] += int(m.sum())
            used += 1
    finally:
        backgrounds.close()
    total, pixels = sum(sums.values()), sum(counts.values())
    mse = total / max(1, pixels)
    rows = [{"model": str(model_path), "split": split, "region": r, "error_share": sums[r] / total if total else 0.0,
             "pixel_share": counts[r] / max(1, pixels), "mse": sums[r] / max(1, counts[r])} for r in REGIONS]
    return {"model": str(model_path), "source": str(layout.root), "split": split, "frames": used,
            "psnr": float(10 * np.log10(255.0 ** 2 / mse)) if mse > 0 else float("inf"), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-S", "--source_path", required=True, help="processed clip data/<ID>")
    ap.add_argument("-M", "--model_path", action="append", required=True, help="adapted model output/<ID> (repeatable)")
    ap.add_argument("--split", nargs="+", default=["val"], choices=["val", "train"])
    ap.add_argument("--N_views", type=int, default=-1, help="with --split train: the first N training frames")
    ap.add_argument("--every", type=int, default=10, help="use every k-th frame")
    ap.add_argument("--no_dilate", action="store_true", help="composite without dilating the mouth alpha")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=str(RESULTS / "error_regions.json"))
    args = ap.parse_args(argv)
    results = []
    try:
        for model in args.model_path:
            for split in args.split:
                results.append(error_by_region(args.source_path, model, split, args.N_views, args.every,
                                               not args.no_dilate, args.device))
    except InstagError as err:
        print(f"bench/error_regions.py: {err}", file=sys.stderr)
        return 1
    rows = [{**r, "psnr": res["psnr"], "frames": res["frames"]} for res in results for r in res["rows"]]
    print(table(rows, ["model", "split", "frames", "psnr", "region", "error_share", "pixel_share", "mse"]))
    write_json(Path(args.out), {"results": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
