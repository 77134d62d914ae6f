"""Helpers for engine tests: a resource factory that records what it made and released."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from taskerd.engine import Config, TaskManager


class Resources:
    """Counts resources created and destroyed (real objects, no mocks)."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.destroyed: list[str] = []

    def create(self) -> str:
        name = f"r{len(self.created)}"
        self.created.append(name)
        return name

    def destroy(self, resource: str) -> None:
        self.destroyed.append(resource)

    def live(self) -> set[str]:
        return set(self.created) - set(self.destroyed)


def make(res: Resources, **kwargs: Any) -> TaskManager[str, Any]:
    """A manager over ``res`` with test-friendly defaults."""
    kwargs.setdefault("worker_count", 2)
    kwargs.setdefault("burst_interval", 0.05)
    return TaskManager(Config(on_create=res.create, on_destroy=res.destroy, **kwargs))


def engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("taskerd-engine")]


def assert_nothing_left() -> None:
    """No engine thread and no asyncio task other than the current one remain."""
    assert engine_threads() == []
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def until(predicate: Any, timeout: float = 5.0) -> None:
    """Poll ``predicate()`` until true (fails after ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)
