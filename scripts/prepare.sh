#!/usr/bin/env bash
# Report which optional upstream weights are present (none is needed for the default path).
# With network access, `bash scripts/prepare.sh --fetch` downloads every public one, or
# `--fetch easyportrait bfm_keys_info ...` just those (the BFM .mat is licence-gated: never fetched).
set -euo pipefail
exec python -c 'from instag.cli import entry; entry("weights")' "$@"
