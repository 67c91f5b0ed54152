#!/usr/bin/env bash
# Fine-tune sla on the shipped tiny Wan model on one GPU, then measure quality before and after it.
#
#   OUT=/path/to/results bash benchmarks/sla_finetune_gpu.sh [MINUTES] [TRAIN] [LR]
#
# MINUTES of training (default 4, so that the whole script stays within 10 minutes; the teacher's
# pool of 32 generations comes first, about half a minute on an H200), TRAIN one of projections |
# lora | all (default all: the paper fine-tunes every weight, and the tiny transformer has about 9 M),
# LR (default 5e-5). k_high 0.05 (95% sparsity), k_low 0.1.
# Writes $OUT/sla-tiny/ (weights, checkpoints, log.jsonl), $OUT/finetune.log, and $OUT/sweep/: dense vs
# topk, untrained sla and fine-tuned sla at the same density on 8 prompt/seed pairs the training never
# saw (summary.json / summary.md: mean PSNR, SSIM, paired differences).
set -euo pipefail
: "${OUT:?set OUT to the results folder}"
cd /tmp  # the CLI runs outside the checkout (see gpu_env.sh), on the dit_accel that PYTHONPATH names
MINUTES=${1:-4}
TRAIN=${2:-all}
LR=${3:-5e-5}
K_HIGH=0.05
mkdir -p "$OUT"
python3 -m dit_accel.cli finetune-sla --out "$OUT/sla-tiny" -o k_high=$K_HIGH -o k_low=0.1 --train "$TRAIN" \
    --lr "$LR" --minutes "$MINUTES" --steps 1000000 --batch-size 4 --pool-size 32 --save-every 500 \
    2>&1 | tee "$OUT/finetune.log"
python3 -m dit_accel.cli sweep --out "$OUT/sweep" --pairs 8 \
    --variant "topk density=$K_HIGH" \
    --variant "sla k_high=$K_HIGH" \
    --variant "sla k_high=$K_HIGH weights=$OUT/sla-tiny" \
    2>&1 | tee "$OUT/sweep.log"
