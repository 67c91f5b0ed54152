"""FlashBlock end to end: a full-size random-weight SkyReels-V2-DF-1.3B transformer in diffusion-forcing mode.

A schedule of denoising steps as ``SkyReelsV2DiffusionForcingPipeline`` runs them asynchronously
(``causal_block_size`` frames per block, block-causal frame mask): the first ``--clean-blocks``
blocks are finished (timestep 0, fixed latents: the external keys), the next block is denoised step
by step and the later ones lag behind it. Each variant runs the same steps with one ``apply()``
handle (caches live across steps); per step it records the self-attention time (CUDA events around
every ``attn1`` attention call, i.e. the op after q/k/v) and the whole forward's time, and the
output's relative L1 error against the dense run of the same step.

Variants: ``dense`` (the stock attention call with the mask), ``flashblock`` with ``refresh_every=1``
(no reuse: the block-causal rectangles alone; the baseline of the ``*_vs_uncached`` ratios),
``flashblock`` (calibrated reuse), ``topk`` (runs dense under the mask, and says so), and
``flashblock`` with ``inner="topk"`` refreshed every step (sparse, no reuse) and with reuse. Weights are random:
quality numbers only show that nothing breaks; the speed is what this measures.

    python benchmarks/flashblock_e2e.py --out flashblock_e2e.json            # H200: 540p, 97 frames
    python benchmarks/flashblock_e2e.py --tiny --out /tmp/flashblock.json    # CPU: tiny config
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import dit_accel
from dit_accel.bench import environment, rel_l1

# Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers (diffusers' scripts/convert_skyreelsv2_to_diffusers.py);
# num_frame_per_block is what the pipeline sets from causal_block_size.
DF_1_3B = {
    "patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
    "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30,
    "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "inject_sample_info": True,
    "added_kv_proj_dim": None,
}  # fmt: skip
TINY = {"num_attention_heads": 2, "attention_head_dim": 32, "ffn_dim": 64, "text_dim": 16, "num_layers": 2,
        "freq_dim": 32, "in_channels": 4, "out_channels": 4}  # fmt: skip
# 540p, 97 frames: (97 - 1) / 4 + 1 = 25 latent frames of 544/8 x 960/8; 51,000 tokens after 1x2x2 patches.
FULL_LATENT = (25, 68, 120)
TINY_LATENT = (6, 8, 10)


class AttentionTimer:
    """Times every attention call of the installed ops: CUDA events on the GPU, wall clock on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.spans: list[Any] = []

    def wrap(self, model: torch.nn.Module) -> None:
        for block in model.blocks:
            binding = block.attn1.processor.binding
            binding.op = self._timed(binding.op)

    def _timed(self, op):
        def timed(q, k, v, ctx):
            if self.device.type != "cuda":
                start = time.perf_counter()
                out = op(q, k, v, ctx)
                self.spans.append((time.perf_counter() - start) * 1e3)
                return out
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = op(q, k, v, ctx)
            end.record()
            self.spans.append((start, end))
            return out

        return timed

    def take_ms(self) -> float:
        """Attention milliseconds since the last call (synchronises)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        total = sum(s if isinstance(s, float) else s[0].elapsed_time(s[1]) for s in self.spans)
        self.spans.clear()
        return total


def schedule(steps: int, frames: int, per_block: int, clean_blocks: int, ar_step: int) -> list[list[float]]:
    """Per-step frame timesteps: clean blocks at 0, the next block from 999 down, later blocks ``ar_step`` behind."""
    levels = torch.linspace(999.0, 0.0, steps + 2)[1:-1].tolist()
    rows = []
    for step in range(steps):
        row = [0.0] * (clean_blocks * per_block)
        for block in range(clean_blocks, frames // per_block):
            lag = (block - clean_blocks) * ar_step
            row += [levels[step - lag] if step >= lag else 999.0] * per_block
        rows.append(row + [999.0] * (frames - len(row)))
    return rows


def make_inputs(config: dict, latent: tuple[int, int, int], device: torch.device, dtype: torch.dtype,
                timesteps: list[list[float]]) -> list[dict[str, Any]]:  # fmt: skip
    """One transformer call per step: fixed clean frames, noisy frames mixed towards a fixed target."""
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (1, config["in_channels"], *latent)
    clean = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    noise = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    text = torch.randn(1, 512, config["text_dim"], generator=gen, device=device, dtype=dtype)
    calls = []
    for row in timesteps:
        sigma = torch.tensor(row, device=device, dtype=dtype).view(1, 1, -1, 1, 1) / 1000.0
        calls.append({
            "hidden_states": (1 - sigma) * clean + sigma * noise, "timestep": torch.tensor([row], device=device),
            "encoder_hidden_states": text, "enable_diffusion_forcing": True, "fps": [0], "return_dict": False,
        })  # fmt: skip
    return calls


def run_variant(model: torch.nn.Module, method: str, options: dict, calls: list[dict], device: torch.device,
                reference: list[torch.Tensor] | None) -> dict[str, Any]:  # fmt: skip
    """Warm up on the first two steps, then time the schedule with a fresh handle."""
    with dit_accel.apply(model, method, **options):
        for call in calls[:2]:
            model(**call)
    timer = AttentionTimer(device)
    attention_ms, step_ms, errors, outputs = [], [], [], []
    with dit_accel.apply(model, method, **options) as handle:
        timer.wrap(model)
        for index, call in enumerate(calls):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            out = model(**call)[0]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_ms.append((time.perf_counter() - start) * 1e3)
            attention_ms.append(timer.take_ms())
            outputs.append(out)
            if reference is not None:
                errors.append(rel_l1(out, reference[index]))
        stats = dict(getattr(handle.method, "stats", {}))
        fallbacks = handle.dense_fallbacks
    return {
        "method": method, "options": options, "attention_ms": attention_ms, "step_ms": step_ms,
        "attention_ms_mean": statistics.fmean(attention_ms), "step_ms_mean": statistics.fmean(step_ms),
        "rel_l1_vs_dense": errors, "stats": stats, "dense_fallbacks": fallbacks, "outputs": outputs,
    }  # fmt: skip


def variants(refresh_every: int, density: float, block_size: list[int]) -> list[tuple[str, str, dict]]:
    common = {"dense_steps": 0, "dense_layers": 0}
    sparse = {"density": density, "block_size": tuple(block_size)}
    return [
        ("dense", "dense", {}),
        ("flashblock_refresh1", "flashblock", common | {"refresh_every": 1}),
        ("flashblock", "flashblock", common | {"refresh_every": refresh_every}),
        ("topk", "topk", common | sparse),
        ("flashblock_topk_refresh1", "flashblock", common | sparse | {"refresh_every": 1, "inner": "topk"}),
        ("flashblock_topk", "flashblock", common | sparse | {"refresh_every": refresh_every, "inner": "topk"}),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--tiny", action="store_true", help="tiny config and latent (runs on the CPU)")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps timed")
    parser.add_argument("--latent", type=int, nargs=3, default=None, help="latent frames, height, width")
    parser.add_argument("--causal-block", type=int, default=5, help="latent frames per causal block")
    parser.add_argument("--clean-blocks", type=int, default=2, help="finished blocks (external keys)")
    parser.add_argument("--ar-step", type=int, default=5, help="steps each later block lags behind")
    parser.add_argument("--refresh-every", type=int, default=4)
    parser.add_argument("--density", type=float, default=0.25, help="topk density")
    parser.add_argument("--block-size", type=int, nargs=2, default=None, help="topk query and key blocks")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = DF_1_3B | (TINY if args.tiny else {}) | {"num_frame_per_block": args.causal_block}
    latent = tuple(args.latent or (TINY_LATENT if args.tiny else FULL_LATENT))
    per_block = args.causal_block
    if args.tiny:
        per_block = config["num_frame_per_block"] = 2
    from diffusers import SkyReelsV2Transformer3DModel

    torch.manual_seed(0)
    with torch.device(device):
        model = SkyReelsV2Transformer3DModel(**config).to(dtype).eval()
    clean_blocks = args.clean_blocks if not args.tiny else 1
    timesteps = schedule(args.steps, latent[0], per_block, clean_blocks, args.ar_step)
    calls = make_inputs(config, latent, device, dtype, timesteps)
    records: dict[str, Any] = {}
    reference = None
    with torch.no_grad():
        block_size = args.block_size or ([16, 16] if args.tiny else [128, 64])
        for name, method, options in variants(args.refresh_every, args.density, block_size):
            record = run_variant(model, method, options, calls, device, reference)
            outputs = record.pop("outputs")
            reference = reference or outputs
            records[name] = record
            base = records["dense"]
            record["attention_speedup"] = base["attention_ms_mean"] / record["attention_ms_mean"]
            record["step_speedup"] = base["step_ms_mean"] / record["step_ms_mean"]
            if "flashblock_refresh1" in records:  # the baseline: no reuse, every step computed
                uncached = records["flashblock_refresh1"]
                record["attention_speedup_vs_uncached"] = uncached["attention_ms_mean"] / record["attention_ms_mean"]
                record["step_speedup_vs_uncached"] = uncached["step_ms_mean"] / record["step_ms_mean"]
            print(
                f"{name:20s} attention {record['attention_ms_mean']:9.1f} ms (x{record['attention_speedup']:.2f})  "
                f"step {record['step_ms_mean']:9.1f} ms (x{record['step_speedup']:.2f})  "
                f"rel L1 max {max(record['rel_l1_vs_dense'] or [0.0]):.2e}  {record['stats']} "
                f"{record['dense_fallbacks']}",
                flush=True,
            )
    exact = max(records["flashblock_refresh1"]["rel_l1_vs_dense"])
    check = "PASS" if exact < (2e-2 if dtype == torch.bfloat16 else 1e-4) else "FAIL"
    print(f"{check}: flashblock refreshed every step vs dense, max rel L1 {exact:.2e}")
    result = environment(device) | {
        "kind": "flashblock_e2e", "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        "latent": list(latent), "tokens": latent[0] * (latent[1] // 2) * (latent[2] // 2), "dtype": str(dtype),
        "frame_timesteps": timesteps, "clean_blocks": clean_blocks, "refresh_every": args.refresh_every,
        "density": args.density,
        "exact_check": check, "variants": records,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0 if check == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
