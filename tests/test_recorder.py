"""The ``record`` method: what it stores is exactly what produced each attention output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import dit_accel
from dit_accel.layout import TokenLayout
from dit_accel.methods.record import RecordConfig
from dit_accel.recorder import load_qkv, record_qkv, truncate_video
from tools.tiny_wan.build import TOY, build_pipeline

CALL = {
    "prompt": "a red circle moving right on a striped blue background",
    "num_inference_steps": 2,
    "height": 64,
    "width": 64,
    "num_frames": 9,
    "output_type": "np",
}


@pytest.fixture(scope="module")
def pipe():
    pipe = build_pipeline(TOY, seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def capture_attention(module: torch.nn.Module, inputs: list[torch.Tensor], outputs: list[torch.Tensor]):
    """Hooks storing the hidden states going into ``module`` and its outputs, call by call."""

    def before(_m, args, kwargs):
        inputs.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    def after(_m, _args, output):
        outputs.append(output.detach().clone())

    return [module.register_forward_pre_hook(before, with_kwargs=True), module.register_forward_hook(after)]


def test_recorded_qkv_reproduce_each_attention_output(pipe, tmp_path: Path) -> None:
    attn = pipe.transformer.blocks[1].attn1
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    hooks = capture_attention(attn, inputs, outputs)
    try:
        path = record_qkv(pipe, tmp_path / "qkv.safetensors", layers=[1], steps=[0, 1], **CALL)
    finally:
        for hook in hooks:
            hook.remove()
    calls, info = load_qkv(path)

    # classifier-free guidance: a conditional and an unconditional call per step
    assert [(c.step, c.layer, c.call) for c in calls] == [(0, 1, 0), (0, 1, 1), (1, 1, 0), (1, 1, 1)]
    assert info["model_class"] == "WanTransformer3DModel" and info["pipeline_class"] == "WanPipeline"
    assert len(outputs) == len(calls)
    heads, head_dim = attn.heads, TOY.head_dim
    for call, hidden, output in zip(calls, inputs, outputs, strict=True):
        assert call.q.shape == call.k.shape == call.v.shape == (1, 48, heads, head_dim)
        assert call.layout.grid == (3, 4, 4) and call.layout.video_len == 48 and call.layout.text_len == 0
        dense = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (call.q, call.k, call.v)))
        rebuilt = attn.to_out[0](dense.transpose(1, 2).flatten(2, 3))
        torch.testing.assert_close(rebuilt, output, rtol=1e-5, atol=1e-5)

        # v is the plain projection; q is the normed projection rotated by RoPE: same length per
        # rotated pair of channels, different values.
        torch.testing.assert_close(call.v, attn.to_v(hidden).unflatten(2, (heads, -1)))
        unrotated = attn.norm_q(attn.to_q(hidden)).unflatten(2, (heads, -1))
        pair_norms = [x.unflatten(-1, (-1, 2)).norm(dim=-1) for x in (call.q, unrotated)]
        torch.testing.assert_close(*pair_norms, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(call.q, unrotated, atol=1e-3)


def test_recording_does_not_change_the_generation(pipe, tmp_path: Path) -> None:
    plain = pipe(**CALL, generator=torch.Generator().manual_seed(5)).frames
    with dit_accel.apply(pipe, "record", layers=0, steps=1) as handle:
        recorded = pipe(**CALL, generator=torch.Generator().manual_seed(5)).frames
    np.testing.assert_array_equal(plain, recorded)
    assert [(c.step, c.layer) for c in handle.config.store.calls] == [(1, 0), (1, 0)]
    handle.config.store.save(tmp_path / "again.safetensors", note="manual")
    assert load_qkv(tmp_path / "again.safetensors")[1]["note"] == "manual"


def test_max_tokens_keeps_whole_latent_frames(pipe, tmp_path: Path) -> None:
    path = record_qkv(pipe, tmp_path / "short.safetensors", layers=[0], steps=[0], max_tokens=40, **CALL)
    calls, _ = load_qkv(path)
    assert calls[0].layout.grid == (2, 4, 4) and calls[0].layout.seq_len == 32
    assert calls[0].q.shape[1] == calls[0].k.shape[1] == 32


@pytest.mark.parametrize("text_first", [True, False])
def test_truncation_keeps_text_and_moves_its_range(text_first: bool) -> None:
    text_start, video_start = (0, 4) if text_first else (12, 0)
    layout = TokenLayout(
        seq_len=16, video_start=video_start, video_len=12, grid=(3, 2, 2), text_start=text_start, text_len=4
    )
    index, kept = truncate_video(layout, max_tokens=5)
    assert kept.grid == (1, 2, 2) and kept.video_len == 4 and kept.seq_len == 8 and kept.text_len == 4
    expected = [0, 1, 2, 3, 4, 5, 6, 7] if text_first else [0, 1, 2, 3, 12, 13, 14, 15]
    assert index.tolist() == expected
    assert (kept.text_start, kept.video_start) == ((0, 4) if text_first else (4, 0))


def test_options_are_validated(pipe, tmp_path: Path) -> None:
    assert "record" in dit_accel.list_methods()
    with pytest.raises(ValueError, match="layers must hold ints >= 0"):
        RecordConfig(layers=[-1])
    with pytest.raises(TypeError, match="steps must be None, an int or a sequence"):
        RecordConfig(steps="0")
    with pytest.raises(ValueError, match="max_tokens must be None or an int >= 1"):
        RecordConfig(max_tokens=0)
    with pytest.raises(TypeError, match="unknown option"):
        dit_accel.apply(pipe, "record", store=None)
    assert "store" not in RecordConfig.option_names()
    with pytest.raises(ValueError, match=r"never recorded: steps \[99\] \(recorded: \[\]\)"):
        record_qkv(pipe, tmp_path / "none.safetensors", steps=[99], **CALL)
    with pytest.raises(ValueError, match=r"never recorded: steps \[2\] \(recorded: \[0\]\)\."):
        record_qkv(pipe, tmp_path / "part.safetensors", steps=[0, 2], **CALL)
    with pytest.raises(ValueError, match=r"steps \[5\] \(recorded: \[1\]\); layers \[40\] \(recorded: \[0\]\)"):
        record_qkv(pipe, tmp_path / "both.safetensors", steps=[1, 5], layers=[0, 40], **CALL)
    with pytest.raises(ValueError, match="nothing was recorded"):
        RecordConfig().store.save(tmp_path / "empty.safetensors")
    assert not list(tmp_path.glob("*.safetensors"))
