"""Both clients against a real daemon: cancel by selection, waits on any number of tasks with no
per-id round trip, and ``retries`` (issue 9)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from taskerctl import (
    AsyncClient,
    Client,
    DeadlineExceeded,
    InvalidTask,
    TaskNotFound,
    TaskResult,
    TaskState,
)
from taskerctl import _core as core
from tests.conftest import Daemon

#: More live tasks than one StreamResults request may name.
MANY = 12_000


class Counting:
    """A stub that counts the RPCs made through it."""

    def __init__(self, stub: Any, calls: Counter[str]) -> None:
        self._stub = stub
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        self._calls[name] += 1
        return getattr(self._stub, name)


def counting(client: Client) -> Counter[str]:
    calls: Counter[str] = Counter()
    client._stub = Counting(client._stub, calls)  # type: ignore[assignment]
    return calls


def until_running(client: Client, task_id: int) -> None:
    deadline = time.monotonic() + 20
    while client.get(task_id).state != TaskState.RUNNING:
        assert time.monotonic() < deadline, "the task did not start"
        time.sleep(0.02)


def test_cancel_many_selects_by_labels_states_and_all(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "1", "--max-workers", "1")
    with Client(d.socket) as c:
        a = [h.id for h in c.submit_many([["sleep", "30"]] * 3, labels={"grp": "a"})]
        b = [h.id for h in c.submit_many([["sleep", "30"]] * 2, labels={"grp": "b"})]
        other = c.submit(["sleep", "30"]).id
        until_running(c, a[0])  # the only worker runs a[0]; the others are queued
        calls = counting(c)
        assert c.cancel_many(labels={"grp": "b"}) == dict.fromkeys(b, True)
        assert c.cancel_many(labels={"grp": "a"}, states=["queued"]) == dict.fromkeys(a[1:], True)
        assert c.cancel_many([other], all=True) == {other: True, a[0]: True}
        assert calls == {"Cancel": 3}, "one request each"
        states = {r.id: r.state for r in c.wait_many([*a, *b, other])}
        assert set(states.values()) == {TaskState.CANCELLED}
        assert c.cancel_many(all=True) == {}, "nothing is live"
        assert c.cancel_many() == {}, "nothing asked: no request"
        assert calls == {"Cancel": 4, "StreamResults": 1}


async def test_async_cancel_many_all(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "1", "--max-workers", "1")
    async with AsyncClient(d.socket) as c:
        hs = await c.submit_many([["sleep", "30"]] * 3, labels={"grp": "x"})
        keep = await c.submit(["sleep", "30"], labels={"grp": "y"})
        assert await c.cancel_many(labels={"grp": "x"}) == {h.id: True for h in hs}
        # The running one may still be stopping: selected again, but not cancelled twice.
        again = await c.cancel_many(all=True)
        assert again[keep.id] is True and set(again) <= {keep.id, hs[0].id}
        assert not any(v for k, v in again.items() if k != keep.id)
        assert (await keep.wait(20)).state == TaskState.CANCELLED


def test_wait_many_one_stream_per_chunk_and_no_get(
    shared: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core, "MAX_IDS", 3)  # 7 ids: 3 streams, read at once
    with Client(shared.socket) as c:
        ids = [h.id for h in c.submit_many([["sh", "-c", f"exit {i % 2}"] for i in range(7)])]
        asked = [*reversed(ids), ids[0]]
        calls = counting(c)
        seen: list[TaskResult] = []
        results = c.wait_many(asked, on_result=seen.append)
        assert calls == {"StreamResults": 3}, "no Get, no List: one stream per chunk"
        assert [r.id for r in results] == ids[::-1], "in the order asked, without repeats"
        assert [r.exit_code for r in results] == [i % 2 for i in range(7)][::-1]
        assert sorted(r.id for r in seen) == ids and all(r.done for r in results)
        assert c.wait_many([]) == [] and calls == {"StreamResults": 3}


def test_wait_many_fails_fast_and_says_what_is_left(shared: Daemon) -> None:
    with Client(shared.socket) as c:
        slow = c.submit(["sleep", "30"])
        t0 = time.monotonic()
        with pytest.raises(TaskNotFound):
            c.wait_many([slow.id, 10**12])  # the unknown id is another chunk's
        assert time.monotonic() - t0 < 5, "did not wait for the running task first"
        done = c.submit(["true"]).id
        with pytest.raises(DeadlineExceeded, match=r"1 of 2 tasks not finished after 0.3s"):
            c.wait_many([done, slow.id], timeout=0.3)
        slow.cancel()
        out = c.wait_many([c.submit(["echo", "hi"]).id], output=True)
        assert out[0].stdout == b"hi\n"


def test_retries_run_a_failed_attempt_again(shared: Daemon) -> None:
    with Client(shared.socket) as c:
        r = c.submit(["sh", "-c", "exit 3"], retries=2).wait(20)
        assert (r.state, r.exit_code, r.attempts, r.retries) == (TaskState.FAILED, 3, 3, 2)
        with pytest.raises(InvalidTask) as once:
            c.submit(["true"], once=True, retries=1)
        assert once.value.field == "tasks[0].retries"
        with pytest.raises(InvalidTask) as requeues:
            c.submit(["true"], max_requeues=101)  # the old meaning: TaskSpec.max_retries
        assert requeues.value.field == "tasks[0].max_retries"
        assert c.submit(["true"], max_requeues=0).wait(20).attempts == 1


async def test_async_retries(shared: Daemon) -> None:
    async with AsyncClient(shared.socket) as c:
        h = await c.submit(["sh", "-c", "exit 4"], retries=1)
        r = await h
        assert (r.state, r.attempts) == (TaskState.FAILED, 2)


@pytest.fixture(scope="module")
def crowd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon with one worker, for more tasks than one StreamResults request may name."""
    d = Daemon(
        tmp_path_factory.mktemp("crowd"),
        *("--workers", "1", "--max-workers", "1", "--max-queue", "20000", "--log-level", "info"),
    )
    d.start()
    yield d
    d.stop()


