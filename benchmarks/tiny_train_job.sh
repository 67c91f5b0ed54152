#!/usr/bin/env bash
# Train the tiny Wan model on the lent GPU machine as a background job that outlives one device call
# (a call lasts at most 10 minutes; a job started with setsid runs on while later calls poll it).
# On a machine with several GPUs it trains data-parallel on all of them (torchrun; GPUS=N to choose).
#
#   bash benchmarks/tiny_train_job.sh start MINUTES [train options]   # returns at once
#   bash benchmarks/tiny_train_job.sh wait SECONDS                    # tail the log; return early if the job ended
#   bash benchmarks/tiny_train_job.sh pack OUT                        # compare topk vs dense, time a step's parts, tar the model into OUT
#
# The machine goes back after 30 s idle, taking the job with it (run 3's first try was lost so):
# chain `start` and `wait` in one call, e.g. `... start 24 --compile; bash ... wait 480`, and send
# each next `wait` as soon as the last returns.
# Carry `.whl` (diffusers) on every call; `start` also needs the checkpoint named by --resume carried, e.g.
#   bash benchmarks/tiny_train_job.sh start 21 --resume .ckpt/RUN_DIR --vae-share 0.1 --compile
# The job writes its exit status to a file when it ends, and `wait` polls for that file: a pid kept
# from the starting call did not outlive it on the lent machine (run 3 read "ended" while training
# went on), and `pgrep -f` would match the polling shell itself.
set -u
JOB=/tmp/tiny-train
MODEL=/tmp/tiny-wan-t2v

job_running() { [ -f "$JOB.log" ] && [ ! -f "$JOB.rc" ]; }

case "${1:-}" in
start)
    minutes=$2
    shift 2
    options=()
    while [ $# -gt 0 ]; do  # the job runs from /tmp: make the --resume folder absolute
        if [ "$1" = "--resume" ]; then options+=("$1" "$(realpath "$2")"); shift 2; else options+=("$1"); shift; fi
    done
    source benchmarks/gpu_env.sh
    gpus=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
    launcher=(python3)
    if [ "$gpus" -gt 1 ]; then launcher=(python3 -m torch.distributed.run --standalone --nproc_per_node="$gpus"); fi
    rm -f "$JOB.rc"
    (cd /tmp && setsid nohup bash -c '"$@"; echo $? >"'"$JOB.rc"'"' job "${launcher[@]}" -m dit_accel.tiny.train \
        --out "$MODEL" --minutes "$minutes" "${options[@]}" >"$JOB.log" 2>&1 </dev/null &)
    sleep 60
    grep -v Warning "$JOB.log" | tail -20
    ;;
wait)
    deadline=$((SECONDS + $2))
    while job_running && [ $SECONDS -lt $deadline ]; do sleep 5; done
    grep -v Warning "$JOB.log" | tail -25
    job_running && echo "job still running" || echo "job ended with status $(cat "$JOB.rc" 2>/dev/null)"
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
    ;;
pack)
    out=$2
    source benchmarks/gpu_env.sh
    cp "$JOB.log" "$out/train.log"
    tar -C "$(dirname "$MODEL")" -cf - "$(basename "$MODEL")" | split -b 15m - "$out/tiny-wan-t2v.tar.part-"
    for density in 0.25 0.125; do
        timeout 150 bash -c "cd /tmp && python3 -m dit_accel.cli compare --model $MODEL --method topk \
            -o density=$density --out $out/compare_topk_$density --format gif" 2>&1 | grep -v Warning | tail -6
    done
    # a script's own folder, not the cwd, goes on sys.path: dit_accel comes from /tmp/pkg
    timeout 120 python3 benchmarks/tiny_step_split.py --out "$out/tiny_step_split_h200.json" 2>&1 | grep -v Warning | tail -3
    ls -la "$out"
    ;;
*)
    echo "usage: $0 start MINUTES [options] | wait SECONDS | pack OUT" >&2
    exit 2
    ;;
esac
