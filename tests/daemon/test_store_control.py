"""The journal's part of queue control (issue 11), on real SQLite files: schema v3 and the
migration of a v2 journal, stashed tasks, groups, priorities, Enqueue and Remove."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

import taskerd.store as store_mod
from tasker.v1 import tasker_pb2 as pb
from taskerd.store import (
    SCHEMA_VERSION,
    TERMINAL_STATES,
    GroupRow,
    JournalOpenError,
    Store,
    task_record,
)

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "journal-v2.sqlite3"
T0 = 1_700_000_000.0
ENV = {"A": "1", "B": "2"}
Q, R, STASHED = pb.TASK_STATE_QUEUED, pb.TASK_STATE_RUNNING, pb.TASK_STATE_STASHED
OK, FAIL, CANCELLED = pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELLED


def spec(*argv: str, **fields: object) -> pb.TaskSpec:
    return pb.TaskSpec(argv=list(argv) or ["true"], **fields)  # type: ignore[arg-type]


def raw(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Rows read through a separate plain sqlite3 connection (what is committed)."""
    with sqlite3.connect(path) as db:
        return db.execute(sql, params).fetchall()


# ---- schema ----------------------------------------------------------------------------------


async def test_v2_journal_migrates(tmp_path: Path) -> None:
    """A journal written by taskerd at 71cffcb (schema v2; SIGKILLed with 1 task running and 3
    queued) opens, migrates to the latest version and reads as before, all in group default."""
    path = tmp_path / "journal.sqlite3"
    shutil.copy(FIXTURE, path)
    assert raw(path, "PRAGMA user_version") == [(2,)]
    s = await Store.open(path)
    try:
        assert raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(6,)]
        unfinished = await s.unfinished()
        assert [(u.id, u.state, u.group, u.enqueue_at) for u in unfinished] == [
            (5, R, "default", None),
            (6, Q, "default", None),
            (7, Q, "default", None),
            (9, Q, "default", None),
        ]
        assert list(pb.TaskSpec.FromString(unfinished[0].spec).argv) == ["sleep", "1000"]
        assert [r.task_id for r in await s.runs()] == [5]

        every = await s.list(limit=100)
        assert [t.id for t in every] == list(range(9, 0, -1))
        assert {t.group for t in every} == {"default"}
        assert not any(t.HasField("enqueue_at") for t in every)
        states = {t.id: t.state for t in every}
        assert states == {1: OK, 2: FAIL, 3: OK, 4: pb.TASK_STATE_TIMED_OUT, 5: R, 6: Q, 7: Q,
                          8: CANCELLED, 9: Q}  # fmt: skip

        first = await s.get(1, output=True)
        assert first is not None and first.group == "default"
        assert list(first.spec.argv) == ["echo", "hello"] and first.stdout == b"hello\n"
        assert dict(first.spec.labels) == {"kind": "ok"}
        fed = await s.get(3, output=True)
        assert fed is not None and fed.spec.stdin == fed.stdout == b"some input\n"
        high = await s.get(6)
        assert high is not None and high.spec.priority == pb.PRIORITY_HIGH
        assert high.spec.env["FOO"] == "bar" and high.group == "default"

        page = await s.list_page(
            states=TERMINAL_STATES, labels={}, limit=10, before_id=None, ids=[5], group="default"
        )
        assert [t.id for t in page.terminal] == [8, 4, 3, 2, 1] and list(page.by_id) == [5]
        assert await s.list(group="other") == []
        assert await s.groups() == []

        # The migrated journal takes the new writes.
        assert await s.queue_add([spec("x", group="gpu")], now=T0, stashed=True) == [10]
        assert await s.enqueue([9], enqueue_at=T0 + 60) == 0  # 9 is queued, not stashed
        assert await s.set_priority([7], pb.PRIORITY_LOW) == 1
        assert await s.remove([1, 2, 5, 6]) == 2
    finally:
        await s.close()
    assert raw(path, "PRAGMA integrity_check") == [("ok",)]
    assert raw(path, "SELECT grp FROM tasks WHERE id = 10") == [("gpu",)]


