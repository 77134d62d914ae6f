"""Fixtures of the journal tests: a Store on a fresh SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from taskerd.store import Store


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


@pytest_asyncio.fixture
async def store(db: Path) -> AsyncIterator[Store]:
    s = await Store.open(db)
    yield s
    await s.close()
