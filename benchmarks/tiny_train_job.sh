#!/usr/bin/env bash
# Train the tiny Wan model on the lent GPU machine in segments, each inside one device call, and
# bring every segment's weights back through $OUT; the next segment resumes from them.
# On a machine with several GPUs it trains data-parallel on all of them (torchrun; GPUS=N to choose).
#
#   bash benchmarks/tiny_train_job.sh train MINUTES [train options]   # train, then tar the model into $OUT
#   bash benchmarks/tiny_train_job.sh compare MODEL_DIR               # topk 0.25 and 0.125 vs dense into $OUT
#
# Why segments: a job left running between calls was lost twice (run 3's first try, and run 4's
# 23-minute try after 8 minutes): the machine went back between two calls and took the job with it.
# A call runs at most 10 minutes, so keep MINUTES at 9.5 or less (9.5 ended 554 s into the call);
# carry `.whl` (diffusers) on every call and the folder named by --resume. Back here, unpack a segment with
#   cat /work/.device/N/tiny-wan-t2v.tar.part-* | tar -C .ckpt -xf -     # .ckpt/tiny-wan-t2v
# e.g. to continue the shipped model: `train 8.5 --resume assets/tiny-wan-t2v --vae-share 0.04 --lr 1e-4
# --first-frame-weight 4 --compile`, then `train 8.5 --resume .ckpt/<the segment before> ...`, and so on.
set -u
MODEL=/tmp/tiny-wan-t2v
: "${OUT:?OUT must name the folder whose files come back (the device tool sets it)}"

case "${1:-}" in
train)
    minutes=$2
    shift 2
    options=()
    while [ $# -gt 0 ]; do  # training runs from /tmp: make the --resume folder absolute
        if [ "$1" = "--resume" ]; then options+=("$1" "$(realpath "$2")"); shift 2; else options+=("$1"); shift; fi
    done
    source benchmarks/gpu_env.sh
    gpus=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
    launcher=(python3)
    if [ "$gpus" -gt 1 ]; then launcher=(python3 -m torch.distributed.run --standalone --nproc_per_node="$gpus"); fi
    (cd /tmp && "${launcher[@]}" -m tools.tiny_wan.train --out "$MODEL" --minutes "$minutes" "${options[@]}") 2>&1 \
        | grep -v Warning | tee "$OUT/train.log" | tail -25
    tar -C "$(dirname "$MODEL")" -cf - "$(basename "$MODEL")" | split -b 15m - "$OUT/tiny-wan-t2v.tar.part-"
    ls -la "$OUT"
    ;;
compare)
    model=$(realpath "$2")
    source benchmarks/gpu_env.sh
    for density in 0.25 0.125; do
        timeout 150 bash -c "cd /tmp && python3 -m dit_accel.cli compare --model $model --method topk \
            -o density=$density --out $OUT/compare_topk_$density --format gif" 2>&1 | grep -v Warning | tail -6
    done
    ls -la "$OUT"
    ;;
*)
    echo "usage: $0 train MINUTES [options] | compare MODEL_DIR" >&2
    exit 2
    ;;
esac
