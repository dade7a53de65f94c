"""Upstream entry point: HuBERT hidden states: --wav X.wav writes X_hu.npy (see instag features)."""

import sys

from instag.audio.cli import upstream_argv
from instag.cli import run_command

sys.exit(run_command("features", upstream_argv("hubert", sys.argv[1:])))
