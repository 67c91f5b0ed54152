"""Word-level tokenizers and small T5-family text encoders of the tiny models, built offline.

The tokenizer is word-level over a caption grammar's words, lower-cases, drops punctuation and ends
every prompt with ``</s>``, as T5 tokenizers do, so the pipelines use it unchanged (it stands in for
CLIP's tokenizer too: CLIP pools at the first ``</s>``). Unknown words become ``<unk>``.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedModel, PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


def word_tokenizer(words: Sequence[str], model_max_length: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``words``; ids 0, 1, 2 are pad, eos and unk (T5's order)."""
    vocabulary = [PAD, EOS, UNK, *dict.fromkeys(words)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocabulary)}, unk_token=UNK))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"[^a-z\s]"), " ")]
    )
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK, model_max_length=model_max_length
    )


def t5_encoder(
    model_class: type[PreTrainedModel], vocab_size: int, d_model: int, num_layers: int, num_heads: int, d_ff: int
) -> PreTrainedModel:
    """A randomly initialised encoder-only T5-family model (``T5EncoderModel``, ``UMT5EncoderModel``)
    of the given size: gated-GELU feed-forward, 16 relative-position buckets, no dropout."""
    config = model_class.config_class(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_model // num_heads,
        d_ff=d_ff,
        num_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
    )
    return model_class(config)
