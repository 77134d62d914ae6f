"""Smoke test: ``bench/scrape.py --quick`` runs to the end against real daemons.

Only that it completes and prints its summary rows: nothing about speed. (Without the
``metrics_address`` wiring in ``taskerd.server`` its scrape rows say "skipped".)
"""

from __future__ import annotations

import pytest

from tests.bench_run import summary_of

FIGURES = (
    "drain 100 true, scraped every 100 ms",
    "scrape p50, 5,000 queued",
    "observe wait+run per task end",
)


@pytest.mark.timeout(90)
def test_scrape_bench_quick_prints_summary() -> None:
    summary_of("scrape.py", FIGURES, timeout=60)
