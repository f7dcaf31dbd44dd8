"""The MultiVI comparison runs end to end (smoke size) and writes its three outputs.
Skipped without scvi-tools (`pip install -e ".[bench]"`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_multivi.py"


def test_compare_multivi_smoke(tmp_path):
    pytest.importorskip("scvi", reason="scvi-tools not installed (pip install -e '.[bench]')")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    stem = "compare_multivi_synthetic_n600_smoke"
    report = json.loads((tmp_path / f"{stem}.json").read_text())
    assert (tmp_path / f"{stem}.png").stat().st_size > 0
    table = (tmp_path / f"{stem}.md").read_text()
    assert "mvae_sc" in table and "multivi" in table
    assert set(report["methods"]) >= {"mvae_sc", "multivi"}
