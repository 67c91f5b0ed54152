"""The demo served on loopback with one FLUX pipeline, for the image tabs' tests (``gradio_client``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import gradio_client

from dit_accel import demo_app
from dit_accel.demo import DemoSession


@contextlib.contextmanager
def flux_demo_client(pipe) -> Iterator[gradio_client.Client]:
    """A client of the whole page, its FLUX menu offering ``pipe`` as "tiny-flux"; closed on exit."""
    session = DemoSession(["tiny-flux"], device="cpu", dtype="float32")
    session.add("tiny-flux", pipe)
    app = demo_app.build_app(session)
    demo_app.launch(app, prevent_thread_lock=True, quiet=True)
    try:
        yield gradio_client.Client(app.local_url, verbose=False)
    finally:
        app.close()
