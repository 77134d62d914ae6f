"""Running a ``bench/`` script's ``--quick`` smoke run from a test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def summary_of(script: str, figures: Iterable[str], timeout: float) -> str:
    """Run ``bench/<script> --quick``; check it exits 0 and its summary names every figure.

    It runs in its own session: if it hangs, it is asked to stop (SIGTERM: its daemons are
    STOP-shut down, which ends their running tasks), then it and its daemons are killed.
    """
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / script), "--quick"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
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
    for figure in figures:
        assert figure in summary, summary
    return summary
