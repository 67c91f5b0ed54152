"""AttenCraft's LoRA training at toy size: loss terms from the masks, mask updates, adapters that load."""

from __future__ import annotations

import json
import warnings

import PIL.Image
import pytest
import torch
from safetensors.torch import load_file
from test_compare import tiny_flux_pipeline

from dit_accel.editing.attencraft_prompts import StepPrompts, subset_positions
from dit_accel.editing.attencraft_train import (
    AttenCraftTrainConfig,
    _batch,
    _train_step,
    js_divergence,
    token_masks,
    train_attencraft,
)
from dit_accel.editing.attention_maps import capture_attention_maps

PROMPT = "a red star left of a blue ring on a striped gray background"
CONCEPTS = ["red star", "blue ring"]
SIZE = 32


def _pipe():
    """The toy FluxPipeline in eval mode (its T5 has dropout), so that repeated calls agree."""
    pipe = tiny_flux_pipeline()
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def _labels() -> torch.Tensor:
    labels = torch.full((SIZE, SIZE), -1)
    labels[:, :12] = 0
    labels[20:, 20:] = 1
    return labels


def _transformer_out(pipe) -> torch.Tensor:
    return pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=2, max_sequence_length=16,
                generator=torch.Generator().manual_seed(0), output_type="latent").images  # fmt: skip


def test_js_divergence_and_token_masks():
    p = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert js_divergence(p, p * 3).abs().item() < 1e-6
    assert js_divergence(p, torch.tensor([[0.0, 0.0, 1.0, 1.0]])).item() == pytest.approx(torch.log(torch.tensor(2.0)))
    masks = token_masks(_labels(), 2, (4, 4))
    assert masks.shape == (2, 16) and masks[0].tolist()[:4] == [1.0, 0.5, 0.0, 0.0] and masks[1, -1] == 1.0


def test_loss_terms_come_from_the_masks():
    pipe = _pipe()
    image = PIL.Image.new("RGB", (SIZE, SIZE), (120, 40, 40))
    batch = _batch(pipe, image)
    text = StepPrompts(pipe, PROMPT, CONCEPTS, (), " and ", 16).text([0])
    assert text.prompt == PROMPT and text.tokens == [[1, 2]]
    cfg = AttenCraftTrainConfig(attention_weight=2.0)
    left = token_masks(_labels(), 2, batch.grid)
    moved = left.flip(-1)

    def step(target):
        with capture_attention_maps(pipe.transformer, forwards=None, affinity=False) as capture:
            return _train_step(
                pipe.transformer, batch, capture, text, target, [0], cfg, torch.Generator().manual_seed(3)
            )

    a, b = step(left), step(moved)
    assert a["diffusion"] != b["diffusion"] and a["attention"] != b["attention"]
    torch.testing.assert_close(a["total"], a["diffusion"] + 2.0 * a["attention"])
    with capture_attention_maps(pipe.transformer, forwards=None, affinity=False) as capture:
        noise = torch.randn(batch.latents.shape, generator=torch.Generator().manual_seed(3))
        batch.forward(pipe.transformer, text, noise, 0.5)
        own = capture.result().token_maps(text.tokens[0])
    assert js_divergence(own[None], own[None] * 2).item() < 1e-6  # a map matching its mask costs nothing


def test_training_saves_adapters_that_change_and_reload(tmp_path):
    pipe = _pipe()
    image = PIL.Image.new("RGB", (SIZE, SIZE), (120, 40, 40))
    base = _transformer_out(pipe)
    cfg = AttenCraftTrainConfig(steps=3, lr=1e-2, rank=2, mask_every=2, save_every=3, sampling="reweighted", floor=0.0)
    result = train_attencraft(
        pipe, image, PROMPT, CONCEPTS, tmp_path, masks=_labels(), config=cfg, max_sequence_length=16
    )
    assert torch.equal(_transformer_out(pipe), base)  # the pipeline is left as it was
    assert [u["step"] for u in result.mask_updates] == [2] and 0.0 <= result.mask_updates[0]["ssim"] <= 1.0
    assert len(result.losses) == 3 and all(entry["attention"] > 0 for entry in result.losses)
    info = json.loads((tmp_path / "attencraft_train.json").read_text())
    assert info["concepts"] == CONCEPTS and info["config"]["sampling"] == "reweighted"
    outputs = []
    for folder in (tmp_path, tmp_path / "checkpoint-3", tmp_path):
        pipe.load_lora_weights(folder)
        outputs.append(_transformer_out(pipe))
        pipe.unload_lora_weights()
    assert not torch.allclose(outputs[0], base)
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])
    assert torch.equal(_transformer_out(pipe), base)


