"""bench/train_throughput.py --device cuda on a machine without CUDA ended in a ConfigError traceback;
it says so in one line, as `flowrl train --device cuda` does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "train_throughput.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_asking_for_cuda_without_it_is_one_error_line():
    result = subprocess.run(
        [sys.executable, str(BENCH), "--device", "cuda", "--quick", "--shapes", "cheetah-run"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: --device cuda was asked for, but torch sees no CUDA device; use --device auto or cpu"
    ], result.stderr
