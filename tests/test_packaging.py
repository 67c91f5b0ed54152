"""The root folders are installed inside ``dit_accel`` and never shadow other top-level packages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_root_folders_are_inert_as_top_level_packages():
    """From a checkout's root, no folder stands in for Hugging Face's ``kernels`` (a dependency of
    transformers since 5.25, imported by name), and the mapped root folders stay inert."""
    code = (
        "import importlib.util, os\n"
        "spec = importlib.util.find_spec('kernels')\n"  # a root kernels/ (even without __init__.py) or kernels.py
        "where = spec and (spec.origin or [*spec.submodule_search_locations][0])\n"
        "parent = where and os.path.dirname(where)\n"
        "assert not where or os.getcwd() not in (parent, os.path.dirname(parent)), spec\n"
        "import transformers.modeling_utils, pipelines\n"
        "import dit_accel.kernels as k, dit_accel.pipelines as p\n"
        "assert not hasattr(pipelines, 'find_adapter')\n"
        "assert k.block_sparse_attention is not None and p.find_adapter is not None\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_console_script_lists_methods():
    result = subprocess.run(
        [sys.executable, "-m", "dit_accel.cli", "list", "-v"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "topk" in result.stdout and "density" in result.stdout


def test_library_needs_no_lab_code(tmp_path: Path):
    """The installed modules import nothing from ``tools/`` (not in the wheel), and find the shipped model."""
    code = (
        "import sys, importlib.util\n"
        "assert importlib.util.find_spec('tools') is None\n"
        "import dit_accel, dit_accel.cli, dit_accel.compare, dit_accel.demo, dit_accel.bench\n"
        "from dit_accel.tiny_model import TINY_MODEL_DIR\n"
        "assert TINY_MODEL_DIR.is_dir() and not any(name.startswith('tools') for name in sys.modules)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # as an installed user runs it
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
