# The methods' GPU session on the lent H200, in stages (one device call each, results under $OUT):
#   bash benchmarks/gpu_methods.sh check    each method's kernel check script (correctness + times)
#   bash benchmarks/gpu_methods.sh kernel   bench kernel of every method at the Wan-1.3B shape, FA4 and Triton,
#                                           with the error on q/k/v recorded from the tiny model on this GPU
#                                           (BENCHES="topk pisa_o1 ... flashblock": a subset, by name; BENCH_LIMIT: s per bench)
#   bash benchmarks/gpu_methods.sh e2e      bench e2e: Wan-1.3B (topk, pisa), HunyuanVideo 720p (fewer layers), FLUX 1024 px
#   bash benchmarks/gpu_methods.sh sweep    sweep: every method vs dense on 8 prompt/seed pairs (SWEEP_PAIRS), tiny model, native size
#   bash benchmarks/gpu_methods.sh engine   the engine's launch checks (routing, q/k norm+rotary, feed-forward epilogue)
#                                           and bench kernel of topk at 0.1 / 0.05, 128x128 and the default blocks
# Run after `source benchmarks/gpu_env.sh` (and FA4's install, see ../shared/gpu/FA4.md) from the checkout root.
set -u
STAGE=$1
dit_accel_cli() { (cd /tmp && python3 -m dit_accel.cli "$@"); }  # outside the checkout, as gpu_env.sh says
REPO=$PWD
LOG=$OUT/$STAGE.log
mkdir -p "$OUT"
exec > >(tee -a "$LOG") 2>&1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python3 -c "import flash_attn.cute; print('FA4 importable')" || echo "FA4 not installed"

if [ "$STAGE" = check ]; then
    mkdir -p /tmp/check
    for name in ${CHECKS:-$(cd "$REPO/benchmarks" && ls check_*.py | sed 's/[.]py$//')}; do  # CHECKS: a subset
        script=$REPO/benchmarks/$name.py
        echo "=== $name"
        (cd /tmp && timeout "${CHECK_LIMIT:-240}" python3 "$script" --out "/tmp/check/$name.json") || echo "$name FAILED ($?)"
    done
    (cd /tmp && python3 "$REPO/benchmarks/profile_routing.py" --out /tmp/check/routing_profile.json)
    tar -C /tmp -czf "$OUT/check.tgz" check
fi

if [ "$STAGE" = engine ]; then
    mkdir -p /tmp/engine
    for name in check_routing check_norm_rotary check_ffn_gelu; do
        echo "=== $name"
        (cd /tmp && timeout 300 python3 "$REPO/benchmarks/$name.py" --out "/tmp/engine/$name.json") || echo "$name FAILED"
    done
    for blocks in "(128,128)" "(128,64)"; do
        echo "=== topk $blocks"
        (cd /tmp && timeout 200 python3 -m dit_accel.cli bench kernel --shapes wan-1.3b-480p --method topk \
            -o "block_size=$blocks" --densities 0.1 0.05 --out /tmp/engine --name "topk_${blocks//[^0-9]/_}") \
            || echo "topk $blocks FAILED"
    done
    tar -C /tmp -czf "$OUT/engine.tgz" engine
fi

if [ "$STAGE" = kernel ]; then
    mkdir -p /tmp/kernel
    dit_accel_cli record --out /tmp/tiny_qkv.safetensors --seed 11 --prompt "a green ring moving left on a dotted black background"
    bench() {  # name, method, then bench options; packs after each so a cut-off run keeps the rest
        local name=$1; shift
        case " ${BENCHES:-$name} " in *" $name "*) ;; *) return ;; esac  # BENCHES: a subset, by name
        echo "=== $name"
        (cd /tmp && timeout "${BENCH_LIMIT:-110}" python3 -m dit_accel.cli bench kernel --shapes wan-1.3b-480p \
            --recorded /tmp/tiny_qkv.safetensors --out /tmp/kernel --name "$name" "$@") || echo "$name FAILED"
        tar -C /tmp -czf "$OUT/kernel.tgz" kernel
    }
    bench topk --method topk --densities 1.0 0.25 0.125 0.1 0.05
    bench pisa_o1 --method pisa -o order=1 --densities 0.25 0.125 0.05
    bench pisa_o0 --method pisa -o order=0 --densities 0.125
    bench pisa_128 --method pisa -o "block_size=(128,128)" --densities 0.125 0.05
    bench rectified --method rectified --densities 0.25 0.125 0.11
    bench rectified_128x64 --method rectified -o "block_size=(128,64)" -o neighbours=False --densities 0.125
    bench psa --method psa --densities 0.25 0.125 default
    bench psa_quotas --method psa -o "quotas=(0.06,0.04,0.12,0.4)" --densities default  # the issue's target setting
    bench svg_ear --method svg_ear --densities 0.22 0.125
    bench sla --method sla -o k_low=0.1 --densities 0.1 0.05
    flashblock() {  # record name, then flashblock_e2e.py options
        local name=$1; shift
        echo "=== $name $*"
        (cd /tmp && timeout 130 python3 "$REPO/benchmarks/flashblock_e2e.py" --out "/tmp/kernel/$name.json" "$@") \
            || echo "$name FAILED"
    }
    case " ${BENCHES:-flashblock} " in *" flashblock "*)
        flashblock flashblock_e2e
        flashblock flashblock_e2e_reuse_heavy --clean-blocks 4 --refresh-every 8;; esac  # reuse-heavy schedule
    tar -C /tmp -czf "$OUT/kernel.tgz" kernel
fi

