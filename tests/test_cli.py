"""The ``dit-accel`` command line as a user meets it: one-line errors, exit codes, a fast ``--help``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dit_accel.cli import USAGE_ERROR, main

COMMAND_MODULES = ("dit_accel.compare", "dit_accel.bench", "dit_accel.aligned_report")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "--method", "nope"], "unknown method 'nope'"),
        (["compare", "--method", "topk", "-o", "densty=0.2"], "densty"),
        (["compare", "--method", "topk", "-o", "density=-1"], "density must be in"),
        (["compare", "--method", "topk", "-o", "density=abc"], "density must be a number"),
        (["compare", "--method", "topk", "--model", "/no/such/model"], "no model folder at /no/such/model"),
        (["compare", "--method", "topk", "--device", "cuda:7"], "no CUDA GPU"),
    ],
)
def test_a_user_error_prints_one_line_and_exits_2(argv, message, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(argv) == USAGE_ERROR
    err = capsys.readouterr().err
    assert err.startswith("dit-accel: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_broken_model_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "model_index.json").write_text("{not json")
    assert main(["compare", "--method", "topk", "--model", str(tmp_path), "--device", "cpu"]) == USAGE_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"dit-accel: error: could not load a Diffusers pipeline from {tmp_path}")
    assert err.count("\n") == 1


def test_debug_anywhere_on_the_line_raises_the_error_itself():
    with pytest.raises(ValueError, match="unknown method"):
        main(["compare", "--debug", "--method", "nope"])


def test_a_bad_command_line_exits_2_through_argparse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--steps", "many", "--method", "topk"])
    assert exit_info.value.code == USAGE_ERROR
    assert "invalid int value: 'many'" in capsys.readouterr().err


def test_help_is_for_users_and_imports_no_command_module():
    script = (
        "import sys\nfrom dit_accel.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        f"print('imported:', [m for m in {COMMAND_MODULES!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert "imported: []" in out
    for command in ("list", "compare", "bench", "aligned-report", "--debug"):
        assert command in out
    assert "dit-accel compare --method topk -o density=0.25" in out and "register" not in out


def test_a_command_gets_its_full_parser(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "--frames" in capsys.readouterr().out
