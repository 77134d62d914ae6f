"""Smoke test: ``bench/control.py --quick`` runs to the end against real daemons.

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
    "SetPriority 1,000 queued -> HIGH",
    "SetPriority per id at 1,000",
    "Cancel per id at 1,000",
    "SetPriority cost (line fit)",
    "Pause group p50, 5,000 queued",
    "Resume group p50, 5,000 queued",
    "Pause p50, an empty group",
    "Submit 1k batches stashed",
    "Enqueue 1,000 stashed ids",
    "drain 100 true, group of 2 slots",
    "daemon CPU per task, group drain",
)


@pytest.mark.timeout(60)
def test_control_bench_quick_prints_summary() -> None:
    # Its own session: if it hangs, it is asked to stop (SIGTERM: its daemons are STOP-shut down,
    # which ends their running tasks), then the bench and its daemons are killed together.
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "control.py"), "--quick"],
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
