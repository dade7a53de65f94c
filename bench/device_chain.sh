#!/usr/bin/env bash
# The whole GPU chain of one experiment, on one H100/H200 machine that cannot reach a registry, from a copy of this
# repository: preprocess the corpus and the two evaluation clips, pre-train, adapt cnn2 and german with two seeds
# each (four runs side by side on the one GPU), score each on the validation split and on the user's path
# (instag evaluate --new_audio), drive each seed-0 model with the unheard speech, and time synthesis.
#
#   bash bench/device_chain.sh setup           # unpack .dev/site.tar.xz (wheels) and .dev/whisper3.safetensors.xz,
#                                              # build gsplat's kernels
#   bash bench/device_chain.sh videos DIR      # copy carried videos (DIR/<part>/...) into /tmp/videos/<part>/
#   setsid nohup bash bench/device_chain.sh run > /tmp/logs/daemon.txt 2>&1 &
#   bash bench/device_chain.sh collect         # copy the small results into $OUT
#
# /tmp/videos/corpus holds the pre-training videos, /tmp/videos/eval the two evaluation clips, /tmp/videos/audio
# the unheard wavs. PRETRAIN_STEPS="face mouth" sets pre-training's iterations (default 6000 4000).
set -uo pipefail
SITE=/tmp/site
REPO=/tmp/repo
D=/tmp/data
O=/tmp/output
L=/tmp/logs
mkdir -p "$L"
export PYTHONPATH=$SITE:$REPO INSTAG_WHISPER_WEIGHTS=/tmp/whisper3.safetensors TORCH_CUDA_ARCH_LIST=9.0
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

stamp() { echo "$(date +%T) $*" | tee -a "$L/chain.txt"; }

case "${1:?usage: device_chain.sh setup|videos DIR|run|collect}" in
setup)
    mkdir -p "$SITE" && tar xJf .dev/site.tar.xz -C "$SITE"
    xz -dc .dev/whisper3.safetensors.xz > /tmp/whisper3.safetensors
    rm -rf "$REPO" && mkdir -p "$REPO" && cp -r instag bench data_utils scripts synthesize_fuse.py "$REPO"/
    (cd "$REPO" && python3 -c "import gsplat, torch; from gsplat.cuda._backend import _C; print('gsplat', gsplat.__version__, torch.__version__)")
    stamp setup done
    ;;
videos)
    mkdir -p /tmp/videos && cp -rL "${2:?videos DIR}"/. /tmp/videos/ && du -sh /tmp/videos/*
    ;;
run)
    rm -rf "$REPO"/instag "$REPO"/bench && cp -r instag bench data_utils scripts synthesize_fuse.py "$REPO"/
    cd "$REPO" || exit 1
    read -r FACE MOUTH <<< "${PRETRAIN_STEPS:-6000 4000}"
    stamp "chain start on $(nvidia-smi --query-gpu=name --format=csv,noheader)"
    for c in cnn2:dfrf_cnn2_25fps german:mimictalk_german_20s; do
        id=${c%%:*}; mkdir -p "$D/$id" && cp "/tmp/videos/eval/${c#*:}.mp4" "$D/$id/$id.mp4"
        (python3 -m instag process "$D/$id/$id.mp4" && python3 data_utils/split.py "$D/$id/$id.mp4") > "$L/process_$id.txt" 2>&1 &
    done
    python3 -m instag process /tmp/videos/corpus --out "$D/pretrain" --workers 10 --fix_av_offset > "$L/process_corpus.txt" 2>&1
    wait
    stamp "preprocessed: $(ls "$D/pretrain" | wc -l) corpus clips"
    python3 -m instag pretrain -S "$D/pretrain" -M "$O/pretrain_model" --iterations "$FACE" --mouth_iterations "$MOUTH" \
        --quiet > "$L/pretrain.txt" 2>&1 || { stamp "pretrain failed"; exit 1; }
    stamp "pre-trained ($FACE + $MOUTH steps)"
    for id in cnn2 german; do
        views=250; [ "$id" = german ] && views=200
        for seed in 0 1; do
            python3 -m instag adapt -S "$D/$id" -M "$O/${id}_s$seed" --pretrain_path "$O/pretrain_model" --N_views $views \
                --seed $seed --evaluate false --quiet > "$L/adapt_${id}_s$seed.txt" 2>&1 &
        done
    done
    wait  # four adaptations side by side: the GPU is launch-bound, four share it at ~2x the time of one
    stamp "adapted"
    for run in cnn2_s0 german_s0 cnn2_s1 german_s1; do  # one at a time: landmark detection is CPU-bound
        python3 -m instag evaluate -S "$D/${run%_s*}" -M "$O/$run" --new_audio --quiet > "$L/evaluate_$run.txt" 2>&1
        stamp "evaluated $run"
    done
    stamp "adapted and evaluated"
    python3 bench/unheard_speech.py "$D/cnn2=$O/cnn2_s0" "$D/german=$O/german_s0" --audio /tmp/videos/audio/*.wav \
        --out "$L/unheard_speech.json" > "$L/unheard.txt" 2>&1
    stamp "unheard speech done"
    python3 bench/stream.py -S "$D/cnn2" -M "$O/cnn2_s0" --out "$L/stream.json" > "$L/stream.txt" 2>&1
    python3 bench/synthesis.py -S "$D/cnn2" -M "$O/cnn2_s0" --audio /tmp/videos/audio/synctalk_test_en.wav \
        --out "$L/synthesis.json" > "$L/synthesis.txt" 2>&1
    stamp "stream and synthesis timed"
    python3 bench/training.py "cnn2 s0=$O/cnn2_s0" "cnn2 s1=$O/cnn2_s1" "german s0=$O/german_s0" "german s1=$O/german_s1" \
        --pretrain "$O/pretrain_model" --device "$(nvidia-smi --query-gpu=name --format=csv,noheader)" \
        --out "$L/training.json" > "$L/training.txt" 2>&1
    stamp "chain done"
    ;;
collect)
    cd "$REPO" || exit 1
    mkdir -p /tmp/collect && cp "$L"/chain.txt "$L"/*.json /tmp/collect/ 2>/dev/null
    tail -c 20000 -q "$L"/adapt_*.txt "$L"/evaluate_*.txt "$L"/pretrain.txt "$L"/unheard.txt "$L"/training.txt "$L"/stream.txt "$L"/synthesis.txt "$L"/process_*.txt > /tmp/collect/tails.txt 2>/dev/null
    for r in "$O"/*_s[01]; do
        n=$(basename "$r")
        cp "$r/test/ours_None/new_audio.json" "/tmp/collect/new_audio_$n.json" 2>/dev/null
        cp "$r/test/ours_None/metrics.json" "/tmp/collect/metrics_$n.json" 2>/dev/null
        cp "$r/adapt_log.json" "/tmp/collect/adapt_log_$n.json" 2>/dev/null
    done
    cp "$O/pretrain_model/pretrain_log.json" /tmp/collect/ 2>/dev/null
    python3 bench/look_frames.py "$O"/cnn2_s0/inference/unheard/*.mp4 "$O"/german_s0/inference/unheard/*.mp4 \
        --out /tmp/collect >> /tmp/collect/tails.txt 2>&1
    tar czf "$OUT/results.tgz" -C /tmp/collect . && cp "$L/chain.txt" "$OUT/" && ls -la "$OUT"
    ;;
esac
