"""The image tabs' shared job handler: its API signature, its streamed updates and its failures."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest

gradio = pytest.importorskip("gradio")

from dit_accel.demo_jobs import StopFlags  # noqa: E402
from dit_accel.demo_widgets import streamed_job  # noqa: E402


def run_pair(session, first_text, second, on_step=None):
    """A run of two inputs: reports one step, then returns (image, status)."""
    if first_text == "bad":
        raise ValueError("the first input is bad")
    if first_text == "bug":
        raise RuntimeError("a bug")
    on_step("job", 1, 1)
    return f"{session}:{first_text}:{second}", "done"


def progress_bar():
    reports = []
    return reports, lambda fraction, desc=None: reports.append((fraction, desc))


def test_the_handler_shows_the_api_names_and_asks_gradio_for_request_and_progress():
    job = streamed_job(run_pair, "s", StopFlags(), ["first", "second"], outputs=2)
    parameters = inspect.signature(job).parameters
    assert list(parameters) == ["first", "second", "request", "progress"]
    assert job.__annotations__["request"] is gradio.Request
    assert isinstance(parameters["progress"].default, gradio.Progress)
    with pytest.raises(ValueError, match="run_pair takes 2 inputs"):
        streamed_job(run_pair, "s", StopFlags(), ["first"], outputs=2)


@pytest.mark.parametrize("by_keyword", [False, True])
def test_the_handler_clears_then_streams_the_result_and_reports_steps(by_keyword):
    job = streamed_job(run_pair, "s", StopFlags(), ["first", "second"], outputs=2)
    reports, progress = progress_bar()
    request = SimpleNamespace(session_hash="page")
    if by_keyword:
        updates = list(job(second=2, first="a", request=request, progress=progress))
    else:
        updates = list(job("a", 2, request, progress))
    assert updates == [(None, "Running..."), ("s:a:2", "done")]
    assert reports and reports[-1][0] == 1.0


def test_a_user_error_shows_in_the_status_and_a_bug_is_raised():
    job = streamed_job(run_pair, "s", StopFlags(), ["first", "second"], outputs=3)
    request = SimpleNamespace(session_hash="page")
    updates = list(job("bad", 2, request, progress_bar()[1]))
    assert updates == [(None, None, "Running..."), (None, None, "**Error:** the first input is bad")]
    with pytest.raises(RuntimeError, match="a bug"):
        list(job("bug", 2, request, progress_bar()[1]))
