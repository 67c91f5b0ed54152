"""Attention methods: one module per method, each a config dataclass and an op."""

from __future__ import annotations

from dit_accel.recorder import RecordAttention, RecordConfig
from dit_accel.registry import MethodSpec, register_method

from .dense import DenseConfig, make_dense_op
from .topk import TopKAttention, TopKConfig

register_method(MethodSpec("dense", DenseConfig, make_dense_op, "exact attention (the stock result)"))
register_method(MethodSpec("topk", TopKConfig, TopKAttention, "mean-pooled top-k / top-p block-sparse attention"))

register_method(MethodSpec("record", RecordConfig, RecordAttention, "exact attention that records q/k/v (after RoPE)"))

__all__ = ["DenseConfig", "TopKAttention", "TopKConfig"]
