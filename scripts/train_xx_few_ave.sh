#!/usr/bin/env bash
# Few-shot adaptation with AVE audio features (pre-trained by pretrain_con_ave.sh).
#   bash scripts/train_xx_few_ave.sh data/<ID> output/<ID> 0 [more instag adapt flags]
# $1 processed clip, $2 output folder, $3 GPU id. The audio extractor is the one recorded in the
# pre-trained checkpoint (PRETRAIN, default output/pretrain_ave) unless --audio_extractor is given; a mismatch is refused.
# Afterwards the validation split is rendered to $2/test/ours_None/renders/ (out.mp4) and scored.
set -euo pipefail
dataset=${1:?usage: bash scripts/train_xx_few_ave.sh DATA_DIR OUTPUT_DIR [GPU]}
workspace=${2:?usage: bash scripts/train_xx_few_ave.sh DATA_DIR OUTPUT_DIR [GPU]}
export CUDA_VISIBLE_DEVICES=${3:-0}
exec python -c 'from instag.cli import entry; entry("adapt")' -S "$dataset" -M "$workspace" --pretrain_path "${PRETRAIN:-output/pretrain_ave}" --N_views 250 --audio_extractor ave "${@:4}"
