from __future__ import annotations

from typing import Any

import pytest

from taskerd.engine import Config


def create() -> int:
    return 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"worker_count": 0}, "worker_count must be > 0, got 0"),
        ({"worker_count": -1}, "worker_count"),
        ({"worker_count": 4, "max_worker_count": 3}, "max_worker_count"),
        ({"burst_interval": 0}, "burst_interval"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_queue_size": 0}, "max_queue_size"),
        ({"aging": -1.0}, "aging"),
        ({"thread_pool_size": 0}, "thread_pool_size"),
        ({"resource_pool_size": -1}, "resource_pool_size"),
        ({"on_destroy": 3}, "on_destroy"),
        ({"check_health": "x"}, "check_health"),
    ],
)
def test_validation_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Config(on_create=create, **kwargs)


def test_on_create_must_be_callable() -> None:
    with pytest.raises(ValueError, match="on_create"):
        Config(on_create=None)  # type: ignore[arg-type]


def test_defaults_are_derived() -> None:
    config = Config(on_create=create, worker_count=3)
    assert config.max_worker_count == 6
    assert config.resource_pool_size == 3
