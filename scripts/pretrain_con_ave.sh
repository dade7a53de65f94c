#!/usr/bin/env bash
# Identity-free pre-training (face, then mouth) with ave audio features on one processed clip per identity.
#   bash scripts/pretrain_con_ave.sh data/pretrain output/pretrain_model 0 [more instag pretrain flags]
# $1 folder of processed identities (data/pretrain/<id>/), $2 output folder, $3 GPU id or a list of ids (0,1,2,3).
exec bash "$(dirname "$0")/_pretrain.sh" pretrain_con_ave.sh "--audio_extractor ave" "$@"
