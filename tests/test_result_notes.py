"""What a comparison says beside its numbers: dense fallbacks with their reason, slower than dense."""

from __future__ import annotations

from types import SimpleNamespace

from dit_accel.result_notes import result_notes


def result(**changes):
    fields = {"method": "topk", "dense_fallbacks": {}, "psnr": 20.0, "transformer_speedup": 1.5, "device": "cuda:0"}
    return SimpleNamespace(**{**fields, **changes})


def test_a_fast_sparse_run_needs_no_note():
    assert result_notes(result()) == []


def test_dense_fallbacks_are_counted_with_their_reason():
    notes = result_notes(result(dense_fallbacks={"only 192 video tokens: too short for 128x64 blocks": 16}))
    assert notes == ["topk ran dense for 16 attention call(s): only 192 video tokens: too short for 128x64 blocks"]


def test_identical_frames_without_a_count_still_say_so():
    assert "identical to dense" in result_notes(result(psnr=float("inf")))[0]
    assert result_notes(result(method="dense", psnr=float("inf"))) == []


def test_slower_than_dense_is_said_with_the_cpu_reason():
    assert result_notes(result(transformer_speedup=0.76)) == ["topk was slower than dense (0.76x)"]
    (note,) = result_notes(result(transformer_speedup=0.76, device="cpu"))
    assert note.startswith("topk was slower than dense (0.76x): on a CPU")
