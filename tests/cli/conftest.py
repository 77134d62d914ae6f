"""A real daemon shared by a module's tests (starting one per test would be slow)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Daemon


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A started daemon with 4 workers, for the whole module."""
    d = Daemon(tmp_path_factory.mktemp("daemon"), "--workers", "4")
    d.start()
    yield d
    try:
        d.stop()
    except Exception:
        if d.proc is not None:
            d.proc.kill()
