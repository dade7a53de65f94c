"""Native libraries' log noise kept off the terminal (``instag <command> --debug`` shows it).

MediaPipe and TFLite write INFO and WARNING lines straight to file descriptor 2, some from their own
threads while frames are processed (``W0000 ... inference_feedback_manager.cc:114] ...``, ``Using
NORM_RECT without IMAGE_DIMENSIONS ...``, ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.``),
and ``GLOG_minloglevel`` does not reach them: MediaPipe 0.10 logs through absl.
:func:`filter_native_stderr` points descriptor 2 at a pipe whose reader thread drops those lines and
passes every other line on (errors, fatal messages, anything unknown), while Python's own
``sys.stderr`` (progress bars, warnings, our error line) keeps writing to the terminal directly.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

# absl/glog INFO and WARNING lines ("W0000 00:00:1796451451.301107   9850 file.cc:114] text"), TFLite's
# delegate notice and absl's note about logging before InitializeLog
NOISE = re.compile(
    rb"^(?:[IW]\d{4} [\d:.]+ +\d+ [^\]\s]+:\d+\] "
    rb"|INFO: Created TensorFlow Lite \w+ delegate"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR)"
)


def _forward(pipe: int, terminal: int) -> None:
    """Copy the lines arriving on ``pipe`` to ``terminal``, without the noise, until every writer has closed it."""
    with os.fdopen(pipe, "rb") as lines, os.fdopen(terminal, "wb", buffering=0) as out:
        for line in lines:
            if not NOISE.match(line):
                with contextlib.suppress(OSError):  # keep draining: a full pipe would block the writers
                    out.write(line)


@contextlib.contextmanager
def filter_native_stderr() -> Iterator[None]:
    """Within the block, native code's stderr lines are filtered (:data:`NOISE` dropped); Python's are not."""
    sys.stderr.flush()
    terminal = os.dup(2)
    pipe_read, pipe_write = os.pipe()
    reader = threading.Thread(target=_forward, args=(pipe_read, os.dup(terminal)), name="native-stderr", daemon=True)
    reader.start()
    python_stderr = sys.stderr
    # left open on exit: a progress bar an error left behind still writes to it when it is closed
    sys.stderr = os.fdopen(os.dup(terminal), "w", buffering=1, encoding=python_stderr.encoding, errors=python_stderr.errors)
    os.dup2(pipe_write, 2)
    os.close(pipe_write)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)  # the pipe's last writer (unless a child process still holds it): the reader ends
        os.close(terminal)
        sys.stderr = python_stderr
        reader.join(timeout=2.0)
