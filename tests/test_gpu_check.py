"""benchmarks/gpu_check.py --tiny: the GPU check's three parts run on the CPU at tiny shapes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gpu_check_runs_tiny_on_the_cpu(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu_check

    result = gpu_check.main(["--tiny", "--steps", "3"])
    assert result["size"] == "tiny" and result["device"] == "cpu"
    assert result["tokens"] == [1, 77, 128]  # the imported encoder's condition tokens
    assert result["video"] == [1, 2, 16, 16, 3] and result["steps"] == 3
    assert result["train_loss"] > 0
    for part in ("import", "encode", "train_step", "generate"):
        assert result[f"{part}_s"] >= 0
    assert '"check": "gpu_check"' in capsys.readouterr().out
