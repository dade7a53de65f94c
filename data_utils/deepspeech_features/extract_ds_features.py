"""Upstream entry point: DeepSpeech 0.1.0 windows: --input X.wav writes X.npy (see instag features)."""

import sys

from instag.audio.cli import upstream_argv
from instag.cli import run_command

sys.exit(run_command("features", upstream_argv("deepspeech", sys.argv[1:])))
