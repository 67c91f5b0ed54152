"""Tokenizer and text encoder of the tiny Wan model, built offline.

The tokenizer is word-level over the caption grammar (:func:`tools.tiny_wan.data.vocabulary`; see
:func:`tools.tiny_common.text.word_tokenizer`), so ``WanPipeline`` uses it unchanged.

The text encoder is a two-layer ``UMT5EncoderModel`` (the class Wan ships with) trained jointly with
the transformer. A frozen random encoder would be cheaper by a rounding error but worse: Wan's
cross-attention has no positions of its own, so "a red circle on a blue background" and "a blue circle
on a red background" differ only in what the encoder mixes into each word from its neighbours, and a
random encoder mixes weakly and arbitrarily. Trained, it learns which colour belongs to the object.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerFast, UMT5EncoderModel

from tools.tiny_common.drawing import host_to_device
from tools.tiny_common.text import t5_encoder, word_tokenizer

from .data import vocabulary

# Long enough for any caption of the grammar plus </s>; prompts are padded to this when training.
CAPTION_TOKENS = 24
# WanPipeline's default max_sequence_length: the transformer sees this many text positions.
PIPELINE_TEXT_LENGTH = 512


def build_tokenizer(model_max_length: int = PIPELINE_TEXT_LENGTH) -> PreTrainedTokenizerFast:
    """The word-level tokenizer over the grammar; ids 0, 1, 2 are pad, eos and unk (T5's order)."""
    return word_tokenizer(vocabulary(), model_max_length)


def build_text_encoder(vocab_size: int, d_model: int, num_layers: int, num_heads: int, d_ff: int) -> UMT5EncoderModel:
    """A randomly initialised ``UMT5EncoderModel`` of the given size (no dropout)."""
    return t5_encoder(UMT5EncoderModel, vocab_size, d_model, num_layers, num_heads, d_ff)


def encode_prompts(
    tokenizer: PreTrainedTokenizerFast,
    text_encoder: UMT5EncoderModel,
    prompts: Sequence[str],
    pad_to: int = PIPELINE_TEXT_LENGTH,
) -> torch.Tensor:
    """``(B, pad_to, d_model)`` prompt embeddings exactly as ``WanPipeline`` makes them.

    The pipeline encodes ``max_sequence_length`` tokens, keeps the unpadded ones and zero-fills the
    rest; the encoder masks padding, so encoding :data:`CAPTION_TOKENS` tokens and zero-filling to
    ``pad_to`` gives the same tensor at a fraction of the cost. Gradients flow into the encoder.
    """
    if pad_to < CAPTION_TOKENS:
        raise ValueError(f"pad_to must be >= {CAPTION_TOKENS}, got {pad_to}")
    inputs = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=CAPTION_TOKENS,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    mask = host_to_device(inputs.attention_mask, text_encoder.device)
    hidden = text_encoder(host_to_device(inputs.input_ids, text_encoder.device), mask).last_hidden_state
    hidden = hidden * mask[..., None].to(hidden.dtype)
    return torch.nn.functional.pad(hidden, (0, 0, 0, pad_to - CAPTION_TOKENS))
