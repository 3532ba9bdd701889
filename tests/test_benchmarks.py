"""The GPU check script runs end to end on CPU at tiny sizes, so it does not rot without a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "gpu_check" / "run.py"), "--device", "cpu",
         "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(result["train_img_per_s"]) == {
        "fp32 (32-true)", "bf16 AMP (bf16-mixed)", "bf16 AMP + channels_last",
    }  # fmt: skip
    assert all(v > 0 for v in result["train_img_per_s"].values())
    assert result["loader_img_per_s"]["cached (2nd epoch)"] > 0
    assert "| train step, bf16 AMP + channels_last |" in (tmp_path / "gpu_check.md").read_text()


def test_lightning_step_time_excludes_only_the_plain_step_run_inside_it():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import PlainStepsBetween

    clock = PlainStepsBetween.__new__(PlainStepsBetween)  # the accounting only, no model
    # Lightning steps start at 0, 10, 22, 30; the plain step after each took 4, 5, 3, 6 s.
    clock.starts, clock.plain = [0.0, 10.0, 22.0, 30.0], [4.0, 5.0, 3.0, 6.0]
    # Intervals 10, 12, 8 less the plain steps inside them: 6 + 7 + 5 (the last step has no
    # next start, so neither loop's last step counts).
    assert clock.seconds(skip=0) == (18.0, 12.0)
    assert clock.seconds(skip=1) == (12.0, 8.0)


def test_flop_count_of_a_convolution_and_ratios_cut_not_rounded():
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import Row, flops_per_call, format_row

    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    # 2 operations per multiply-add: 2 photos x 8 outputs x 10 x 10 pixels x 3 x 3 x 3 taps
    assert flops_per_call(conv, torch.zeros(2, 3, 10, 10)) == 2 * 2 * 8 * 100 * 27
    row = Row("predict", "ONNX Runtime vs PyTorch eager", "", "", 1.2966, ">= 1.3x", False)
    assert "| 1.29x | >= 1.3x | **no** |" in format_row(row)