def _shape(path: Path) -> tuple[list[str], object, object]:
    with sqlite3.connect(path) as c:
        tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        columns = {t: c.execute(f"PRAGMA table_info({t})").fetchall() for t in tables}
        indexes = {
            r[0]: c.execute(f"PRAGMA index_info({r[0]})").fetchall()
            for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
    return sorted(tables), columns, indexes


async def test_new_journal_has_the_migrated_shape(tmp_path: Path) -> None:
    fresh, migrated = tmp_path / "fresh.db", tmp_path / "migrated.db"
    shutil.copy(FIXTURE, migrated)
    for path in (fresh, migrated):
        await (await Store.open(path)).close()
    assert _shape(fresh) == _shape(migrated)
    assert "groups" in _shape(fresh)[0]


async def test_v3_journal_without_groups_is_refused(db: Path) -> None:
    await (await Store.open(db)).close()
    with sqlite3.connect(db) as c:
        c.execute("DROP TABLE groups")
    with pytest.raises(JournalOpenError, match="not a taskerd journal"):
        await Store.open(db)


# ---- stashed tasks and groups in records -------------------------------------------------------


async def test_stashed_tasks_are_unfinished(store: Store, db: Path) -> None:
    queued = await store.add([spec("q")], now=T0)
    stashed = await store.queue_add(
        [spec("s1", group="gpu"), spec("s2", group="gpu"), spec("s3", env={"E": "1"})],
        now=T0 + 1,
        env=ENV,
        stashed=True,
    )
    assert stashed == [2, 3, 4]
    assert raw(db, "SELECT id, state, grp FROM tasks ORDER BY id") == [
        (1, Q, "default"),
        (2, STASHED, "gpu"),
        (3, STASHED, "gpu"),
        (4, STASHED, "default"),
    ]
    rows = await store.unfinished()
    assert [(u.id, u.state, u.group) for u in rows] == [
        (1, Q, "default"),
        (2, STASHED, "gpu"),
        (3, STASHED, "gpu"),
        (4, STASHED, "default"),
    ]
    assert [u.id for u in await store.unfinished(after=2, limit=1)] == [3]
    got = await store.get(2)
    assert got is not None and got.state == STASHED and got.group == "gpu"
    assert got.spec.group == "gpu" and dict(got.spec.env) == ENV
    own = await store.get(4)
    assert own is not None and dict(own.spec.env) == {"E": "1"}

    # Nothing that deletes finished tasks touches a stashed (or queued) one.
    await store.mark_finished_many(queued, state=CANCELLED, ended_at=T0 + 2, error="x")
    assert await store.prune(keep_finished=0, keep_for=0, now=T0 + 100) == 1
    assert await store.clean(now=T0 + 100) == 0
    assert await store.clean(older_than=0, now=T0 + 100) == 0
    assert await store.remove([2, 3, 4]) == 0
    assert [u.id for u in await store.unfinished()] == stashed
    # A stashed task can be cancelled like a queued one.
    await store.mark_finished_many([2], state=CANCELLED, ended_at=T0 + 3, error="cancelled")
    ended = await store.get(2)
    assert ended is not None and ended.state == CANCELLED and ended.group == "gpu"
    assert [u.id for u in await store.unfinished()] == [3, 4]


async def test_merged_adds_keep_each_state_and_group(store: Store, db: Path) -> None:
    """Adds queued together share one insert: each row keeps its own state and group, and
    each caller gets its own consecutive ids (runs longer than a statement's rows too)."""
    calls = [
        ([spec(f"{n}.{k}", group=["", "a", "b"][n % 3]) for k in range(1 + 5000 * (n == 4))],
         n % 2 == 1)
        for n in range(8)
    ]  # fmt: skip
    before = store.commits
    results = [store.queue_add(specs, now=T0, stashed=st) for specs, st in calls]
    ids = [await r for r in results]
    assert store.commits - before <= 2  # merged (the thread may take the first one alone)
    assert [i for part in ids for i in part] == list(range(1, 5009))
    assert len(ids[4]) == 5001
    want = [
        (i, STASHED if st else Q, specs[0].group or "default")
        for (specs, st), part in zip(calls, ids, strict=True)
        for i in part
    ]
    assert raw(db, "SELECT id, state, grp FROM tasks ORDER BY id") == want
    got = await store.get(ids[4][-1])
    assert got is not None and got.spec.argv == ["4.5000"] and got.group == "a"


async def test_task_record_group(store: Store) -> None:
    base = dict(
        state=Q, queued_at=T0, started_at=None, ended_at=None, attempts=0, pid=0, worker=0,
        exit_code=None, signal=None, error="",
    )  # fmt: skip
    assert task_record(1, spec=spec(), **base).group == "default"  # type: ignore[arg-type]
    assert task_record(1, spec=spec(group="g"), **base).group == "g"  # type: ignore[arg-type]
    at = task_record(1, spec=b"", group="h", enqueue_at=T0 + 1.5, **base)  # type: ignore[arg-type]
    assert at.group == "h" and at.enqueue_at.ToNanoseconds() == int((T0 + 1.5) * 1e9)
    assert not task_record(1, spec=b"", **base).HasField("enqueue_at")  # type: ignore[arg-type]


async def test_enqueue(store: Store, db: Path) -> None:
    ids = await store.queue_add([spec(str(n)) for n in range(4)], now=T0, stashed=True)
    queued = await store.add([spec("q")], now=T0)
    later = T0 + 300.25

    assert await store.enqueue([ids[0], ids[1], *queued], enqueue_at=later) == 2
    assert raw(db, "SELECT id, state, enqueue_at, queued_at FROM tasks ORDER BY id") == [
        (1, STASHED, later, T0),
        (2, STASHED, later, T0),
        (3, STASHED, None, T0),
        (4, STASHED, None, T0),
        (5, Q, None, T0),
    ]
    rows = {u.id: u for u in await store.unfinished()}
    assert rows[1].enqueue_at == later and rows[3].enqueue_at is None
    for t in [await store.get(1), (await store.get_many([1], light=True))[1]]:
        assert t is not None and t.enqueue_at.ToNanoseconds() == round(later * 1e9)
    page = await store.list_page(states=(), labels={}, limit=0, before_id=None, ids=[1, 3])
    assert page.by_id[1].HasField("enqueue_at") and not page.by_id[3].HasField("enqueue_at")

    # At once: QUEUED, no planned time; queued_at (the place in the queue) kept.
    assert await store.enqueue([1, 3], enqueue_at=None) == 2
    assert raw(db, "SELECT id, state, enqueue_at, queued_at FROM tasks WHERE id IN (1, 3)") == [
        (1, Q, None, T0),
        (3, Q, None, T0),
    ]
    assert await store.enqueue([1, 3, 99], enqueue_at=None) == 0  # not stashed: left alone
    assert await store.enqueue([], enqueue_at=None) == 0
    t1 = await store.get(1)
    assert t1 is not None and t1.state == Q and not t1.HasField("enqueue_at")


async def test_set_priority(store: Store, db: Path) -> None:
    full = spec("a", env=ENV, stdin=b"in", labels={"k": "v"}, priority=pb.PRIORITY_LOW)
    ids = await store.add([full, spec("b"), spec("c")], now=T0)
    stashed = await store.queue_add([spec("d")], now=T0, stashed=True)
    await store.mark_finished(ids[2], state=OK, ended_at=T0 + 1)
    before = store.commits

    assert await store.set_priority([*ids, *stashed, 77], pb.PRIORITY_CRITICAL) == 3
    assert store.commits == before + 1
    assert raw(db, "SELECT id, priority FROM tasks ORDER BY id") == [
        (1, pb.PRIORITY_CRITICAL),
        (2, pb.PRIORITY_CRITICAL),
        (3, pb.PRIORITY_NORMAL),  # finished: unchanged
        (4, pb.PRIORITY_CRITICAL),
    ]
    got = await store.get(1)
    assert got is not None and got.spec.priority == pb.PRIORITY_CRITICAL
    assert dict(got.spec.env) == ENV and got.spec.stdin == b"in" and got.spec.argv == ["a"]
    assert dict(got.spec.labels) == {"k": "v"} and got.queued_at.ToNanoseconds() == T0 * 1e9
    light = await store.get_many(ids, light=True)
    assert [light[i].spec.priority for i in ids] == [
        pb.PRIORITY_CRITICAL,
        pb.PRIORITY_CRITICAL,
        pb.PRIORITY_UNSPECIFIED,
    ]
    assert [t.id for t in await store.list(labels={"k": "v"})] == [1]

    # UNSPECIFIED is stored as given in the spec, and ranks as NORMAL.
    assert await store.set_priority([2], pb.PRIORITY_UNSPECIFIED) == 1
    assert raw(db, "SELECT priority FROM tasks WHERE id = 2") == [(pb.PRIORITY_NORMAL,)]
    assert await store.set_priority([], pb.PRIORITY_HIGH) == 0
    rows = await store.unfinished()
    assert pb.TaskSpec.FromString(rows[0].spec).priority == pb.PRIORITY_CRITICAL


async def test_remove(store: Store, db: Path) -> None:
    shared = {"SHARED": "1"}
    a, b, c, d, e = await store.add(
        [
            spec("a", env=shared, stdin=b"x", labels={"k": "a"}),
            spec("b", env={"ONLY": "b"}, labels={"k": "b"}),
            spec("c", env=shared),
            spec("d"),
            spec("e"),
        ],
        now=T0,
    )
    (s,) = await store.queue_add([spec("s", env={"ONLY": "b"})], now=T0, stashed=True)
    await store.mark_finished(a, state=OK, ended_at=T0 + 1, stdout=b"out")
    await store.mark_finished(b, state=FAIL, ended_at=T0 + 1, stderr=b"err")
    await store.mark_finished(d, state=CANCELLED, ended_at=T0 + 1)
    store.mark_started(e, attempt=1, pid=1, worker=0, started_at=T0)
    assert raw(db, "SELECT count(*) FROM envs") == [(2,)]

    # Only the finished ones go; unknown, queued, running and stashed tasks stay.
    assert await store.remove([a, b, c, e, s, 12345, 0, -1]) == 2
    left = raw(db, "SELECT id FROM tasks ORDER BY id")
    assert left == [(c,), (d,), (e,), (s,)]
    for table in ("labels", "outputs", "stdins"):
        assert raw(db, f"SELECT count(*) FROM {table}") == [(0,)], table
    assert raw(db, "SELECT count(*) FROM envs") == [(2,)]  # each still used (c, s)
    assert await store.get(a) is None and await store.get(c) is not None
    assert await store.remove([a, b]) == 0
    assert await store.remove([]) == 0

    await store.mark_finished_many([c, s], state=CANCELLED, ended_at=T0 + 2, error="x")
    assert await store.remove([c, d, s]) == 3
    assert raw(db, "SELECT id FROM tasks") == [(e,)]
    assert raw(db, "SELECT count(*) FROM envs") == [(0,)]
    # The env cache forgot the deleted envs: a new task stores its env again.
    (f,) = await store.add([spec("f", env=shared)], now=T0)
    got = await store.get(f)
    assert got is not None and dict(got.spec.env) == shared


async def test_list_by_group(store: Store) -> None:
    groups = ["a", "b", "", "a", "b", "a"]
    ids = await store.add(
        [spec(str(n), group=g, labels={"n": str(n % 2)}) for n, g in enumerate(groups)], now=T0
    )
    await store.queue_add([spec("s", group="a")], now=T0, stashed=True)  # 7
    for i in ids[:5]:
        await store.mark_finished(i, state=OK if i % 2 else FAIL, ended_at=T0 + i)

    every = await store.list(limit=100)
    assert [(t.id, t.group) for t in every] == [
        (7, "a"), (6, "a"), (5, "b"), (4, "a"), (3, "default"), (2, "b"), (1, "a"),
    ]  # fmt: skip
    assert [t.id for t in await store.list(group="a")] == [7, 6, 4, 1]
    assert [t.id for t in await store.list(group="default")] == [3]
    assert [t.id for t in await store.list(group="a", limit=2)] == [7, 6]
    assert [t.id for t in await store.list(group="a", before_id=6)] == [4, 1]
    assert [t.id for t in await store.list(group="a", states=[OK, FAIL])] == [4, 1]
    assert [t.id for t in await store.list(group="a", states=[STASHED])] == [7]
    assert [t.id for t in await store.list(group="a", labels={"n": "1"})] == [6, 4]
    assert [t.id for t in await store.list(group="b", labels={"n": "1"}, states=[FAIL])] == [2]
    assert await store.list(group="b", labels={"n": "1"}, states=[OK]) == []
    assert await store.list(group="nope") == []

    page = await store.list_page(
        states=TERMINAL_STATES, labels={}, limit=10, before_id=None, ids=[6, 7], group="b"
    )
    assert [t.id for t in page.terminal] == [5, 2]
    assert sorted(page.by_id) == [6, 7]  # asked by id: whatever their group
    assert page.by_id[7].group == "a" and page.by_id[7].state == STASHED
    page = await store.list_page(
        states=TERMINAL_STATES, labels={}, limit=1, before_id=5, ids=[], group="b"
    )
    assert [t.id for t in page.terminal] == [2]
    page = await store.list_page(
        states=TERMINAL_STATES, labels={}, limit=10, before_id=None, ids=[]
    )
    assert [t.id for t in page.terminal] == [5, 4, 3, 2, 1]  # no group: all of them


async def test_list_by_group_uses_its_index(store: Store, db: Path) -> None:
    """Finished tasks of a group in one state: a range of the partial index tasks_grp, newest
    first, without a sort (the query fails "no query solution" if it cannot use the index)."""
    await store.add([spec()], now=T0)
    plan = raw(
        db,
        f"EXPLAIN QUERY PLAN SELECT id FROM tasks INDEXED BY tasks_grp WHERE grp = ? "
        f"AND {store_mod._TERMINAL} AND state = ? AND id < ? ORDER BY id DESC LIMIT ?",
        ("a", OK, 10, 5),
    )
    detail = " ".join(str(r[-1]) for r in plan)
    assert "COVERING INDEX tasks_grp (grp=? AND state=? AND id<?)" in detail
    assert "TEMP B-TREE" not in detail


# ---- groups ------------------------------------------------------------------------------------


async def test_groups_are_durable(db: Path) -> None:
    s = await Store.open(db)
    try:
        assert await s.groups() == []
        await s.save_group("gpu", parallel=2, max_parallel=4, paused=False)
        # Committed when the call returns: another connection sees it.
        assert raw(db, "SELECT * FROM groups") == [("gpu", 2, 4, 0, None)]
        await s.save_group("default", parallel=8, max_parallel=8, paused=True, max_queue=1000)
        await s.save_group("batch", parallel=1, max_parallel=1, paused=False)
        await s.save_group("gpu", parallel=3, max_parallel=3, paused=True, max_queue=5)
        assert await s.groups() == [
            GroupRow("batch", 1, 1, False, None),
            GroupRow("default", 8, 8, True, 1000),
            GroupRow("gpu", 3, 3, True, 5),
        ]
        assert await s.delete_group("batch") is True
        assert await s.delete_group("batch") is False
        assert raw(db, "SELECT name FROM groups ORDER BY name") == [("default",), ("gpu",)]
    finally:
        await s.close()
    s = await Store.open(db)
    try:
        rows = await s.groups()
        assert [r.name for r in rows] == ["default", "gpu"]
        assert rows[1].paused is True and rows[1].max_queue == 5
    finally:
        await s.close()
