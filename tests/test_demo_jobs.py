"""Long demo jobs: step reports with a time estimate, stopping at the next step, per-session flags."""

from __future__ import annotations

import pytest

from dit_accel.demo_jobs import StepProgress, StopFlags, Stopped


def test_each_step_reports_its_fraction_and_a_time_estimate(monkeypatch):
    clock = iter([100.0, 104.0, 108.0])  # start, then 4 s a step
    monkeypatch.setattr("dit_accel.demo_jobs.time.perf_counter", lambda: next(clock))
    reports = []
    progress = StepProgress(lambda fraction, text: reports.append((fraction, text)), StopFlags().start("a"))
    progress("dense", 1, 4)
    progress("dense", 2, 4)
    assert reports[0] == (1 / 8, "dense: step 1/4 (4.0 s a step, about 28 s left)")
    assert reports[1] == (2 / 8, "dense: step 2/4 (4.0 s a step, about 24 s left)")


def test_a_stopped_job_raises_at_its_next_step_and_a_new_job_starts_clear():
    flags = StopFlags()
    progress = StepProgress(lambda *_: None, flags.start("a"))
    progress("dense", 1, 3)
    flags.stop("b")  # another session's stop does not touch this one
    progress("dense", 2, 3)
    flags.stop("a")
    with pytest.raises(Stopped, match="during the dense run, after step 3 of 3"):
        progress("dense", 3, 3)
    assert not flags.start("a").is_set()


def test_a_closed_page_stops_its_job():
    flags = StopFlags()
    flag = flags.start("a")
    flags.forget("a")
    assert flag.is_set()
    flags.stop("a")  # nothing left to stop: harmless
