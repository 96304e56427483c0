"""Runs each atheris fuzz target (fuzz/harnesses.py) for a fixed budget; a longer run is on demand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")
HARNESSES = Path(__file__).resolve().parents[1] / "fuzz" / "harnesses.py"


@pytest.mark.parametrize("target", ["events", "decoders", "senml", "config"])
def test_fuzz_target_fixed_budget(target: str, tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(HARNESSES), target, "-runs=20000", "-max_total_time=20",
                          f"-artifact_prefix={tmp_path}/"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done" in run.stderr
