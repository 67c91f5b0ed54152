"""``dit-accel compare`` on tiny random-weight Wan, HunyuanVideo and FLUX pipelines built offline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    HunyuanVideoPipeline,
    WanPipeline,
)
from PIL import Image
from tiny_models import tiny_hunyuan
from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel, T5Config, T5EncoderModel

from dit_accel.bench import environment
from dit_accel.cli import main as cli_main
from dit_accel.compare import compare, load_pipeline, parse_option, side_by_side
from dit_accel.tiny_model import GENERATION_DEFAULTS_FILE, TINY_MODEL_DIR
from tools.tiny_wan.build import TOY, build_pipeline
from tools.tiny_wan.text import build_tokenizer

PROMPT = "a red circle moving right on a striped blue background"
WAN_CALL = {"num_inference_steps": 2, "height": 64, "width": 64, "num_frames": 9}
# 3 latent frames of 4x4 tokens: three 16-token key blocks, so density 0.34 keeps one of them.
SPARSE = {"density": 0.34, "block_size": 16}


@pytest.fixture(scope="module")
def wan_pipe():
    pipe = build_pipeline(TOY, seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def one_layer_clip(vocab: int, width: int, heads: int, positions: int) -> CLIPTextModel:
    """A one-layer CLIP text encoder over the word-level tokenizer's ids (pad 0, end 1)."""
    config = CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=2 * width + 1,
        num_attention_heads=heads,
        num_hidden_layers=1,
        max_position_embeddings=positions,
        projection_dim=width,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
    )
    return CLIPTextModel(config)