if [ "$STAGE" = e2e ]; then
    mkdir -p /tmp/e2e
    dit_accel_cli bench e2e --model wan-1.3b --density 0.1 --out /tmp/e2e --name e2e_wan \
        --variants eager:dense eager:topk regional:dense regional:topk
    dit_accel_cli bench e2e --model wan-1.3b --density 0.125 --out /tmp/e2e --name e2e_wan_pisa \
        --variants eager:dense eager:pisa regional:pisa
    # HunyuanVideo 720p 129 frames (118,800 video tokens): every layer at full width, depth cut to 4 + 8
    # blocks so that a forward takes seconds, not tens of seconds (the attention share is the same per block).
    dit_accel_cli bench e2e --model hunyuan-video --density 0.1 --out /tmp/e2e --name e2e_hunyuan \
        --config num_layers=4 --config num_single_layers=8 --variants eager:dense eager:topk
    dit_accel_cli bench e2e --model flux-dev --density 0.15 --out /tmp/e2e --name e2e_flux \
        --variants eager:dense eager:topk regional:dense regional:topk
    tar -C /tmp -czf "$OUT/e2e.tgz" e2e
fi

if [ "$STAGE" = sweep ]; then
    # Every variant without dense warm-up (dense_steps=0, dense_layers=0): equal footing at equal density.
    plain="dense_steps=0 dense_layers=0"
    SWEEP_LIMIT=${SWEEP_LIMIT:-480}  # summaries are rewritten after each pair: a cut-off sweep keeps them
    # SWEEP_VARIANTS: "method opts; method opts; ..." replaces the default list (the open questions of stop 15)
    default="topk density=0.125; svg_ear density=0.125; rectified density=0.125 neighbours=False;
        rectified density=0.125 block_size=(128,64); rectified density=0.125 block_size=(128,64) neighbours=False;
        topk density=0.25; pisa density=0.25 order=1; rectified density=0.25 neighbours=False;
        svg_ear density=0.25; psa density=0.25; topk density=0.05; pisa density=0.05 order=1"
    IFS=';' read -ra chosen <<< "$(printf %s "${SWEEP_VARIANTS:-$default}" | tr -s '\n ' ' ')"  # one line
    args=(); for variant in "${chosen[@]}"; do args+=(--variant "${variant# } $plain"); done
    timeout "$SWEEP_LIMIT" bash -c "$(declare -f dit_accel_cli); dit_accel_cli \"\$@\"" _ sweep --out /tmp/sweep \
        --pairs "${SWEEP_PAIRS:-8}" "${args[@]}"  # SWEEP_PAIRS: more pairs than 8
    tar -C /tmp -czf "$OUT/sweep.tgz" sweep
fi

# Background jobs (the tiny FLUX's training, sla's fine-tuning) run from private copies of the package
# and the wheels: every later call's gpu_env.sh re-creates /tmp/pkg and /tmp/site under them.
background() {  # name, command...: start it detached, its output in /tmp/NAME.log
    local name=$1; shift
    rm -rf "/tmp/${name}_pkg" "/tmp/${name}_site"
    cp -r /tmp/pkg "/tmp/${name}_pkg" && cp -r /tmp/site "/tmp/${name}_site"
    (cd /tmp && PYTHONPATH="/tmp/${name}_pkg:/tmp/${name}_site" setsid nohup "$@" > "/tmp/$name.log" 2>&1 < /dev/null &)
    echo "$name started"
}
if [ "$STAGE" = flux-start ]; then
    background flux python3 -m tools.tiny_flux.train --out /tmp/tiny-flux --minutes "${FLUX_MINUTES:-13}" --compile
fi
if [ "$STAGE" = sla-start ]; then
    if [ -n "${SLA_LRS:-}" ]; then echo "SLA_LRS is now SLA_RUNS (learning rates or STATES:LR[:SCHEDULE[:EMA]])" >&2; exit 2; fi
    background sla env OUT=/tmp/sla_out bash "$REPO/benchmarks/sla_finetune_gpu.sh" "${SLA_MINUTES:-4}" all \
        "${SLA_RUNS:-5e-5}" "${SLA_POOL:-32}" "${SLA_BATCH:-2}" "${SLA_STEPS:-}"  # PROMPT_COUNT passes through
fi
if [ "$STAGE" = flux-collect ]; then
    while pgrep -f tiny_flux.train > /dev/null; do sleep 5; done
    grep -v Warning /tmp/flux.log > "$OUT/flux_train.log"; tail -8 "$OUT/flux_train.log"
    tar -C /tmp -cf - tiny-flux | split -b 15m - "$OUT/tiny-flux.tar.part-"
fi
if [ "$STAGE" = sla-collect ]; then
    # Waits for the job, packing what it has every 10 s, for at most COLLECT_LIMIT s (default 540), so
    # that a call cut off by the session's budget still brings the partial sweep back. (Run inline as
    # `bash -c "... pgrep -f PATTERN"`, a pattern would match that shell's own command line.)
    pack() {  # no weights; written aside, then renamed, so a cut-off call never returns half an archive
        (cd /tmp && find sla_out -type f -size -4M -print0 | tar -czf "$OUT/sla.tgz.part" --null -T -) \
            && mv "$OUT/sla.tgz.part" "$OUT/sla.tgz"
    }
    while pgrep -f sla_finetune_gpu.sh > /dev/null; do
        if [ "$SECONDS" -ge "${COLLECT_LIMIT:-540}" ]; then echo "COLLECT_LIMIT reached: the job still runs, results partial"; break; fi
        sleep 10; pack
    done
    cp /tmp/sla.log "$OUT/sla_job.log"; tail -12 /tmp/sla.log
    pack
fi
