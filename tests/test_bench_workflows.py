"""Smoke test: ``bench/workflows.py --quick`` runs to the end against real daemons.

Only that it completes and prints its summary rows: nothing about speed.
"""

from __future__ import annotations

import pytest

from tests.bench_run import summary_of

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
    summary_of("workflows.py", FIGURES, timeout=40)