def tiny_flux_pipeline() -> FluxPipeline:
    """FLUX with one dual and one single block; the word-level tokenizer stands in for CLIP's and T5's."""
    torch.manual_seed(0)
    clip_tokenizer, t5_tokenizer = build_tokenizer(model_max_length=16), build_tokenizer()
    vocab = len(t5_tokenizer)
    clip = one_layer_clip(vocab, width=32, heads=4, positions=16)
    t5 = T5EncoderModel(
        T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4, is_encoder_decoder=False)
    )
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_hunyuan_video_pipeline() -> HunyuanVideoPipeline:
    """HunyuanVideo with the tiny transformer of the adapter tests, a 3-layer Llama, a 1-layer CLIP and a
    3-level VAE (4x space, 4x time); the word-level tokenizer stands in for both tokenizers."""
    torch.manual_seed(0)
    llama_tokenizer, clip_tokenizer = build_tokenizer(model_max_length=512), build_tokenizer(model_max_length=77)
    vocab = len(llama_tokenizer)
    llama = LlamaModel(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=8,  # the transformer's text_embed_dim
            intermediate_size=16,
            num_hidden_layers=3,  # the pipeline reads the third-last hidden state
            num_attention_heads=2,
            num_key_value_heads=2,
            pad_token_id=0,
        )
    )
    clip = one_layer_clip(vocab, width=8, heads=2, positions=77)  # width: the transformer's pooled_projection_dim
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 3,
        up_block_types=("HunyuanVideoUpBlock3D",) * 3,
        block_out_channels=(8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        spatial_compression_ratio=4,
        temporal_compression_ratio=4,
        mid_block_add_attention=False,
    )
    pipe = HunyuanVideoPipeline(
        text_encoder=llama,
        tokenizer=llama_tokenizer,
        transformer=tiny_hunyuan(),
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder_2=clip,
        tokenizer_2=clip_tokenizer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_dense_against_dense_is_identical(wan_pipe) -> None:
    """Same seed and scheduler: the only possible difference is the attention method."""
    result = compare(wan_pipe, "dense", prompt=PROMPT, seed=3, **WAN_CALL)
    assert result.dense.shape == (9, 64, 64, 3)
    np.testing.assert_array_equal(result.dense, result.accelerated)
    assert result.psnr == math.inf and all(p == math.inf for p in result.psnr_per_frame)
    assert result.ssim == pytest.approx(1.0)
    assert result.to_dict()["psnr"] is None  # JSON has no infinity


def test_sparse_method_record_and_gif(wan_pipe, tmp_path: Path) -> None:
    result = compare(wan_pipe, "topk", SPARSE, prompt=PROMPT, seed=3, out_dir=tmp_path, **WAN_CALL)
    assert len(result.psnr_per_frame) == len(result.ssim_per_frame) == 9
    assert 0 < result.psnr < math.inf
    assert -1.0 <= result.ssim < 1.0
    assert result.dense_seconds > 0 and result.method_seconds > 0
    assert result.speedup == pytest.approx(result.dense_seconds / result.method_seconds)
    assert 0 < result.dense_transformer_seconds < result.dense_seconds

    record = json.loads(Path(result.outputs["record"]).read_text())
    assert record["method"] == "topk" and record["options"]["density"] == 0.34
    assert record["options"]["block_size"] == [16, 16]
    assert record["call"] == WAN_CALL
    assert record["psnr"] == pytest.approx(result.psnr)
    assert record["ssim_per_frame"] == pytest.approx(result.ssim_per_frame)
    assert record["frames"] == 9 and record["pipeline"] == "WanPipeline" and record["seed"] == 3
    for key in ("dense_seconds", "method_seconds", "speedup", "transformer_speedup", "versions", "dtype", "device"):
        assert key in record
    assert record["environment"] == environment(torch.device(record["device"]))

    with Image.open(result.outputs["video"]) as gif:
        assert gif.n_frames == 9
        assert gif.size == (2 * 64 + 4, 64 + 20)


def test_flux_compares_images(tmp_path: Path) -> None:
    pipe = tiny_flux_pipeline()
    call = {"num_inference_steps": 2, "height": 32, "width": 32, "guidance_scale": 3.5}
    result = compare(pipe, "topk", SPARSE, prompt="a red circle", seed=1, out_dir=tmp_path, **call)
    assert result.dense.shape == (1, 32, 32, 3)
    assert len(result.psnr_per_frame) == 1 and 0 < result.psnr < math.inf
    assert result.outputs["video"].endswith(".png")
    assert "num_frames" not in result.call
    with pytest.raises(ValueError, match="num_frames is only for video pipelines"):
        compare(pipe, "topk", prompt="a red circle", num_frames=9, **call)


def test_hunyuan_video_compares_videos_with_pipeline_arguments(tmp_path: Path) -> None:
    """HunyuanVideo joins video and (padded) text tokens in one attention; its Llama prompt template is
    cropped at a token count that only the real tokenizer matches, so the test passes its own template
    through ``pipeline_kwargs``, as a user with another tokenizer would."""
    pipe = tiny_hunyuan_video_pipeline()
    template = {"template": "describe: {}", "crop_start": 1}
    kwargs = {"prompt_template": template, "max_sequence_length": 12}
    call = {"num_inference_steps": 2, "height": 64, "width": 64, "num_frames": 9}  # 3 latent frames of 8x8 tokens
    result = compare(pipe, "topk", SPARSE, prompt=PROMPT, seed=2, out_dir=tmp_path, pipeline_kwargs=kwargs, **call)
    assert result.pipeline == "HunyuanVideoPipeline"
    assert result.dense.shape == (9, 64, 64, 3) and result.dense.std() > 0
    assert len(result.psnr_per_frame) == 9 and 0 < result.psnr < math.inf
    assert result.call == {**call, **kwargs}
    record = json.loads(Path(result.outputs["record"]).read_text())
    assert record["call"]["prompt_template"] == template and record["frames"] == 9

    with pytest.raises(ValueError, match="height is set by compare itself"):
        compare(pipe, "dense", prompt=PROMPT, pipeline_kwargs={"height": 64}, **call)
    with pytest.raises(ValueError, match="negative_promt is not an argument of HunyuanVideoPipeline"):
        compare(pipe, "dense", prompt=PROMPT, pipeline_kwargs={"negative_promt": "x"}, **call)


def test_cli_uses_the_model_folders_defaults(wan_pipe, tmp_path: Path, capsys) -> None:
    model = tmp_path / "toy-model"
    wan_pipe.save_pretrained(model)
    (model / GENERATION_DEFAULTS_FILE).write_text(json.dumps({**WAN_CALL, "guidance_scale": 2.0}))
    out = tmp_path / "out"
    argv = ["compare", "--model", str(model), "--method", "topk", "--device", "cpu", "--out", str(out)]
    argv += ["-o", "density=0.34", "-o", "block_size=16", "--steps", "1", "--height", "64", "--width", "64"]
    argv += ["--frames", "9", "--call", "max_sequence_length=64"]
    assert cli_main(argv) == 0
    record = json.loads((out / "compare-topk-seed0.json").read_text())
    assert record["call"] == {**WAN_CALL, "num_inference_steps": 1, "guidance_scale": 2.0, "max_sequence_length": 64}
    assert record["model"] == str(model) and record["dtype"] == "float32"
    out = capsys.readouterr().out
    assert "PSNR" in out and "CPU defaults" not in out  # every size given: no CPU size chosen


def test_default_model_is_the_shipped_tiny_model(monkeypatch, tmp_path: Path) -> None:
    pipe = load_pipeline(str(TINY_MODEL_DIR), device="cpu")
    assert isinstance(pipe, WanPipeline) and pipe.transformer.dtype == torch.float32
    missing = tmp_path / "tiny-wan-t2v"
    monkeypatch.setattr("dit_accel.compare.TINY_MODEL_DIR", missing)
    with pytest.raises(FileNotFoundError, match=r"ships in the repository's assets/ .* pass --model"):
        load_pipeline(str(missing), device="cpu")


def test_bad_arguments_are_named(wan_pipe) -> None:
    with pytest.raises(ValueError, match="unknown method"):
        compare(wan_pipe, "nonsense", prompt=PROMPT, **WAN_CALL)
    with pytest.raises(ValueError, match="height must be a positive int"):
        compare(wan_pipe, "dense", prompt=PROMPT, **{**WAN_CALL, "height": 0})
    with pytest.raises(ValueError, match="video_format must be one of gif, mp4"):
        compare(wan_pipe, "dense", prompt=PROMPT, video_format="avi", **WAN_CALL)
    assert parse_option("tile=(2, 8, 8)") == ("tile", (2, 8, 8))
    assert parse_option("name=fast") == ("name", "fast")
    with pytest.raises(ValueError, match="same shape"):
        side_by_side(np.zeros((1, 4, 4, 3), np.uint8), np.zeros((1, 4, 5, 3), np.uint8), "a", "b")
