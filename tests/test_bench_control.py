"""Smoke test: ``bench/control.py --quick`` runs to the end against real daemons.

Only that it completes and prints its summary rows: nothing about speed.
"""

from __future__ import annotations

import pytest

from tests.bench_run import summary_of

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
    summary_of("control.py", FIGURES, timeout=40)