def crowd_specs(start: float) -> list[dict[str, Any]]:
    """``MANY`` tasks that never start (a gate holds the only worker) and end TIMED_OUT one
    after the other, 3,000 a second from ``start`` seconds after they are queued: a pace the
    daemon's stream keeps up with even on a busy machine."""
    return [{"cmd": "true", "queue_timeout": start + i / 3000} for i in range(MANY)]


@pytest.mark.timeout(120)
def test_wait_all_and_wait_many_past_10000(crowd: Daemon) -> None:
    with Client(crowd.socket) as c:
        gate = c.submit(["sleep", "60"], timeout=3 + MANY / 3000 + 2)  # ends after the rest
        until_running(c, gate.id)
        ids = [h.id for h in c.submit_many(crowd_specs(3.0), batch_size=10_000, env={})]
        calls = counting(c)
        results = c.wait_all()
        assert calls == {"StreamResults": 1}, "one all_live stream, whatever the number"
        assert [r.id for r in results] == [gate.id, *ids], "every task live when it began"
        assert {r.state for r in results} == {TaskState.TIMED_OUT}

        calls.clear()
        again = c.wait_many(ids)
        assert calls == {"StreamResults": 2}, "10,000 ids per stream, and no Get"
        assert again == results[1:]


@pytest.mark.timeout(120)
async def test_async_wait_many_past_10000(crowd: Daemon) -> None:
    async with AsyncClient(crowd.socket) as c:
        listed = await c.list(states=["timed_out"], limit=MANY + 1)
        assert len(listed) == MANY + 1, "test_wait_all_and_wait_many_past_10000 ran first"
        ids = sorted(t.id for t in listed)
        finished: list[int] = []
        results = await c.wait_many(ids, on_result=lambda r: finished.append(r.id))
        assert [r.id for r in results] == ids and sorted(finished) == ids
        live = await c.submit_many([["sleep", "0.2"]] * 3)
        assert {r.id for r in await c.wait_all()} == {h.id for h in live}
        assert await c.wait_all() == [], "nothing live: the stream ends at once"
