# The methods' GPU session on the lent H200, in stages (one device call each, results under $OUT):
#   bash benchmarks/gpu_methods.sh check    each method's kernel check script (correctness + times)
#   bash benchmarks/gpu_methods.sh kernel   bench kernel of every method at the Wan-1.3B shape, FA4 and Triton,
#                                           with the error on q/k/v recorded from the tiny model on this GPU
#   bash benchmarks/gpu_methods.sh e2e      bench e2e: Wan-1.3B (topk, pisa), HunyuanVideo 720p (fewer layers), FLUX 1024 px
#   bash benchmarks/gpu_methods.sh sweep    sweep: every method vs dense on 8 prompt/seed pairs, tiny model, native size
# Run after `source benchmarks/gpu_env.sh` (and FA4's install, see ../shared/gpu/FA4.md) from the checkout root.
set -u
STAGE=$1
REPO=$PWD
LOG=$OUT/$STAGE.log
mkdir -p "$OUT"
exec > >(tee -a "$LOG") 2>&1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python3 -c "import flash_attn.cute; print('FA4 importable')" || echo "FA4 not installed"

if [ "$STAGE" = check ]; then
    mkdir -p /tmp/check
    for script in "$REPO"/benchmarks/check_*.py; do
        name=$(basename "$script" .py)
        echo "=== $name"
        (cd /tmp && timeout 240 python3 "$script" --out "/tmp/check/$name.json") || echo "$name FAILED ($?)"
    done
    (cd /tmp && python3 "$REPO/benchmarks/profile_routing.py" --out /tmp/check/routing_profile.json)
    tar -C /tmp -czf "$OUT/check.tgz" check
fi

if [ "$STAGE" = kernel ]; then
    mkdir -p /tmp/kernel
    dit_accel_cli record --out /tmp/tiny_qkv.safetensors --seed 11 --prompt "a green ring moving left on a dotted black background"
    bench() {  # name, method, then bench options; packs after each so a cut-off run keeps the rest
        local name=$1; shift
        echo "=== $name"
        (cd /tmp && timeout 110 python3 -m dit_accel.cli bench kernel --shapes wan-1.3b-480p \
            --recorded /tmp/tiny_qkv.safetensors --out /tmp/kernel --name "$name" "$@") || echo "$name FAILED"
        tar -C /tmp -czf "$OUT/kernel.tgz" kernel
    }
    bench topk --method topk --densities 1.0 0.25 0.125 0.1 0.05
    bench pisa_o1 --method pisa -o order=1 --densities 0.25 0.125 0.05
    bench pisa_o0 --method pisa -o order=0 --densities 0.125
    bench rectified --method rectified --densities 0.25 0.125 0.11
    bench psa --method psa --densities 0.25 0.125 default
    bench svg_ear --method svg_ear --densities 0.22 0.125
    bench sla --method sla -o k_low=0.1 --densities 0.1 0.05
    echo "=== flashblock e2e"
    (cd /tmp && timeout 130 python3 "$REPO/benchmarks/flashblock_e2e.py" --out /tmp/kernel/flashblock_e2e.json) \
        || echo "flashblock e2e FAILED"
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
    (sleep 500; tar -C /tmp -czf "$OUT/sweep.tgz" sweep) &  # whatever is done before the call's limit
    dit_accel_cli sweep --out /tmp/sweep --pairs 8 \
        --variant "topk density=0.125 $plain" --variant "topk density=0.25 $plain" \
        --variant "pisa density=0.125 order=1 $plain" --variant "pisa density=0.125 order=0 $plain" \
        --variant "pisa density=0.25 order=1 $plain" --variant "pisa density=0.25 order=0 $plain" \
        --variant "rectified density=0.125 $plain" --variant "rectified density=0.25 $plain" \
        --variant "psa density=0.125 $plain" --variant "svg_ear density=0.125 $plain" \
        --variant "topk density=0.05 $plain" --variant "sla k_high=0.05 $plain"
    tar -C /tmp -czf "$OUT/sweep.tgz" sweep
fi

# The tiny FLUX trains in the background while the sweep runs (its timings are then not clean: the
# sweep's figures are PSNR/SSIM); flux-collect waits for it and brings the pipeline back.
if [ "$STAGE" = flux-start ]; then
    mkdir -p /tmp/flux_out
    OUT=/tmp/flux_out setsid nohup bash "$REPO/benchmarks/tiny_flux_train_job.sh" train 7 > /tmp/flux_job.log 2>&1 &
    echo "tiny FLUX training started"
fi
if [ "$STAGE" = flux-collect ]; then
    while pgrep -f tiny_flux.train > /dev/null; do sleep 5; done
    sleep 3
    tail -5 /tmp/flux_job.log
    cp /tmp/flux_out/* "$OUT/"
fi
