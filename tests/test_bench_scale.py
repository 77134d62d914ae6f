"""Smoke test: ``bench/scale.py --quick`` runs to the end against a real daemon.

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
    "fill 20,000 (batch",
    "RSS with 20,009 queued",
    "RSS per queued task",
    "Stats p50",
    "Stats p99",
    "List first page (51) p50",
    "Get random id p50",
    "restart to SERVING at 20,009",
    "restart to first start at 20,009",
    "stop (STOP) at 20,009",
    "RSS after the restart",
)


@pytest.mark.timeout(60)
def test_scale_bench_quick_prints_summary() -> None:
    # Its own session: if it hangs, it is asked to stop (SIGTERM: its daemon is STOP-shut down,
    # which ends the running task), then the bench and its daemon are killed together.
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--quick"],
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
