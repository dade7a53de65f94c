#!/usr/bin/env bash
# Upstream's entry point: Sapiens depth/normal priors for data/<ID> on every visible GPU (or the CPU).
#   bash data_utils/sapiens/run.sh data/<ID> [--gpus 0,1] [--max_frames 500] [--tasks depth normal]
set -euo pipefail
exec python -c 'from instag.cli import entry; entry("sapiens")' "$@"
