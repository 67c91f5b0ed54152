"""Test session setup: Triton's interpreter on CPU, no Hub access, few threads.

``TRITON_INTERPRET=1`` must be set before Triton is imported anywhere, so it is set here.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from tiny_models import FAMILIES

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    """(name, model, inputs) for each supported transformer family."""
    make_model, make_inputs = FAMILIES[request.param]
    return request.param, make_model(), make_inputs()
