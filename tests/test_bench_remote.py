"""Smoke test: ``bench/remote.py --quick`` runs to the end against a real daemon with a TLS
listener and a token.

Only that it completes and prints its summary rows: nothing about speed.
"""

from __future__ import annotations

import pytest

from tests.bench_run import summary_of

FIGURES = (
    "`Stats` p50 over TCP with TLS and a token",
    "accept 2,000 `true` in 1,000-task requests over TCP with TLS",
    "200 `true` submitted and waited for over TCP with TLS",
)


@pytest.mark.timeout(90)
def test_remote_bench_quick_prints_summary() -> None:
    summary_of("remote.py", FIGURES, timeout=60)
