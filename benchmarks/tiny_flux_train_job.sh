#!/usr/bin/env bash
# Train the tiny FLUX model on the lent GPU machine inside ONE device call and bring the pipeline and
# the log back through $OUT; then (a second call) score its caption adherence.
#
#   bash benchmarks/tiny_flux_train_job.sh train [MINUTES] [train options]   # default 8.5 min, --compile
#   bash benchmarks/tiny_flux_train_job.sh eval MODEL_DIR [eval options]     # eval.json + sheet.png in $OUT
#
# The call: run(command="bash benchmarks/tiny_flux_train_job.sh train", carry=[".whl"], timeout_s=600).
# A call runs at most 10 minutes: MINUTES counts from the trainer's start (imports included) and holds
# its own evaluation (64 held-out captions) and saving; installing the wheels, starting Python and
# packing take about 30 s more, so keep MINUTES at 9 or less. Back come at most 8 files of 16 MiB:
# train.log, and the pipeline (about 21 MB) as tar parts of 15 MB. Unpack them with
#   cat FILES_AT/tiny-flux.tar.part-* | tar -C .ckpt -xf -        # .ckpt/tiny-flux
# and score it with `eval .ckpt/tiny-flux` (carry .whl and .ckpt/tiny-flux). If one segment is not
# enough, continue it in another call: `train 8.5 --resume .ckpt/tiny-flux --lr 2e-4` (carry it too).
set -u
MODEL=/tmp/tiny-flux
: "${OUT:?OUT must name the folder whose files come back (the device tool sets it)}"

case "${1:-}" in
train)
    minutes=${2:-8.5}
    shift $(($# < 2 ? $# : 2))
    options=()
    while [ $# -gt 0 ]; do  # training runs from /tmp: make the --resume folder absolute
        if [ "$1" = "--resume" ]; then options+=("$1" "$(realpath "$2")"); shift 2; else options+=("$1"); shift; fi
    done
    source benchmarks/gpu_env.sh
    (cd /tmp && python3 -m tools.tiny_flux.train --out "$MODEL" --minutes "$minutes" --compile "${options[@]}") 2>&1 \
        | grep -v Warning | tee "$OUT/train.log" | tail -30
    tar -C "$(dirname "$MODEL")" -cf - "$(basename "$MODEL")" | split -b 15m - "$OUT/tiny-flux.tar.part-"
    ls -la "$OUT"
    ;;
eval)
    model=$(realpath "$2")
    shift 2
    source benchmarks/gpu_env.sh
    python3 benchmarks/tiny_flux_eval.py --model "$model" --count 256 --out "$OUT/eval.json" \
        --sheet "$OUT/sheet.png" "$@" 2>&1 | grep -v Warning | tail -8
    ls -la "$OUT"
    ;;
*)
    echo "usage: $0 train [MINUTES] [options] | eval MODEL_DIR [options]" >&2
    exit 2
    ;;
esac
