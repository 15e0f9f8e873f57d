"""The glfa command: help, version, and one clear line with exit status 2 for bad input."""

import subprocess
import sys

from glfa import __version__
from glfa.cli import main


def test_version_and_help(capsys):
    for argv in (["--version"], ["--help"]):
        try:
            main(argv)
        except SystemExit as exc:
            assert exc.code == 0
    out = capsys.readouterr().out
    assert f"glfa {__version__}" in out
    assert "prepare" in out and "demo" in out


def test_bad_config_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  nonsense: 1\n")
    code = main(["prepare", str(tmp_path), str(tmp_path / "store"), "-c", str(bad)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "bad.yaml: data.nonsense: unknown key" in err
    assert "Traceback" not in err


def test_console_script_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "glfa.cli", "prepare", str(tmp_path / "nothing"), str(tmp_path / "s"),
         "-c", str(tmp_path / "missing.yaml")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "missing.yaml: config file not found" in proc.stderr
    assert "Traceback" not in proc.stderr
