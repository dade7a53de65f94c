#!/usr/bin/env bash
# Shared by scripts/pretrain_con*.sh: upstream's positional arguments, then instag pretrain.
#   bash scripts/_pretrain.sh SCRIPT_NAME "EXTRACTOR FLAGS" DATA_DIR OUTPUT_DIR [GPU] [more instag pretrain flags]
# GPU is one id, or a list of ids (0,1,2,3: one data-parallel training process per GPU, started by torchrun:
# python -m torch.distributed.run).
set -euo pipefail
name=$1; extractor_flags=$2; shift 2
dataset=${1:?usage: bash scripts/$name DATA_DIR OUTPUT_DIR [GPU]}
workspace=${2:?usage: bash scripts/$name DATA_DIR OUTPUT_DIR [GPU]}
export CUDA_VISIBLE_DEVICES=${3:-0}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1  # NVLink multicast stays off
launch=(python -c 'from instag.cli import entry; entry("pretrain")')
if [[ $CUDA_VISIBLE_DEVICES == *,* ]]; then
  IFS=, read -ra gpus <<< "$CUDA_VISIBLE_DEVICES"
  launch=(python -m torch.distributed.run --standalone --nproc_per_node "${#gpus[@]}" -m instag pretrain)
fi
read -ra extra <<< "$extractor_flags"
exec "${launch[@]}" -S "$dataset" -M "$workspace" "${extra[@]}" "${@:4}"
