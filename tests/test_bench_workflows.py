"""Smoke test: ``bench/workflows.py --quick`` runs to the end against real daemons.

Only that it completes and prints its summary rows: nothing about speed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FIGURES = (
    "chain 1,000: accept",
    "chain accept per task at 1,000",
    "chain 1,000: run, first start to last end",
    "chain run per task at 1,000",
    "chain daemon CPU per task",
    "independent run (1 slot) per task at 1,000",
    "chain 1,000: Cancel all, waiting",
    "fan-in 1,000 -> 1: accept the dependant",
    "fan-in accept per task at 1,000",
    "fan-in 1,000 -> 1: last end to its start",
    "same, fan-in 100 -> 1",
    "fan-in drain of its deps per task at 1,000",
    "fan-in daemon CPU per task at 1,000",
    "fan-out 1 -> 1,000: accept",
    "fan-out 1 -> 1,000: gate open to first start",
    "of which parent end to first start",
    "fan-out 1 -> 1,000: gate open to last start",
    "fan-out 1 -> 1,000: gate open to last end",
    "fan-out drain per task at 1,000",
)


@pytest.mark.timeout(60)
def test_workflows_bench_quick_prints_summary() -> None:
    # Its own session: if it hangs, it is asked to stop (SIGTERM: its daemons are STOP-shut down,
    # which ends their running tasks), then the bench and its daemons are killed together.
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "workflows.py"), "--quick"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 0, out + err
    assert "SUMMARY" in out, out
    summary = out.split("SUMMARY", 1)[1]
    for figure in FIGURES:
        assert figure in summary, summary
