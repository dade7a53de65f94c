#!/usr/bin/env bash
# Like prepare.sh, for the Sapiens-lite 0.3b depth and normal TorchScript models only.
#   bash scripts/prepare_sapiens.sh            report
#   bash scripts/prepare_sapiens.sh --fetch    download both (about 1.3 GB each)
set -euo pipefail
if [ "${1:-}" = "--fetch" ]; then
  exec python -c 'from instag.cli import entry; entry("weights")' --fetch sapiens_depth sapiens_normal --only sapiens_depth sapiens_normal
fi
exec python -c 'from instag.cli import entry; entry("weights")' --only sapiens_depth sapiens_normal "$@"
