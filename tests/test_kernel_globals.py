"""Triton kernels read module globals only as ``tl.constexpr``: a plain float or int global compiles
under ``TRITON_INTERPRET=1`` (the CPU tests) but not on a GPU, so this is checked from the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

KERNEL_FILES = sorted((Path(__file__).parent.parent / "dit_accel" / "kernels").glob("*.py"))


def plain_globals(tree: ast.Module) -> set[str]:
    """Module-level names bound to something other than ``tl.constexpr(...)``, and imported constants."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            value = node.value
            constexpr = isinstance(value, ast.Call) and getattr(value.func, "attr", "") == "constexpr"
            if not constexpr:
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.ImportFrom):
            names |= {alias.asname or alias.name for alias in node.names if (alias.asname or alias.name).isupper()}
    return names


def global_reads_in_kernels(source: str) -> list[str]:
    """``kernel:name`` for each plain global a ``@triton.jit`` function reads."""
    tree = ast.parse(source)
    plain = plain_globals(tree)
    found = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any("jit" in ast.unparse(d) for d in node.decorator_list):
            local = {a.arg for a in node.args.args} | {
                t.id for sub in ast.walk(node) if isinstance(sub, ast.Assign) for t in sub.targets
                if isinstance(t, ast.Name)
            }  # fmt: skip
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load) and sub.id in plain - local:
                    found.append(f"{node.name}:{sub.id}")
    return found


@pytest.mark.parametrize("path", KERNEL_FILES, ids=lambda p: p.name)
def test_kernels_read_globals_only_as_constexpr(path):
    assert global_reads_in_kernels(path.read_text()) == []


def test_the_check_finds_a_plain_global():
    source = "import triton\nSCALE = 2.0\n@triton.jit\ndef k(X):\n    x = X * SCALE\n"
    assert global_reads_in_kernels(source) == ["k:SCALE"]
    fixed = "import triton\nimport triton.language as tl\nSCALE = tl.constexpr(2.0)\n" + source.split("\n", 2)[2]
    assert global_reads_in_kernels(fixed) == []
