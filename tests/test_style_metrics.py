"""Style-consistency metrics on synthetic images, and CLIP metrics with a tiny CLIP saved offline."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

from dit_accel.style_metrics import (
    ClipScorer,
    color_histogram_distance,
    gram_distance,
    offline_style_metrics,
    to_rgb_uint8,
)

RED, BLUE, GREEN, YELLOW = (220, 40, 40), (30, 30, 160), (40, 190, 60), (230, 220, 40)


def stripes(phase: int, colours=(RED, BLUE), period: int = 8, size: int = 64) -> np.ndarray:
    x = np.tile(np.arange(size), (size, 1))
    on = (x + phase) % period < period / 2
    return np.where(on[..., None], np.array(colours[0], np.uint8), np.array(colours[1], np.uint8)).astype(np.uint8)


def noise(seed: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("metric", [gram_distance, color_histogram_distance])
def test_identical_images_have_zero_distance(metric):
    assert metric([stripes(0), stripes(0), stripes(0)]) == pytest.approx(0.0, abs=1e-12)


def test_gram_distance_ranks_same_style_below_mixed_styles():
    same_style = [stripes(0), stripes(3), stripes(5)]  # same palette, period and orientation, moved
    mixed = [stripes(0), stripes(0, colours=(GREEN, YELLOW), period=20), noise(0)]
    assert gram_distance(same_style) < 0.25 * gram_distance(mixed)
    assert 0.0 < gram_distance(mixed) <= 1.0


def test_histogram_ignores_layout_but_sees_palette():
    image = stripes(0)
    shuffled = np.random.default_rng(0).permutation(image.reshape(-1, 3)).reshape(image.shape)
    assert color_histogram_distance([image, shuffled]) == pytest.approx(0.0, abs=1e-9)
    recoloured = stripes(0, colours=(GREEN, YELLOW))
    assert color_histogram_distance([image, recoloured]) > 0.9


def test_batch_metric_is_the_mean_over_pairs_and_symmetric():
    a, b, c = stripes(0), stripes(0, colours=(GREEN, YELLOW)), noise(1)
    pairs = [gram_distance([x, y]) for x, y in ((a, b), (a, c), (b, c))]
    assert gram_distance([a, b, c]) == pytest.approx(np.mean(pairs))
    assert gram_distance([a, c]) == pytest.approx(gram_distance([c, a]))


def test_pil_tensor_and_array_inputs_agree():
    array = stripes(2)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    pil = PIL.Image.fromarray(array)
    assert np.array_equal(to_rgb_uint8(tensor), array) and np.array_equal(to_rgb_uint8(pil), array)
    assert offline_style_metrics([pil, noise(0)]) == offline_style_metrics([tensor, noise(0)])


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        ([noise(0)], ValueError, "at least 2 images"),
        ([noise(0), "image.png"], TypeError, "PIL images, numpy arrays or torch tensors"),
        ([noise(0), noise(1).astype(np.float32)], ValueError, r"\(H, W, 3\) uint8"),
        ([noise(0), torch.rand(64, 64, 3)], ValueError, r"\(3, H, W\) in \[0, 1\]"),
    ],
)
def test_bad_batches_are_refused(images, error, match):
    with pytest.raises(error, match=match):
        gram_distance(images)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A random tiny CLIP with a word-level tokenizer and an image processor, saved like a Hub model."""
    words = ["<pad>", "</s>", "<unk>", "a", "red", "blue", "striped", "noisy", "image"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=16
    )
    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**small, "vocab_size": len(words), "max_position_embeddings": 16, "eos_token_id": 1},
        vision_config={**small, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    path = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_clip_scores_from_a_local_model(clip_dir):
    scorer = ClipScorer.load(clip_dir)
    same = scorer.scores([stripes(0), stripes(0)], ["a red striped image", "a blue noisy image"])
    assert same["clip_image_similarity"] == pytest.approx(1.0, abs=1e-5)
    images, prompts = [stripes(0), noise(0), noise(1)], ["a red striped image", "a noisy image", "a blue image"]
    scores = scorer.scores(images, prompts)
    assert -1.0 <= scores["clip_text_score"] <= 1.0
    assert scores["clip_image_similarity"] < 1.0 - 1e-4
    image_emb, text_emb = scorer.image_embeddings(images), scorer.text_embeddings(prompts)
    assert scores["clip_text_score"] == pytest.approx(float(np.mean([image_emb[i] @ text_emb[i] for i in range(3)])))


def test_clip_refuses_missing_model_and_mismatched_prompts(clip_dir, tmp_path):
    with pytest.raises(ValueError, match="is not a local directory"):
        ClipScorer.load(tmp_path / "no-such-model")
    with pytest.raises(ValueError, match="got 2 images but 1 prompts"):
        ClipScorer.load(clip_dir).scores([noise(0), noise(1)], ["a red image"])
