"""``instag process``: one video into ``data/<ID>/`` (:func:`instag.preprocess.pipeline.run`), or with
``instag process <folder of videos> --out data/pretrain`` every video of a folder into ``<out>/<name>/``.

Several processes share the videos: ``--workers N`` starts N, or torchrun starts them
(``torchrun --nproc_per_node N -m instag process data/videos --out data/pretrain``, each process one
worker). The assignment is fixed and computed alike by every worker (largest video first, each to the
worker with the fewest bytes so far), so each video is processed once, by one worker; a worker uses GPU
``worker % GPUs`` when there are GPUs (the audio features run there).

Each video runs the one-video pipeline (:func:`instag.preprocess.pipeline.run`), which resumes per step
from ``meta.json`` and holds the output folder's lock: the same command run again after a kill finishes
what was left and skips what is done, and a second command on the same folders refuses the videos in use.
A video that fails is reported and the others go on; the command then exits with status 2. With several
workers each video's own output goes to ``<out>/process_logs/<name>.log`` and the console gets a line per video.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import sys
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

from instag.errors import InstagError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".m4v")
LOG_DIR = "process_logs"
THREADS_PER_WORKER = 2  # the per-frame steps' threads (instag.preprocess.workers)


def find_videos(folder: Path) -> list[Path]:
    """The videos directly in ``folder``, by name."""
    videos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise InstagError(f"no videos in {folder} (looked for {', '.join(VIDEO_SUFFIXES)}); give a folder of talking-head "
                          "videos or one video")
    return videos


def plan(videos: list[Path], out: Path) -> list[tuple[Path, Path]]:
    """``(video, output folder)`` pairs: ``<out>/<video name without suffix>/``; two videos of one name are refused."""
    by_name: dict[str, Path] = {}
    for v in videos:
        if v.stem in by_name:
            raise InstagError(f"{by_name[v.stem]} and {v} would both be processed into {out / v.stem}; rename one")
        by_name[v.stem] = v
    return [(v, out / v.stem) for v in videos]


def shares(sizes: list[int], workers: int) -> list[list[int]]:
    """Indices of ``sizes`` for each of ``workers``: largest first, each to the worker with the least so far
    (ties: the lower worker, then the lower index), so the same input gives every worker the same answer."""
    load = [0] * workers
    out: list[list[int]] = [[] for _ in range(workers)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        k = min(range(workers), key=lambda k: (load[k], k))
        out[k].append(i)
        load[k] += sizes[i]
    return out


def auto_workers(jobs: int) -> int:
    """One worker per two cores (each runs its per-frame steps on two threads), at most one per video."""
    return max(1, min(jobs, (os.cpu_count() or 1) // THREADS_PER_WORKER))


# ------------------------------------------------------------------------------------------ one worker
def _use_gpu(worker: int) -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(worker % torch.cuda.device_count())


def process_one(cfg, video: Path, folder: Path, log_file: Path | None) -> dict:
    """Run the pipeline for one video; a result record, never an exception (but Ctrl-C / SIGTERM)."""
    from instag.data.format import DatasetLayout
    from instag.preprocess.pipeline import load_meta, run

    before = load_meta(DatasetLayout.of(folder)).get("steps", {})
    record = {"video": str(video), "out": str(folder), "ok": False, "error": None, "ran": [], "frames": 0}
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            fh = stack.enter_context(open(log_file, "a", encoding="utf-8"))
            stack.enter_context(contextlib.redirect_stdout(fh))
            stack.enter_context(contextlib.redirect_stderr(fh))
        try:
            meta = run(replace(cfg, path=str(video), out=str(folder), workers=1))
            record.update(ok=True, frames=int(meta.get("num_frames", 0)),
                          ran=[name for name, rec in meta.get("steps", {}).items() if before.get(name) != rec])
        except InstagError as err:
            record["error"] = str(err)
        except Exception as err:  # one bad video must not stop the others; its log keeps the traceback
            if log_file is not None:
                traceback.print_exc()
            record["error"] = f"internal error: {type(err).__name__}: {' '.join(str(err).split())}"
    record["seconds"] = round(time.perf_counter() - t0, 1)
    return record


def _worker(worker: int, cfg_fields: dict, jobs: list[tuple[str, str]], logs: str | None, results) -> None:
    """A spawned worker: its share of the videos, one result each onto ``results``."""
    from instag.preprocess.pipeline import ProcessConfig

    def terminate(signum, frame):  # like Ctrl-C, so that a stopped video's folder is put back
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, terminate)
    _use_gpu(worker)
    cfg = ProcessConfig(**cfg_fields)
    try:
        for video, folder in jobs:
            log_file = Path(logs) / f"{Path(folder).name}.log" if logs else None
            results.put((worker, process_one(cfg, Path(video), Path(folder), log_file)))
    except KeyboardInterrupt:
        sys.exit(130)


# ------------------------------------------------------------------------------------------ the command
def run_batch(cfg) -> int:
    """``instag process FOLDER``: returns the exit status (0: every video processed, 2: some failed)."""
    folder = Path(cfg.path)
    out = Path(cfg.out) if cfg.out else folder
    jobs = plan(find_videos(folder), out)
    sizes = [v.stat().st_size for v, _ in jobs]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if cfg.workers > 1:
            raise InstagError("--workers: under torchrun every process is one worker; set their number with "
                              "torchrun's --nproc_per_node")
        return _torchrun_worker(cfg, jobs, sizes, out)
    workers = cfg.workers if cfg.workers > 0 else auto_workers(len(jobs))
    workers = min(workers, len(jobs))
    print(f"instag process: {len(jobs)} videos in {folder} -> {out}/<name>/, {workers} worker(s)", flush=True)
    if workers == 1:
        records = []
        for k, (video, target) in enumerate(jobs, 1):
            print(f"instag process: [{k}/{len(jobs)}] {video} -> {target}", flush=True)
            records.append(_report(process_one(cfg, video, target, None), k, len(jobs)))
        return _summary(records)
    return _summary(_spawn(cfg, jobs, shares(sizes, workers), out / LOG_DIR))


def _torchrun_worker(cfg, jobs: list[tuple[Path, Path]], sizes: list[int], out: Path) -> int:
    """One of the processes torchrun started: its share, then every process waits for the others (a process that
    ends with a failure status would make torchrun stop the rest) and all end with the same status."""
    from datetime import timedelta

    import torch.distributed as dist

    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # one share may take hours longer than another: the gloo group waits that long for the final exchange
    dist.init_process_group("gloo", rank=rank, world_size=size, timeout=timedelta(days=7))
    try:
        _use_gpu(int(os.environ.get("LOCAL_RANK", rank)))
        mine = [jobs[i] for i in shares(sizes, size)[rank]]
        print(f"instag process: worker {rank + 1}/{size}: {len(mine)} of {len(jobs)} videos", flush=True)
        records = [_report(process_one(cfg, v, f, out / LOG_DIR / f"{f.name}.log"), k, len(mine))
                   for k, (v, f) in enumerate(mine, 1)]
        every: list = [None] * size
        dist.all_gather_object(every, records)
    finally:
        dist.destroy_process_group()
    records = [r for part in every for r in part]
    if rank > 0:
        return 2 if any(not r["ok"] for r in records) else 0
    return _summary(records)


def _spawn(cfg, jobs: list[tuple[Path, Path]], split: list[list[int]], logs: Path) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")  # no fork: MediaPipe and torch threads do not survive it
    results = ctx.Queue()
    fields = asdict(cfg)
    procs = [ctx.Process(target=_worker, args=(k, fields, [(str(jobs[i][0]), str(jobs[i][1])) for i in idx], str(logs), results))
             for k, idx in enumerate(split)]
    print(f"instag process: each video's output goes to {logs}/<name>.log", flush=True)
    for p in procs:
        p.start()
    records: list[dict] = []
    pending = {k: [str(jobs[i][0]) for i in idx] for k, idx in enumerate(split)}
    try:
        while any(pending.values()):
            try:
                worker, record = results.get(timeout=1.0)
            except queue.Empty:
                for k, p in enumerate(procs):  # a worker that died (e.g. a crash in native code) leaves its videos
                    if pending[k] and not p.is_alive() and results.empty():
                        for video in pending.pop(k):
                            records.append(_report({"video": video, "ok": False, "error": f"worker {k + 1} died "
                                                    f"(exit code {p.exitcode}) before processing it"}, len(records) + 1, len(jobs)))
                        pending[k] = []
                continue
            pending[worker].remove(record["video"])
            records.append(_report(record, len(records) + 1, len(jobs)))
    except BaseException:
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker's current video is put back as it was
        for p in procs:
            p.join(30)
        raise
    for p in procs:
        p.join()
    return records


def _report(record: dict, k: int, total: int) -> dict:
    head = f"instag process: [{k}/{total}] {record['video']}"
    if not record["ok"]:
        print(f"{head}: failed: {record['error']}", flush=True)
    else:
        what = "already processed" if not record["ran"] else f"{record['frames']} frames ({', '.join(record['ran'])})"
        print(f"{head} -> {record['out']}: {what}, {record['seconds']:.0f} s", flush=True)
    return record


def _summary(records: list[dict], prefix: str = "") -> int:
    failed = [r for r in records if not r["ok"]]
    print(f"instag process: {prefix}{len(records) - len(failed)} of {len(records)} videos processed"
          + (f"; failed: {', '.join(Path(r['video']).name for r in failed)} (run the same command again to retry "
             "them; the others are skipped)" if failed else ""), flush=True)
    return 2 if failed else 0


def _positional(argv: list[str] | None) -> list[str]:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):
        return ["--path", *args]
    return args


def main(argv: list[str] | None = None) -> int:
    """``instag process VIDEO`` or ``instag process FOLDER``."""
    from instag.config import parse
    from instag.preprocess.pipeline import ProcessConfig, run

    cfg = parse(ProcessConfig, _positional(argv), prog="instag process")
    if Path(cfg.path).is_dir():
        return run_batch(cfg)
    meta = run(cfg)
    steps = meta.get("steps", {})
    total = sum(s.get("seconds", 0.0) for s in steps.values())
    print(f"instag process: {meta.get('num_frames', 0)} frames ready in {Path(cfg.out or Path(cfg.path).parent)} "
          f"({total:.1f} s of steps)")
    return 0
