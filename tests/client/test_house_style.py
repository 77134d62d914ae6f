"""The client's house style, without a daemon: bad ``submit`` keywords are ``InvalidTask`` in both
clients (F18), handles make no RPC from a property, and the daemon never imports the client."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from taskerctl import AsyncClient, Client, DaemonUnavailable, InvalidTask, TaskHandle

#: ``submit`` keywords that cannot make a request, and the field the error names.
BAD_KEYWORDS = [
    ({"retries": -1}, "tasks[0].retries"),
    ({"retries": 2**32}, "tasks[0].retries"),
    ({"timeout": "abc"}, "tasks[0].timeout"),
    ({"queue_timeout": float("nan")}, "tasks[0].queue_timeout"),
    ({"priority": "urgent"}, "tasks[0].priority"),
    ({"max_requeues": -1}, "tasks[0].max_retries"),
]


def _check(err: pytest.ExceptionInfo[InvalidTask], field: str) -> None:
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")
    assert err.value.exit_code == 2
    assert isinstance(err.value, ValueError), "callers that caught ValueError still do"


@pytest.mark.parametrize(("options", "field"), BAD_KEYWORDS)
def test_bad_keywords_are_invalid_task_sync(
    tmp_path: Path, options: dict[str, Any], field: str
) -> None:
    # A socket nobody serves: the error comes before any RPC (else DaemonUnavailable).
    with Client(tmp_path / "none.sock") as c, pytest.raises(InvalidTask) as err:
        c.submit(["true"], **options)
    _check(err, field)


@pytest.mark.parametrize(("options", "field"), BAD_KEYWORDS)
async def test_bad_keywords_are_invalid_task_async(
    tmp_path: Path, options: dict[str, Any], field: str
) -> None:
    async with AsyncClient(tmp_path / "none.sock") as c:
        with pytest.raises(InvalidTask) as err:
            await c.submit(["true"], **options)
    _check(err, field)


def test_bad_values_name_their_place(tmp_path: Path) -> None:
    with Client(tmp_path / "none.sock") as c:
        with pytest.raises(InvalidTask) as many:
            c.submit_many(["true", {"cmd": "true", "timeout": "soon"}])
        _check(many, "tasks[1].timeout")
        with pytest.raises(InvalidTask) as run:
            c.run(["true"], retries=-3)
        _check(run, "task.retries")
        with pytest.raises(InvalidTask) as states:
            c.cancel_many(states=["sleeping"])
        _check(states, "states")
        with pytest.raises(InvalidTask) as ids:
            c.wait_many([1, -2])
        _check(ids, "ids")


async def test_bad_values_name_their_place_async(tmp_path: Path) -> None:
    async with AsyncClient(tmp_path / "none.sock") as c:
        with pytest.raises(InvalidTask) as run:
            await c.run(["true"], priority="asap")
        _check(run, "task.priority")
        with pytest.raises(InvalidTask) as states:
            await c.list(states=["sleeping"])
        _check(states, "states")


def test_no_property_of_a_handle_makes_an_rpc(tmp_path: Path) -> None:
    with Client(tmp_path / "none.sock") as c:
        h = c.handle(7)
        assert (h.id, repr(h)) == (7, "TaskHandle(id=7)")
        for name in dir(TaskHandle):
            if isinstance(getattr(TaskHandle, name), property) and name != "state":
                getattr(h, name)  # would raise DaemonUnavailable if it asked the daemon
        with pytest.raises(DaemonUnavailable):
            h.get_state()  # the state is a method: it asks the daemon
        with pytest.warns(DeprecationWarning, match="get_state"), pytest.raises(DaemonUnavailable):
            _ = h.state  # kept, deprecated


async def test_async_handle_state_is_a_method(tmp_path: Path) -> None:
    async with AsyncClient(tmp_path / "none.sock") as c:
        h = c.handle(7)
        with pytest.raises(DaemonUnavailable):
            await h.get_state()
        with pytest.warns(DeprecationWarning, match="get_state"):
            pending = h.state
        with pytest.raises(DaemonUnavailable):
            await pending


def test_the_daemon_does_not_import_the_client() -> None:
    """Dependencies point one way: durations and socket paths live in the neutral ``tasker``
    package, which both import."""
    code = (
        "import sys, taskerd.server, taskerd.config, taskerd.runner, taskerd.attempt; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'taskerctl'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_shared_code_lives_beside_the_contract() -> None:
    import tasker.durations
    import tasker.paths
    import taskerctl.durations
    import taskerctl.paths

    assert tasker.durations.parse_duration("1m30s") == 90
    # The old import paths still work, and are the same functions.
    assert taskerctl.durations.parse_duration is tasker.durations.parse_duration
    assert taskerctl.durations.format_duration is tasker.durations.format_duration
    assert taskerctl.paths.client_socket_path is tasker.paths.client_socket_path
    assert taskerctl.paths.default_socket_path is tasker.paths.default_socket_path
