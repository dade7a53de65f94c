"""``instag`` command: one front for every stage.

Each subcommand is a ``main(argv)`` function in the package that parses its own typed
config (:mod:`instag.config`). The upstream-named entry points (``data_utils/*.py``,
``scripts/*.sh``, ``synthesize_fuse.py``) call :func:`main` with the matching subcommand.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys

# subcommand -> (module, function, one-line description)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "process": ("instag.preprocess.batch", "main", "preprocess a talking-head video into data/<ID>/"),
    "split": ("instag.preprocess.split", "main", "keep the last 12 s of a processed clip for evaluation"),
    "features": ("instag.audio.cli", "main", "extract audio features from a wav (whisper, mel, deepspeech, esperanto, hubert, ave)"),
    "export-whisper": ("instag.audio.cli", "export_whisper_main", "write the Whisper encoder alone (for machines without its wheels)"),
    "teeth": ("instag.preprocess.easyportrait", "main", "teeth masks with EasyPortrait weights (optional upstream tool)"),
    "sapiens": ("instag.preprocess.sapiens", "main", "depth/normal priors with Sapiens TorchScript weights (optional)"),
    "convert-bfm": ("instag.preprocess.bfm", "convert_main", "convert the BFM 2009 .mat for the optional BFM tracker"),
    "track-bfm": ("instag.preprocess.bfm", "main", "track the head with the BFM model (optional upstream tool)"),
    "weights": ("instag.preprocess.weights", "main", "report (or fetch) the optional upstream weights"),
    "pretrain": ("instag.train.pretrain", "main", "identity-free pre-training of the universal motion fields"),
    "adapt": ("instag.train.adapt", "main", "motion-aligned adaptation to a new identity (face, mouth, fuse)"),
    "synthesize": ("instag.infer.synthesize", "main", "render a trained head driven by new audio into an mp4"),
    "stream": ("instag.infer.stream", "main", "chunked real-time synthesis"),
    "evaluate": ("instag.metrics.evaluate", "main", "metrics on the validation split, or between two videos"),
    "serve": ("instag.serve.app", "main", "local web page: the avatar answers uploaded or spoken speech in real time"),
    "report": ("instag.metrics.dashboard", "main", "HTML dashboard of the logged sessions and feedback of a model"),
    "refine": ("instag.train.refine", "main", "guarded continual adaptation on more footage (new version, promoted if not worse)"),
    "versions": ("instag.train.versions", "main", "list a model's versions with their scores, or roll back to one"),
    "bench": ("instag.bench_cli", "main", "run a benchmark from bench/"),
}


def _usage() -> str:
    lines = ["usage: instag <command> [options]", "", "commands:"]
    lines += [f"  {name:<11} {desc}" for name, (_, _, desc) in COMMANDS.items()]
    lines += ["", "Add --debug to any command for full tracebacks and the native libraries' log lines."]
    return "\n".join(lines)


def _close_progress_bars() -> None:
    """Clear progress bars an exception left open, so the error line starts a line of its own."""
    tqdm_module = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm_module, "tqdm", None), "_instances", ())):
        bar.close()
    sys.stderr.flush()


def _describe_os_error(err: OSError) -> str:
    """One line naming the path of a failed file operation and what to do."""
    import errno
    from pathlib import Path

    path = Path(str(err.filename))
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker == path:
            return f"{path} is a file where a folder is needed; choose another output path or move that file"
        if blocker is not None:
            return f"cannot create {path}: {blocker} is a file, not a folder; choose another output path or move that file"
    return f"{path}: {err.strerror or err}; check the path, free disk space and permissions"


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler's stop), raised like Ctrl-C so that every cleanup that Ctrl-C runs
    (partial outputs, staging folders, a processed folder put back as it was) runs for it too."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def run_command(name: str, argv: list[str]) -> int:
    """Run subcommand ``name`` with ``argv``; user errors become one line on stderr."""
    from instag.errors import InstagError
    from instag.io.native_stderr import filter_native_stderr

    module_name, func_name, _ = COMMANDS[name]
    debug = "--debug" in argv
    if not debug:  # OpenCV's "[ WARN:0@...] imread_(...)" lines would precede our one-line error
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    on_term = signal.signal(signal.SIGTERM, _terminate)  # clean up as on Ctrl-C
    try:
        with contextlib.nullcontext() if debug else filter_native_stderr():  # MediaPipe/TFLite log noise
            func = getattr(importlib.import_module(module_name), func_name)
            code = func(argv)
        return int(code or 0)
    except InstagError as err:
        if debug:
            raise
        _close_progress_bars()
        print(f"instag {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        _close_progress_bars()
        terminated = isinstance(err, Terminated)
        note = f"; {err}" if str(err) else ""  # what a stopping run saved and how to go on (instag.train.run.stopped)
        print(f"instag {name}: {'terminated' if terminated else 'interrupted'}{note}", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    except Exception as err:  # an unexpected failure still gets one line unless --debug
        if debug:
            raise
        _close_progress_bars()
        if isinstance(err, OSError) and err.filename is not None:  # a path that cannot be made or written
            print(f"instag {name}: error: {_describe_os_error(err)}", file=sys.stderr)
            return 2
        msg = " ".join(str(err).split()) or type(err).__name__
        print(f"instag {name}: internal error: {type(err).__name__}: {msg} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, on_term)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"instag: error: unknown command {name!r}\n{_usage()}", file=sys.stderr)
        return 2
    return run_command(name, rest)


def entry(name: str) -> None:
    """For upstream-named wrapper files: ``entry("process")`` runs that subcommand and exits."""
    sys.exit(run_command(name, sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