def test_subset_prompts_name_the_sampled_concepts():
    pipe = _pipe()
    plain = "a {} on a plain gray background"
    prompts = StepPrompts(pipe, PROMPT, [*CONCEPTS, "gray"], (plain, "a red star left of {}"), " left of a ", 16)
    one = prompts.text([1])
    assert one.prompt == "a blue ring on a plain gray background" and one.tokens == [[1, 2]]
    two = prompts.text([0, 1])
    assert two.prompt == "a red star left of a blue ring on a plain gray background"
    assert two.tokens == [[1, 2], [6, 7]]
    # the template's own "red star" comes first in the prompt: the inserted one is the concept
    assert prompts.text([0], draw=1).tokens == [[5, 6]]
    everything = prompts.text([0, 1, 2])
    assert everything.prompt == PROMPT and everything.tokens == [[1, 2], [6, 7], [11]]
    assert prompts.whole().tokens == everything.tokens
    assert torch.equal(prompts.text([1]).prompt_embeds, one.prompt_embeds)  # encoded once, reused
    assert StepPrompts(pipe, PROMPT, CONCEPTS, (), " and ", 16).text([1]).prompt == PROMPT
    tokenizer = pipe.tokenizer_2
    assert subset_positions(tokenizer, "a {} right of a red star", ["red star"], " and ", 16) == [[1, 2]]
    with pytest.warns(UserWarning, match="does not know"):  # the toy vocabulary has no "photo"
        StepPrompts(pipe, PROMPT, CONCEPTS, ("a photo of {}",), " and ", 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        StepPrompts(pipe, PROMPT, CONCEPTS, (plain,), " and ", 16)  # its own words: no warning
    long = PROMPT + " left of a {}"  # the inserted phrase falls beyond the 16 tokens: refused before training
    with pytest.raises(ValueError, match="not in the prompt"):
        StepPrompts(pipe, PROMPT, CONCEPTS, ("a {} on a plain gray background", long), " and ", 16)


def test_training_prompts_each_step_with_what_it_draws(tmp_path, monkeypatch):
    import dit_accel.editing.attencraft_train as module

    seen, step = [], module._train_step

    def recording_step(model, batch, capture, text, target, chosen, cfg, generator):
        seen.append((tuple(chosen), text.prompt, text.tokens))
        return step(model, batch, capture, text, target, chosen, cfg, generator)

    monkeypatch.setattr(module, "_train_step", recording_step)
    pipe = _pipe()
    image = PIL.Image.new("RGB", (SIZE, SIZE), (120, 40, 40))
    templates = ["a {} on a plain gray background", "a {} on a dotted black background"]
    config = AttenCraftTrainConfig(steps=12, lr=1e-3, rank=2, mask_every=0, subset_template=templates, seed=3)
    train_attencraft(pipe, image, PROMPT, CONCEPTS, tmp_path, _labels(), config, 16)
    ones = {prompt for chosen, prompt, _ in seen if len(chosen) == 1}
    assert ones <= {t.replace("{}", c) for t in templates for c in CONCEPTS}
    assert {prompt.split(" on ")[1] for prompt in ones} == {t.split(" on ")[1] for t in templates}  # both drawn
    assert {prompt for chosen, prompt, _ in seen if len(chosen) == 2} == {PROMPT}
    tokenizer = pipe.tokenizer_2
    for chosen, prompt, tokens in seen:  # the maps are read at the drawn concepts' own words
        ids = tokenizer(prompt).input_ids
        assert [tokenizer.decode([ids[i] for i in where]) for where in tokens] == [CONCEPTS[k] for k in chosen]


def test_a_non_finite_loss_stops_training_before_any_adapter_is_saved(tmp_path, monkeypatch):
    import dit_accel.editing.attencraft_train as module

    step = module._train_step

    def nan_at_step_two(model, batch, capture, text, target, chosen, cfg, generator):
        losses = step(model, batch, capture, text, target, chosen, cfg, generator)
        calls.append(1)
        return {**losses, "total": losses["total"] * float("nan")} if len(calls) == 2 else losses

    calls: list[int] = []
    monkeypatch.setattr(module, "_train_step", nan_at_step_two)
    pipe = _pipe()
    base = _transformer_out(pipe)
    image = PIL.Image.new("RGB", (SIZE, SIZE), (120, 40, 40))
    config = AttenCraftTrainConfig(steps=4, lr=1e-2, rank=2, mask_every=0)
    with pytest.raises(FloatingPointError, match="at step 2"):
        train_attencraft(pipe, image, PROMPT, CONCEPTS, tmp_path, _labels(), config, 16)
    assert not (tmp_path / "pytorch_lora_weights.safetensors").exists()
    assert torch.equal(_transformer_out(pipe), base)  # the pipeline is left as it was


def test_training_on_cuda_keeps_cudnn_attention_out():
    from dit_accel.editing.attencraft_train import _trainable_attention

    assert torch.backends.cuda.cudnn_sdp_enabled()
    with _trainable_attention(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled() and torch.backends.cuda.flash_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored after training
    with _trainable_attention(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled()


def test_seeded_training_is_repeatable_and_the_prompts_matter(tmp_path):
    pipe = _pipe()
    image = PIL.Image.new("RGB", (SIZE, SIZE), (120, 40, 40))
    adapters = []
    for index, template in enumerate((None, "a {} on a plain gray background", "a {} on a plain gray background")):
        config = AttenCraftTrainConfig(steps=2, lr=1e-2, rank=2, mask_every=0, subset_template=template, seed=1)
        torch.rand(index + 1)  # the global generator differs from run to run; the training must not care
        train_attencraft(pipe, image, PROMPT, CONCEPTS, tmp_path / str(index), _labels(), config, 16)
        pipe.load_lora_weights(tmp_path / str(index))
        adapters.append(_transformer_out(pipe))
        pipe.unload_lora_weights()
    assert torch.equal(adapters[1], adapters[2])  # the seed fixes the run, the adapters' initial weights too
    assert not torch.allclose(adapters[0], adapters[1])  # the steps of one concept saw another prompt


def test_config_errors():
    with pytest.raises(ValueError, match="sampling must be one of"):
        AttenCraftTrainConfig(sampling="greedy")
    with pytest.raises(ValueError, match="mask_ssim"):
        AttenCraftTrainConfig(mask_ssim=1.5)
    with pytest.raises(ValueError, match="steps"):
        AttenCraftTrainConfig(steps=0)
    for template in ("a photo", "a {} and {}", 3, [], ["a {}", "a photo"]):
        with pytest.raises(ValueError, match="subset_template"):
            AttenCraftTrainConfig(subset_template=template)
    for targets in ((), None, ["to_q", ""], [3]):
        with pytest.raises(ValueError, match="lora_targets"):
            AttenCraftTrainConfig(lora_targets=targets)
    assert AttenCraftTrainConfig(lora_targets="to_q").lora_targets == ("to_q",)
    with pytest.raises(ValueError, match="subset_joiner"):
        AttenCraftTrainConfig(subset_joiner=3)
    for name, value in (("seed", None), ("seed", 1.5), ("steps", True), ("seed", -1)):
        with pytest.raises(ValueError, match=name):
            AttenCraftTrainConfig(**{name: value})
    several = AttenCraftTrainConfig(subset_template=["a {}", "the {}"])
    assert several.templates == ("a {}", "the {}") and AttenCraftTrainConfig(subset_template=None).templates == ()


def test_command_line_trains_with_a_template_list(tmp_path):
    from dit_accel.cli import main
    from dit_accel.tiny_model import GENERATION_DEFAULTS_FILE

    _pipe().save_pretrained(tmp_path / "model")
    call = {"height": SIZE, "width": SIZE, "max_sequence_length": 16}
    (tmp_path / "model" / GENERATION_DEFAULTS_FILE).write_text(json.dumps(call))
    templates = ["a {} on a plain gray background", "a {} on a dotted black background"]
    command = ["attencraft-train", "--model", str(tmp_path / "model"), "--prompt", PROMPT, "--device", "cpu"]
    status = main(
        [
            *command,
            *("--out", str(tmp_path / "out"), "--concepts", *CONCEPTS, "--train-steps", "2"),
            *("--num-inference-steps", "2", "-o", f"subset_template={templates}", "-o", "rank=2"),
            *("-o", "lora_targets=('to_q', 'to_v')"),
        ]
    )
    assert status == 0
    out = tmp_path / "out"
    assert {"pytorch_lora_weights.safetensors", "training_image.png", "training_masks.png"} <= {
        p.name for p in out.iterdir()
    }
    config = json.loads((out / "attencraft_train.json").read_text())["config"]
    assert config["subset_template"] == templates and config["lora_targets"] == ["to_q", "to_v"]
    layers = {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in load_file(out / "pytorch_lora_weights.safetensors")}
    assert layers == {"to_q", "to_v"}  # adapters on the chosen layers only
    assert main([*command, "--concepts", "red star", "-o", "templates=x"]) == 2  # refused before any work
