#!/usr/bin/env bash
# Identity-free pre-training (face, then mouth) with whisper audio features (the default) on one processed clip per identity.
#   bash scripts/pretrain_con.sh data/pretrain output/pretrain_model 0 [more instag pretrain flags]
# $1 folder of processed identities (data/pretrain/<id>/), $2 output folder, $3 GPU id.
set -euo pipefail
dataset=${1:?usage: bash scripts/pretrain_con.sh DATA_DIR OUTPUT_DIR [GPU]}
workspace=${2:?usage: bash scripts/pretrain_con.sh DATA_DIR OUTPUT_DIR [GPU]}
export CUDA_VISIBLE_DEVICES=${3:-0}
exec python -c 'from instag.cli import entry; entry("pretrain")' -S "$dataset" -M "$workspace" --audio_extractor whisper  "${@:4}"
