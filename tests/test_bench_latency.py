"""Smoke test: ``bench/latency.py --quick --breakdown`` runs to the end against a real daemon.

Nothing about speed is asserted: only that it completes and prints its summary rows.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(40)
def test_latency_bench_quick_prints_summary() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "latency.py"), "--quick", "--breakdown"],
        capture_output=True, text=True, timeout=35, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "breakdown pass with a firehose watcher" in out, out
    assert "SUMMARY" in out, out
    summary = out.split("SUMMARY", 1)[1]
    for figure in (
        "submit-to-exec p50 (idle)",
        "submit-to-exec p90 (idle)",
        "submit-to-exec p99 (idle)",
        "submit-to-exec max (idle)",
        "same, wait sent later, p50",
        "daemon overhead p50 (minus floor)",
    ):
        assert figure in summary, summary
    assert "exec floor" in summary, summary
