"""Sizes checked against the model before a run, and the CPU's default call."""

from __future__ import annotations

import pytest

from dit_accel.call_sizes import CPU_CALL, SizeRules, resolve_call

WAN = SizeRules(pipeline="WanPipeline", multiple=16, frame_step=4, max_positions=1024)
NATIVE = {"num_frames": 33, "height": 192, "width": 192, "num_inference_steps": 30, "guidance_scale": 5.0}


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ({"height": 7}, "height must be a multiple of 16 up to 16384 for WanPipeline, got 7"),
        ({"width": 16400}, "width must be a multiple of 16 up to 16384"),
        ({"num_frames": 100000}, r"num_frames must be 4k\+1 \(1, 5, 9, ..., 4093\) for WanPipeline, got 100000"),
        ({"num_frames": 8}, r"num_frames must be 4k\+1"),
    ],
)
def test_a_size_the_model_cannot_make_names_what_is_allowed(size, message):
    with pytest.raises(ValueError, match=message):
        WAN.check(**{"height": None, "width": None, "num_frames": None, **size})


def test_sizes_the_model_can_make_pass():
    WAN.check(height=16, width=16384, num_frames=4093)
    SizeRules("FluxPipeline", multiple=16, frame_step=None, max_positions=None).check(1024, 1024, None)


def test_on_a_cpu_the_small_size_is_chosen_and_said():
    call, note = resolve_call({"height": None}, NATIVE, on_cpu=True, video=True)
    assert call == {**NATIVE, **CPU_CALL}
    assert note.startswith("CPU defaults: 17 frames of 96x96, 8 steps") and "num_frames=33" in note


def test_given_sizes_win_and_a_gpu_keeps_the_native_size():
    given = {"num_frames": 9, "height": 64, "width": 64, "num_inference_steps": 2, "guidance_scale": None}
    assert resolve_call(given, NATIVE, on_cpu=True, video=True) == ({**given, "guidance_scale": 5.0}, None)
    assert resolve_call({}, NATIVE, on_cpu=False, video=True) == (NATIVE, None)
    call, _ = resolve_call({}, NATIVE, on_cpu=True, video=False)
    assert call["num_frames"] is None
