"""Upstream entry point: wav2vec2 CTC logits (Esperanto): --wav X.wav --save_feats writes X_eo.npy (see instag features)."""

import sys

from instag.audio.cli import upstream_argv
from instag.cli import run_command

sys.exit(run_command("features", upstream_argv("esperanto", sys.argv[1:])))
