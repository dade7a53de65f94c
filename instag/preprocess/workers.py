"""Per-frame work on a few threads.

The per-frame steps spend their time in OpenCV, MediaPipe, numpy and torch kernels, which
release the GIL, so plain threads use both cores of a small machine without the start-up cost
(and fork hazards) of worker processes. Each thread gets its own state (e.g. a MediaPipe graph).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tqdm import tqdm

WORKERS = max(1, min(2, os.cpu_count() or 1))


def for_each_frame(num_frames: int, work: Callable[[int, Any], None], desc: str, init: Callable[[], Any] | None = None,
                   close: Callable[[Any], None] | None = None, workers: int = WORKERS) -> None:
    """Call ``work(i, state)`` for every frame index, on ``workers`` threads with one ``state = init()`` each."""
    bar = tqdm(total=num_frames, desc=desc, unit="frame", leave=False)
    lock = threading.Lock()
    workers = max(1, min(workers, num_frames))
    bounds = [round(k * num_frames / workers) for k in range(workers + 1)]

    def chunk(k: int) -> None:
        state = init() if init is not None else None
        try:
            for i in range(bounds[k], bounds[k + 1]):
                work(i, state)
                with lock:
                    bar.update(1)
        finally:
            if close is not None and state is not None:
                close(state)

    try:
        if workers == 1:
            chunk(0)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for future in [pool.submit(chunk, k) for k in range(workers)]:
                    future.result()
    finally:
        bar.close()
