"""Smoke test: ``bench/scale.py --quick`` runs to the end against a real daemon.

Only that it completes and prints its summary rows: nothing about speed.
"""

from __future__ import annotations

import pytest

from tests.bench_run import summary_of

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
    summary_of("scale.py", FIGURES, timeout=40)
