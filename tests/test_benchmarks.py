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
