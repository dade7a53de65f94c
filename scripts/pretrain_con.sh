#!/usr/bin/env bash
# Identity-free pre-training (face, then mouth) with whisper audio features (the default) on one processed clip per identity.
#   bash scripts/pretrain_con.sh data/pretrain output/pretrain_model 0 [more instag pretrain flags]
# $1 folder of processed identities (data/pretrain/<id>/), $2 output folder, $3 GPU id, or a list of GPU ids
# (0,1,2,3: one data-parallel training process per GPU, started by torchrun: python -m torch.distributed.run).
set -euo pipefail
dataset=${1:?usage: bash scripts/pretrain_con.sh DATA_DIR OUTPUT_DIR [GPU]}
workspace=${2:?usage: bash scripts/pretrain_con.sh DATA_DIR OUTPUT_DIR [GPU]}
export CUDA_VISIBLE_DEVICES=${3:-0}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1  # NVLink multicast stays off
launch=(python -c 'from instag.cli import entry; entry("pretrain")')
if [[ $CUDA_VISIBLE_DEVICES == *,* ]]; then
  IFS=, read -ra gpus <<< "$CUDA_VISIBLE_DEVICES"
  launch=(python -m torch.distributed.run --standalone --nproc_per_node "${#gpus[@]}" -m instag pretrain)
fi
exec "${launch[@]}" -S "$dataset" -M "$workspace" --audio_extractor whisper  "${@:4}"
