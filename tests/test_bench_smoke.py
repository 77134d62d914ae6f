"""Smoke test: ``bench/daemon.py --quick`` runs to the end against real daemons."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(90)
def test_daemon_bench_quick_prints_summary() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "daemon.py"), "--quick"],
        capture_output=True, text=True, timeout=80, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "SUMMARY" in out
    for figure in (
        "accept batch 1k (normal)",
        "accept batch 1k (full)",
        "e2e 100 true (cwd+env), 2 workers",
        "e2e 100 true (cwd+env), 8 workers",
        "submit-to-start p50",
        "Stats p50 at",
    ):
        assert figure in out, out
    summary = out.split("SUMMARY", 1)[1]
    assert summary.count("\n") >= 10, summary
