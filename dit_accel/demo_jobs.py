"""Long demo jobs: per-step progress with a time estimate from the measured step rate, and stopping
at the next step when the user presses Stop or closes the page.

Free of Gradio: the app passes a ``report(fraction, text)`` function (its progress bar) and the
browser session's id.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Stopped(Exception):
    """The job was stopped by its user (Stop button, or the page was closed)."""


class StopFlags:
    """One stop flag per browser session; a new job of the session clears it."""

    def __init__(self) -> None:
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        """The flag of a job that starts now, cleared."""
        with self._lock:
            flag = self._flags.setdefault(session, threading.Event())
        flag.clear()
        return flag

    def stop(self, session: str) -> None:
        """Ask the session's running job to stop at its next step (harmless when none runs)."""
        with self._lock:
            flag = self._flags.get(session)
        if flag is not None:
            flag.set()

    def forget(self, session: str) -> None:
        """Stop the session's job and drop its flag (the page was closed)."""
        self.stop(session)
        with self._lock:
            self._flags.pop(session, None)


class StepProgress:
    """A ``compare`` step callback: reports each step of ``runs`` runs and stops when ``stop`` is set."""

    def __init__(self, report: Callable[[float, str], None], stop: threading.Event, runs: int = 2) -> None:
        self.report, self.stop, self.runs = report, stop, runs
        self.started = time.perf_counter()
        self.done = 0

    def __call__(self, label: str, step: int, steps: int) -> None:
        if self.stop.is_set():
            raise Stopped(f"during the {label} run, after step {step} of {steps}")
        self.done += 1
        total = self.runs * steps
        seconds_per_step = (time.perf_counter() - self.started) / self.done
        left = seconds_per_step * (total - self.done)
        self.report(
            self.done / total,
            f"{label}: step {step}/{steps} ({seconds_per_step:.1f} s a step, about {left:.0f} s left)",
        )
