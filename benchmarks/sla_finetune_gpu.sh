#!/usr/bin/env bash
# Fine-tune sla on the shipped tiny Wan model on one GPU, then measure quality before and after it.
#
#   OUT=/path/to/results bash benchmarks/sla_finetune_gpu.sh [MINUTES] [TRAIN] [RUNS] [POOL] [BATCH] [STEPS]
#
# MINUTES of training (default 4; the teacher's pool of POOL generations (default 32) comes first,
# about a second each on an H200), TRAIN one of projections | lora | all (default all: the paper
# fine-tunes every weight, and the tiny transformer has about 9 M), RUNS one run or several, each a
# learning rate or STATES:LR[:SCHEDULE[:EMA]] with STATES noised | trajectory (finetune-sla --states),
# SCHEDULE constant | cosine (--lr-schedule; cosine decays to zero at STEPS) and EMA a decay for
# --ema-decay (default "5e-5": noised states at a constant lr 5e-5, no average; several runs go side
# by side on the GPU), BATCH samples a step (default 2; each costs a conditional and an
# unconditional call under guidance), STEPS the
# optimizer steps a run stops at (default: none, MINUTES decides; a cosine run needs it: what MINUTES
# allows, about 260 a minute for three runs side by side on an H200, 180 for four). k_high 0.05
# (95% sparsity), k_low 0.1. PROMPT_COUNT=N (environment) trains on N distinct random captions of the
# tiny model's language instead of finetune-sla's 12 built-in prompts (none of the sweep's prompts).
# BLOCKS=Q,K (environment, e.g. 128,128) trains and evaluates sla, and the topk it is compared with, at
# (Q, K) blocks instead of the default (128, 64).
# Writes $OUT/sla-tiny-RUN/ (weights, checkpoints, log.jsonl), $OUT/finetune-RUN.log, and $OUT/sweep/:
# dense vs topk, untrained sla and each fine-tuned sla at the same density on PAIRS (environment,
# default 8) prompt/seed pairs the training never saw (summary.json / summary.md: mean PSNR, SSIM, paired differences).
set -euo pipefail
: "${OUT:?set OUT to the results folder}"
cd /tmp  # the CLI runs outside the checkout (see gpu_env.sh), on the dit_accel that PYTHONPATH names
MINUTES=${1:-4}
TRAIN=${2:-all}
read -ra RUNS <<< "${3:-5e-5}"
POOL=${4:-32}
BATCH=${5:-2}
STEPS=${6:-}
K_HIGH=0.05
block_word="" block_opt=()  # the block_size option of every run and variant, when BLOCKS is set
if [ -n "${BLOCKS:-}" ]; then block_word="block_size=(${BLOCKS})"; block_opt=(-o "$block_word"); fi
if [ "$(printf '%s\n' "${RUNS[@]}" | sort | uniq -d)" ]; then echo "a run is given twice: ${RUNS[*]}" >&2; exit 2; fi
specs=()  # "STATES LR SCHEDULE [EMA]" per run, every run checked before any starts
for run in "${RUNS[@]}"; do
    IFS=: read -r first second schedule ema <<< "$run"
    states=noised lr=$first
    [ -z "$second" ] || { states=$first; lr=$second; }
    case $states in noised | trajectory) ;; *) echo "run $run: STATES must be noised or trajectory" >&2; exit 2 ;; esac
    case ${schedule:=constant} in
        constant) ;;
        cosine) [ -n "$STEPS" ] || { echo "run $run: a cosine run needs STEPS, else its rate hardly falls" >&2; exit 2; } ;;
        *) echo "run $run: SCHEDULE must be constant or cosine" >&2; exit 2 ;;
    esac
    specs+=("$states $lr $schedule $ema")
done
mkdir -p "$OUT"
variants=(--variant "topk density=$K_HIGH $block_word" --variant "sla k_high=$K_HIGH $block_word")
prompt_args=()
if [ "${PROMPT_COUNT:-0}" -gt 0 ]; then
    python3 - "$PROMPT_COUNT" > "$OUT/prompts.txt" <<'EOF'
import sys

import numpy as np

from dit_accel.sweep import DEFAULT_PROMPTS
from tools.tiny_wan.data import sample_caption

rng, prompts = np.random.default_rng(0), []
while len(prompts) < int(sys.argv[1]):
    text = sample_caption(rng).text
    if text not in prompts and text not in DEFAULT_PROMPTS:
        prompts.append(text)
print("\n".join(prompts))
EOF
    prompt_args=(--prompts "$OUT/prompts.txt")
fi
pids=()
for index in "${!RUNS[@]}"; do
    read -r states lr schedule ema <<< "${specs[$index]}"
    extra=(--lr-schedule "$schedule")
    [ -z "$ema" ] || extra+=(--ema-decay "$ema")
    name=${RUNS[$index]//:/-}
    python3 -m dit_accel.cli finetune-sla --out "$OUT/sla-tiny-$name" -o k_high=$K_HIGH -o k_low=0.1 \
        "${block_opt[@]}" \
        --train "$TRAIN" --states "$states" --lr "$lr" "${extra[@]}" --minutes "$MINUTES" --steps "${STEPS:-1000000}" \
        --batch-size "$BATCH" --pool-size "$POOL" --save-every 500 "${prompt_args[@]}" > "$OUT/finetune-$name.log" 2>&1 &
    pids+=($!)
    variants+=(--variant "sla k_high=$K_HIGH $block_word weights=$OUT/sla-tiny-$name")
done
failed=0
for index in "${!pids[@]}"; do  # every run must end well before the sweep compares them
    wait "${pids[$index]}" || { echo "fine-tuning run ${RUNS[$index]} failed" >&2; failed=1; }
    tail -3 "$OUT/finetune-${RUNS[$index]//:/-}.log"
done
[ "$failed" = 0 ] || exit 1
python3 -m dit_accel.cli sweep --out "$OUT/sweep" --pairs "${PAIRS:-8}" "${variants[@]}" 2>&1 | tee "$OUT/sweep.log"
