"""The task journal: one SQLite database in WAL mode, owned by one journal thread.

Every write and every read goes through the journal thread, in the order they were made, so the
event loop never touches SQLite. Writes are group-committed: those queued while the thread is
busy share one transaction. A write (``add``, ``mark_finished``...) is acknowledged only after
the transaction that holds it has committed. With ``sync="normal"`` a committed write survives a
crash of the daemon (it is in the WAL, which the OS holds); with ``sync="full"`` the WAL is
fsynced at every commit, so it also survives power loss. ``mark_started`` is fire-and-forget but
ordered with every other write, so it is durable once any later awaited write returns.

A read sees exactly the writes queued before it, and its answer reaches the loop after theirs:
so when a read's caller resumes, the daemon's memory has taken in every commit the read saw, and
no later one. Every operation is all or nothing. A failed commit (a full disk, an I/O error)
fails its operations with :class:`JournalError`; nothing of them is kept.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import EllipsisType
from typing import Any, Literal, NamedTuple, TypeAlias, TypeVar, cast

from google.protobuf.timestamp_pb2 import Timestamp

from tasker.v1 import tasker_pb2 as pb

__all__ = [
    "SCHEMA_VERSION",
    "TERMINAL_STATES",
    "UNFINISHED_STATES",
    "GroupRow",
    "JournalError",
    "JournalOpenError",
    "ListPage",
    "Run",
    "ScheduleRow",
    "Store",
    "Unfinished",
    "task_record",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
_Conn = sqlite3.Connection

SCHEMA_VERSION = 6
TERMINAL_STATES: frozenset[int] = frozenset(
    {
        pb.TASK_STATE_SUCCEEDED,
        pb.TASK_STATE_FAILED,
        pb.TASK_STATE_TIMED_OUT,
        pb.TASK_STATE_CANCELLED,
        pb.TASK_STATE_LOST,
    }
)
_QUEUED = pb.TASK_STATE_QUEUED
_RUNNING = pb.TASK_STATE_RUNNING
_STASHED = pb.TASK_STATE_STASHED
_WAITING = pb.TASK_STATE_WAITING
_SCHEDULED = pb.TASK_STATE_SCHEDULED
#: The states that are not terminal: clean, prune and remove never delete such a task. (PAUSED
#: is memory's only: a paused task stays RUNNING in the journal.)
UNFINISHED_STATES: frozenset[int] = frozenset(
    {_QUEUED, _RUNNING, pb.TASK_STATE_PAUSED, _STASHED, _WAITING, _SCHEDULED}
)
#: The states of a task that has not started: what queue_add creates, set_state moves between.
_NEW_STATES: frozenset[int] = frozenset({_QUEUED, _STASHED, _WAITING, _SCHEDULED})
_ALL_STATES = sorted(TERMINAL_STATES | UNFINISHED_STATES)
DEFAULT_GROUP = "default"

# The same text in the partial indexes and in the queries, so that SQLite uses those indexes.
_TERMINAL = f"state IN ({', '.join(str(s) for s in sorted(TERMINAL_STATES))})"
_UNFINISHED = f"state IN ({', '.join(str(s) for s in sorted(UNFINISHED_STATES))})"
_STARTABLE = f"state IN ({_QUEUED}, {_RUNNING})"  # what mark_started may change
_NOT_STARTED = f"state IN ({', '.join(str(s) for s in sorted(_NEW_STATES))})"
# A finished task is kept while a task that has not been queued yet depends on it (it needs the
# dependency's end, also after a restart). ``{}``: the dependency's id column.
_DEPENDED_ON = (
    "EXISTS (SELECT 1 FROM deps d CROSS JOIN tasks w ON w.id = d.task_id WHERE d.dep_id = {} "
    f"AND w.state IN ({_STASHED}, {_WAITING}, {_SCHEDULED}))"
)

MAX_BATCH_OPS = 4096  # operations per group-committed transaction
DELETE_CHUNK = 5000  # tasks deleted per operation by clean/prune, so other writes interleave
COMMIT_GAP = 0.002  # seconds after a commit during which starts and ends wait for company
IDLE_CHECKPOINT = 2.0  # seconds of journal idleness before the WAL is truncated
_ENV_CACHE_MAX = 256  # distinct environments remembered by the writer (keyed by content)
MAX_ID = 2**63 - 1
_SQLITE_FULL = 13

_TABLES = {"envs", "tasks", "stdins", "labels", "outputs"}  # groups from v3, deps from v4...
_TABLES_FROM = {3: {"groups"}, 4: {"deps", "schedules"}}

_SCHEMA = f"""
CREATE TABLE envs (
    id   INTEGER PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    data BLOB NOT NULL              -- a TaskSpec holding only env
);
CREATE TABLE tasks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    state       INTEGER NOT NULL,
    priority    INTEGER NOT NULL,
    queued_at   REAL NOT NULL,
    started_at  REAL,
    ended_at    REAL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    pid         INTEGER NOT NULL DEFAULT 0,
    worker      INTEGER NOT NULL DEFAULT 0,
    exit_code   INTEGER,
    signal      INTEGER,
    error       TEXT NOT NULL DEFAULT '',
    once        INTEGER NOT NULL,
    max_retries INTEGER,
    spec        BLOB NOT NULL,      -- the TaskSpec without env and stdin
    env_id      INTEGER             -- envs.id, NULL for an empty env
);
CREATE INDEX tasks_state ON tasks (state, id);
-- state in these two makes them covering for the retention queries (SQLite 3.40)
CREATE INDEX tasks_ended ON tasks (ended_at, state) WHERE {_TERMINAL};
CREATE INDEX tasks_done ON tasks (id, state) WHERE {_TERMINAL};
CREATE INDEX tasks_env ON tasks (env_id) WHERE env_id IS NOT NULL;
CREATE TABLE stdins (
    task_id INTEGER PRIMARY KEY,
    data    BLOB NOT NULL
);
CREATE TABLE labels (
    task_id INTEGER NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (task_id, key)
) WITHOUT ROWID;
CREATE INDEX labels_kv ON labels (key, value, task_id);
CREATE TABLE outputs (
    task_id          INTEGER PRIMARY KEY,
    stdout           BLOB NOT NULL,
    stderr           BLOB NOT NULL,
    stdout_truncated INTEGER NOT NULL,
    stderr_truncated INTEGER NOT NULL
);

"""

_COLS = (
    "t.id, t.state, t.queued_at, t.started_at, t.ended_at, t.attempts, t.pid, t.worker, "
    "t.exit_code, t.signal, t.error, t.spec, t.grp, t.enqueue_at, t.restarted_from, "
    "t.schedule_id, t.submitted_by, t.node"
)
_GET = (
    f"SELECT {_COLS}, e.data, s.data FROM tasks t LEFT JOIN envs e ON e.id = t.env_id "
    "LEFT JOIN stdins s ON s.task_id = t.id WHERE t.id = ?"
)
_GET_OUTPUT = (
    f"SELECT {_COLS}, e.data, s.data, o.stdout, o.stderr, o.stdout_truncated, o.stderr_truncated "
    "FROM tasks t LEFT JOIN envs e ON e.id = t.env_id LEFT JOIN stdins s ON s.task_id = t.id "
    "LEFT JOIN outputs o ON o.task_id = t.id WHERE t.id = ?"
)


# Schema changes, in order: each takes the journal from version N - 1 to N.
#: Rows with anything but the common case: another group than default, a planned enqueue or
#: start, links. Recovery reads these through their own partial index, not from every row.
_RARE_V5 = (
    f"(grp != '{DEFAULT_GROUP}' OR enqueue_at IS NOT NULL OR start_at IS NOT NULL "
    "OR restarted_from != 0 OR schedule_id != 0)"
)
#: From v6, a task submitted over TCP (by a token's name) is rare too.
_RARE = _RARE_V5[:-1] + " OR submitted_by != '')"
#: Unfinished states as recovery's scan tests them (a range test costs less than an IN list).
_NOT_TERMINAL = f"NOT (state BETWEEN {min(TERMINAL_STATES)} AND {max(TERMINAL_STATES)})"
assert set(range(min(TERMINAL_STATES), max(TERMINAL_STATES) + 1)) == set(TERMINAL_STATES)

_MIGRATIONS: dict[int, str] = {
    2: """
    ALTER TABLE tasks ADD COLUMN run_pgid INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN run_start INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN run_token TEXT NOT NULL DEFAULT '';
    """,
    3: f"""
    ALTER TABLE tasks ADD COLUMN grp TEXT NOT NULL DEFAULT '{DEFAULT_GROUP}';
    ALTER TABLE tasks ADD COLUMN enqueue_at REAL;
    -- finished tasks only (List by group reads live ones from memory): a submit, a start
    -- pay nothing for it
    CREATE INDEX tasks_grp ON tasks (grp, state, id) WHERE {_TERMINAL};
    CREATE TABLE groups (
        name         TEXT PRIMARY KEY,
        parallel     INTEGER NOT NULL,
        max_parallel INTEGER NOT NULL,
        paused       INTEGER NOT NULL DEFAULT 0,
        max_queue    INTEGER
    );
    """,
    4: """
    ALTER TABLE tasks ADD COLUMN start_at REAL;
    ALTER TABLE tasks ADD COLUMN restarted_from INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN schedule_id INTEGER NOT NULL DEFAULT 0;
    -- task_id waits for dep_id; by dep_id: who depends on a task (retention keeps it for them)
    CREATE TABLE deps (
        task_id INTEGER NOT NULL,
        dep_id  INTEGER NOT NULL,
        PRIMARY KEY (task_id, dep_id)
    ) WITHOUT ROWID;
    CREATE INDEX deps_dep ON deps (dep_id, task_id);
    CREATE TABLE schedules (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        spec       BLOB NOT NULL,       -- the full TaskSpec (env and stdin included)
        env        BLOB,                -- a TaskSpec holding only env (for an empty spec.env)
        every      REAL,                -- seconds; NULL for a cron schedule
        cron       TEXT NOT NULL,
        overlap    INTEGER NOT NULL,
        next_at    REAL NOT NULL,
        last_task  INTEGER NOT NULL DEFAULT 0,
        submitted  INTEGER NOT NULL DEFAULT 0,
        skipped    INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    """,
    5: f"""
    CREATE INDEX tasks_rare ON tasks (id) WHERE {_RARE_V5};
    """,
    6: f"""
    ALTER TABLE tasks ADD COLUMN submitted_by TEXT NOT NULL DEFAULT '';
    -- the Dask worker of a task's last attempt ('': it ran here)
    ALTER TABLE tasks ADD COLUMN node TEXT NOT NULL DEFAULT '';
    DROP INDEX tasks_rare;
    CREATE INDEX tasks_rare ON tasks (id) WHERE {_RARE};
    """,
}


_IDS_PER_UPDATE = 10_000  # within SQLite's 32,766 parameters a statement
_ROWS_PER_INSERT = 4096  # 6 parameters a row: within SQLite's 32,766 parameters a statement
_ROWS_PER_INSERT_EXTRA = 3200  # 10 parameters a row (with start_at ... submitted_by)
_DEPS_PER_INSERT = 16_000  # 2 parameters a row
_IDS_PER_READ = 10_000


@lru_cache(maxsize=32)
def _insert_sql(rows: int, state: int, extra: bool = False) -> str:
    """An INSERT of ``rows`` tasks in ``state`` (in order: their ids come out consecutive), all
    of the group bound as ?1 (a parameter a row costs a third of the time of the insert);
    ``extra``: with start_at, restarted_from, schedule_id and submitted_by."""
    columns = "state, grp, priority, queued_at, once, max_retries, spec, env_id"
    row = f"({state}, ?1, ?, ?, ?, ?, ?, ?)"
    if extra:
        columns += ", start_at, restarted_from, schedule_id, submitted_by"
        row = row[:-1] + ", ?, ?, ?, ?)"
    return f"INSERT INTO tasks ({columns}) VALUES " + ", ".join([row] * rows)


@lru_cache(maxsize=4)
def _deps_sql(rows: int) -> str:
    return "INSERT OR IGNORE INTO deps (task_id, dep_id) VALUES " + ", ".join(["(?, ?)"] * rows)


def _marks(n: int) -> str:
    return ",".join("?" * n)


class Unfinished(NamedTuple):
    """A task recovery resumes (see :meth:`Store.unfinished`)."""

    id: int
    state: int  # QUEUED, RUNNING, STASHED, WAITING or SCHEDULED
    queued_at: float
    attempts: int
    spec: bytes  # a serialized TaskSpec, without env and stdin
    group: str
    enqueue_at: float | None = None  # a stashed task's planned Enqueue
    start_at: float | None = None  # not to start before (TaskSpec.start_at, or set_state's)
    restarted_from: int = 0  # 0 for none
    schedule_id: int = 0  # 0 for none
    submitted_by: str = ""  # a token's name; "" over the Unix socket


class Rare(NamedTuple):
    """What few unfinished tasks have beyond their plain row (see :meth:`Store.unfinished_page`)."""

    group: str | None  # None: the group "default"
    enqueue_at: float | None
    start_at: float | None
    restarted_from: int
    schedule_id: int
    submitted_by: str


#: id, state, queued_at, attempts, and the spec (serialized, without env and stdin).
UnfinishedRow: TypeAlias = tuple[int, int, float, int, bytes]


class UnfinishedPage(NamedTuple):
    """A page of unfinished tasks for recovery: plain rows, and the rare fields by id."""

    rows: builtins.list[UnfinishedRow]
    rare: dict[int, Rare]


class ScheduleRow(NamedTuple):
    """A journaled schedule (see :meth:`Store.add_schedule`)."""

    id: int
    spec: pb.TaskSpec  # in full: env and stdin included
    env: dict[str, str]  # the environment of a spec without env, as added (empty: none)
    every: float | None  # seconds; None for a cron schedule
    cron: str
    overlap: bool
    next_at: float
    last_task: int  # 0: none yet
    submitted: int
    skipped: int
    created_at: float


class GroupRow(NamedTuple):
    """A journaled group (see :meth:`Store.save_group`)."""

    name: str
    parallel: int
    max_parallel: int
    paused: bool
    max_queue: int | None


class JournalError(Exception):
    """A journal operation failed and left nothing behind; ``full`` when the disk is full."""

    def __init__(self, message: str, *, full: bool) -> None:
        super().__init__(message)
        self.full = full


class JournalOpenError(Exception):
    """The journal cannot be opened (not SQLite, not ours, too new); the message says why."""


def _journal_error(exc: BaseException) -> BaseException:
    """SQLite's operational errors as JournalError; anything else (a bug) as it is."""
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.IntegrityError | sqlite3.ProgrammingError
    ):
        full = getattr(exc, "sqlite_errorcode", 0) & 0xFF == _SQLITE_FULL
        return JournalError("journal: disk full" if full else f"journal: {exc}", full=full)
    return exc


@dataclass(frozen=True, slots=True)
class Run:
    """What identifies a journaled run: its process, group, start time and token."""

    task_id: int
    pid: int
    pgid: int
    start_time: int
    token: str


@dataclass(slots=True)
class ListPage:
    """One journal read for List: terminal rows matching the filters, and rows asked by id."""

    terminal: builtins.list[pb.Task]
    by_id: dict[int, pb.Task]


@dataclass(slots=True)
class _Op:
    """One queued operation, run on the journal thread: a write (in the batch transaction) or
    a read (after the writes queued before it have committed)."""

    fn: Callable[[_Conn], Any]
    future: asyncio.Future[Any] | None
    loop: asyncio.AbstractEventLoop | None
    rows: builtins.list[_NewTask] | None = None  # set for an add, which the writer may merge
    read: bool = False
    lazy: bool = False  # may wait for company: a start or an end, which nobody blocks on


@dataclass(slots=True)
class _NewTask:
    """A spec prepared on the caller's thread for insertion."""

    state: int  # QUEUED, STASHED, WAITING or SCHEDULED
    group: str
    queued_at: float
    priority: int
    once: bool
    max_retries: int | None
    spec: bytes
    env: bytes  # a serialized TaskSpec holding only env; empty for no env
    stdin: bytes
    labels: list[tuple[str, str]]
    more: _More | None = None  # None on the hot path: the shorter insert, no deps


@dataclass(slots=True)
class _More:
    """What few new tasks have (see :meth:`Store.queue_add`)."""

    start_at: float | None = None
    restarted_from: int = 0
    schedule_id: int = 0
    submitted_by: str = ""
    deps: tuple[int, ...] = ()  # task ids, or -(k + 1) for the k-th task of its call
    index: int = 0  # its place in its call, to resolve deps


def _seconds(ts: Timestamp) -> float:
    """A google.protobuf.Timestamp as seconds since the epoch."""
    return ts.seconds + ts.nanos * 1e-9


def _prepare(
    spec: pb.TaskSpec, queued_at: float, shared_env: bytes = b"", state: int = _QUEUED
) -> _NewTask:
    if not spec.env and not spec.stdin:  # the batch fast path: nothing to split off
        light, env, stdin = spec, shared_env, b""
    else:
        light = pb.TaskSpec()
        light.CopyFrom(spec)
        light.ClearField("env")
        light.ClearField("stdin")
        env, stdin = (_env_blob(spec) if spec.env else shared_env), spec.stdin
    new = _NewTask(
        state=state,
        group=spec.group or DEFAULT_GROUP,
        queued_at=queued_at,
        priority=spec.priority or pb.PRIORITY_NORMAL,
        once=spec.once,
        max_retries=spec.max_retries if spec.HasField("max_retries") else None,
        spec=light.SerializeToString(),
        env=env,
        stdin=stdin,
        labels=list(spec.labels.items()) if spec.labels else [],
    )
    if spec.HasField("start_at"):
        new.more = _More(start_at=_seconds(spec.start_at))
    return new


def _env_blob(spec: pb.TaskSpec) -> bytes:
    """A serialized TaskSpec holding only ``spec``'s env (deterministic: its envs row key)."""
    only_env = pb.TaskSpec()
    only_env.CopyFrom(spec)
    for field, _ in only_env.ListFields():  # a copy then clearing is faster than building
        if field.name != "env":
            cast(Any, only_env).ClearField(field.name)
    return only_env.SerializeToString(deterministic=True)


def _spec_of(light: bytes, env: bytes | None, stdin: bytes | None) -> pb.TaskSpec:
    """A full spec from its stored parts."""
    spec = pb.TaskSpec.FromString(light)
    if env is not None:
        spec.MergeFromString(env)
    if stdin is not None:
        spec.stdin = stdin
    return spec


def _dep_refs(wanted: Sequence[int], k: int, n: int) -> tuple[int, ...]:
    """Task ``k``'s dependencies (of a call of ``n`` tasks), checked, without repeats."""
    refs = tuple(dict.fromkeys(wanted))
    if max(refs) > MAX_ID or min(refs) < -n or 0 in refs or -(k + 1) in refs:
        raise ValueError(f"deps[{k}]: not ids of other tasks: {list(refs)}")
    return refs


def _nanos(seconds: float) -> int:
    return round(seconds * 1e9)


def task_record(
    task_id: int,
    *,
    state: int,
    queued_at: float,
    started_at: float | None,
    ended_at: float | None,
    attempts: int,
    pid: int,
    worker: int,
    exit_code: int | None,
    signal: int | None,
    error: str,
    spec: bytes | pb.TaskSpec,
    group: str | None = None,
    enqueue_at: float | None = None,
    restarted_from: int = 0,
    schedule_id: int = 0,
    submitted_by: str = "",
    node: str = "",
) -> pb.Task:
    """The one builder of a ``pb.Task`` record, from the journal's row or the daemon's memory.

    ``group``: None for the spec's (``default`` when it names none).
    """
    task = pb.Task(
        id=task_id,
        state=cast("pb.TaskState.ValueType", state),
        attempts=attempts,
        pid=pid,
        worker=worker,
        error=error,
        restarted_from=restarted_from,
        schedule_id=schedule_id,
        submitted_by=submitted_by,
        node=node,
    )
    if isinstance(spec, bytes):
        task.spec.ParseFromString(spec)
    else:
        task.spec.CopyFrom(spec)
    task.group = group or task.spec.group or DEFAULT_GROUP
    if enqueue_at is not None:
        task.enqueue_at.FromNanoseconds(_nanos(enqueue_at))
    if exit_code is not None:
        task.exit_code = exit_code
    if signal is not None:
        task.signal = signal
    task.queued_at.FromNanoseconds(_nanos(queued_at))
    if started_at is not None:
        task.started_at.FromNanoseconds(_nanos(started_at))
        task.wait.FromNanoseconds(max(0, _nanos(started_at - queued_at)))
    if ended_at is not None:
        task.ended_at.FromNanoseconds(_nanos(ended_at))
        if started_at is not None:
            task.run.FromNanoseconds(max(0, _nanos(ended_at - started_at)))
        else:
            task.wait.FromNanoseconds(max(0, _nanos(ended_at - queued_at)))
    return task


def _task(row: Sequence[Any], *, full: bool = False, output: bool = False) -> pb.Task:
    """Build a pb.Task from a row of ``_COLS`` (+ env, stdin when full, + outputs when output)."""
    (tid, state, queued_at, started_at, ended_at, attempts, pid, worker) = row[:8]
    exit_code, sig, error, spec, group, enqueue_at, restarted_from, schedule_id = row[8:16]
    by, node = row[16:18]
    task = task_record(
        tid, state=state, queued_at=queued_at, started_at=started_at, ended_at=ended_at,
        attempts=attempts, pid=pid, worker=worker, exit_code=exit_code, signal=sig, error=error,
        spec=spec, group=group, enqueue_at=enqueue_at, restarted_from=restarted_from,
        schedule_id=schedule_id, submitted_by=by, node=node,
    )  # fmt: skip
    if full:
        env, stdin = row[18:20]
        if env is not None:
            task.spec.MergeFromString(env)
        if stdin is not None:
            task.spec.stdin = stdin
    if output and row[20] is not None:
        task.stdout, task.stderr = row[20], row[21]
        task.stdout_truncated, task.stderr_truncated = bool(row[22]), bool(row[23])
    return task


def _resolved(value: T) -> asyncio.Future[T]:
    """A future already holding ``value`` (an operation with nothing to write)."""
    done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    done.set_result(value)
    return done


def _settle(results: builtins.list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in results:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


class Store:
    """The durable task journal. Create it with ``await Store.open(path)``.

    One thread owns the database: every operation is queued to it and answered on the caller's
    loop. Writes queued while it is busy share one transaction (group commit).
    """

    def __init__(self, path: Path, sync: Literal["normal", "full"]) -> None:
        if sync not in ("normal", "full"):
            raise ValueError(f"sync: must be 'normal' or 'full', not {sync!r}")
        self.path = path
        self.sync = sync
        #: Transactions committed so far (group commit: fewer than the writes).
        self.commits = 0
        #: Called on the journal thread with each COMMIT's duration in seconds (taskerd.prom).
        self.on_commit: Callable[[float], None] | None = None
        self._last_commit = 0.0  # time.monotonic() of the last commit
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._env_cache: dict[bytes, int] = {}  # the journal thread only
        self._reclaim_due = False  # the journal thread only: vacuum and truncate after a commit
        self._dirty = False  # the journal thread only: commits since the last WAL truncation

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, *, sync: Literal["normal", "full"] = "normal") -> Store:
        """Open (creating it and its schema if needed) the journal at ``path``.

        Raises :class:`JournalOpenError` if the file is not a journal this taskerd can use.
        """
        self = cls(Path(path), sync)
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(
            target=self._main, args=(loop, ready), name="taskerd-journal", daemon=True
        )
        self._thread.start()
        await ready
        return self

    async def close(self) -> None:
        """Commit what is queued, stop the journal thread and close the database. Idempotent."""
        self._closed = True  # refuse new operations; those already queued still run
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            await asyncio.to_thread(thread.join)

    # ---- the journal thread ----------------------------------------------------------------

    def _connect(self) -> _Conn:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise JournalOpenError(f"{self.path}: cannot open the journal: {exc}") from None
        try:
            self._prepare_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare_schema(self, conn: _Conn) -> None:
        where = self.path
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            found = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = {r[0] for r in found}
        except sqlite3.DatabaseError as exc:
            raise JournalOpenError(f"{where}: not a taskerd journal ({exc})") from None
        if version > SCHEMA_VERSION:
            raise JournalOpenError(
                f"{where}: journal schema v{version} is newer than this taskerd (v{SCHEMA_VERSION})"
            )
        tables.discard("sqlite_sequence")
        needed = _TABLES.union(*(t for v, t in _TABLES_FROM.items() if version >= v))
        if (version == 0 and tables) or (version > 0 and not tables >= needed):
            raise JournalOpenError(f"{where}: not a taskerd journal (tables: {sorted(tables)})")
        if version == 0:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only effective before any table
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise JournalOpenError(f"{where}: cannot use WAL mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {self.sync.upper()}")
        conn.execute("PRAGMA journal_size_limit = 33554432")
        conn.execute("PRAGMA temp_store = MEMORY")
        if version == SCHEMA_VERSION:
            return
        script = _SCHEMA if version == 0 else ""
        for target in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
            script += _MIGRATIONS[target]
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE; {script} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            )
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise JournalOpenError(f"{where}: cannot prepare the journal: {exc}") from None

    def _main(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            loop.call_soon_threadsafe(_settle, [(ready, False, exc)])
            return
        loop.call_soon_threadsafe(_settle, [(ready, True, None)])
        try:
            self._serve(conn)
        except BaseException as exc:  # a bug: never leave a caller waiting forever
            log.exception("journal thread crashed")
            self._closed = True
            self._fail_pending(exc)
        finally:
            try:
                conn.execute("PRAGMA optimize")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error:
                log.exception("journal: final checkpoint failed")
            conn.close()
            self._fail_pending(RuntimeError("journal is closed"))

    def _serve(self, conn: _Conn) -> None:
        while True:
            try:
                item = self._queue.get(timeout=IDLE_CHECKPOINT if self._dirty else None)
            except queue.Empty:
                self._checkpoint(conn)
                continue
            batch: builtins.list[_Op] = []
            lazy = True  # the batch holds only lazy writes
            while item is not None:
                if item.read:
                    if batch:
                        self._run_batch(conn, batch)
                        batch, lazy = [], True
                    self._run_read(conn, item)
                else:
                    batch.append(item)
                    lazy = lazy and item.lazy
                    if len(batch) >= MAX_BATCH_OPS:
                        self._run_batch(conn, batch)
                        batch, lazy = [], True
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    # Only starts and ends, right after a commit: let more come for COMMIT_GAP
                    # (under load, tasks end a few per commit rather than one). A sleep, not a
                    # wait on the queue: what comes meanwhile wakes no thread.
                    wait = self._last_commit + COMMIT_GAP - time.monotonic()
                    if not (batch and lazy and wait > 0):
                        break
                    time.sleep(wait)
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
            if batch:
                self._run_batch(conn, batch)
            if item is None:
                return

    def _checkpoint(self, conn: _Conn) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            self._dirty = False
        except sqlite3.Error:
            log.exception("journal: WAL checkpoint failed")

    def _run_read(self, conn: _Conn, op: _Op) -> None:
        try:
            done = [(op, True, op.fn(conn))]
        except Exception as exc:
            done = [(op, False, _journal_error(exc))]
        self._resolve(done)

    def _run_batch(self, conn: _Conn, batch: builtins.list[_Op]) -> None:
        """Run a batch in one transaction. Fast path: no savepoints, adjacent adds merged into
        one insert. If anything fails, roll back and redo each operation in its own savepoint,
        so that one bad write fails alone."""
        try:
            done = self._run_ops(conn, batch, isolated=False)
        except Exception:
            try:
                self._rollback(conn)
                done = self._run_ops(conn, batch, isolated=True)
            except Exception as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._rollback(conn)
                self._reclaim_due = False
                failure = _journal_error(exc)
                done = [(op, False, failure) for op in batch]
        if self._reclaim_due:
            self._reclaim_due = False
            self._reclaim(conn)
        self._resolve(done)

    def _rollback(self, conn: _Conn) -> None:
        self._env_cache.clear()  # it may name envs rows that were just rolled back
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def _run_ops(
        self, conn: _Conn, batch: builtins.list[_Op], *, isolated: bool
    ) -> builtins.list[tuple[_Op, bool, Any]]:
        done: builtins.list[tuple[_Op, bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        i = 0
        while i < len(batch):
            op = batch[i]
            if not isolated and op.rows is not None:
                j = i + 1
                while j < len(batch) and batch[j].rows is not None:
                    j += 1
                group = batch[i:j]
                ids = self._insert(conn, [r for g in group for r in g.rows or ()])
                at = 0
                for g in group:
                    n = len(g.rows or ())
                    done.append((g, True, ids[at : at + n]))
                    at += n
                i = j
                continue
            i += 1
            if not isolated:
                done.append((op, True, op.fn(conn)))
                continue
            conn.execute("SAVEPOINT op")
            try:
                result = op.fn(conn)
            except Exception as exc:
                if not conn.in_transaction:  # SQLite rolled the whole transaction back
                    raise
                self._env_cache.clear()
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                done.append((op, False, _journal_error(exc)))
                continue
            conn.execute("RELEASE op")
            done.append((op, True, result))
        observe = self.on_commit
        if observe is None:
            conn.execute("COMMIT")
        else:  # timed for the Prometheus histogram (taskerd.prom)
            t0 = time.perf_counter()
            conn.execute("COMMIT")
            observe(time.perf_counter() - t0)
        self._last_commit = time.monotonic()
        self.commits += 1
        self._dirty = True
        return done

    def _resolve(self, done: builtins.list[tuple[_Op, bool, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, builtins.list[Any]] = {}
        for op, ok, value in done:
            if op.future is None or op.loop is None:
                if not ok:
                    log.error("journal write failed: %s", value)
                continue
            by_loop.setdefault(op.loop, []).append((op.future, ok, value))
        for loop, results in by_loop.items():
            # A closed loop raises RuntimeError: nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, results)

    def _fail_pending(self, exc: BaseException) -> None:
        leftover: builtins.list[tuple[_Op, bool, Any]] = []
        while True:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                break
            if op is not None:
                leftover.append((op, False, exc))
        self._resolve(leftover)

    # ---- queueing operations ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("journal is closed")

    def _queue_write(
        self,
        fn: Callable[[_Conn], T],
        rows: builtins.list[_NewTask] | None = None,
        *,
        lazy: bool = False,
    ) -> asyncio.Future[T]:
        self._check_open()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Op(fn, fut, loop, rows, lazy=lazy))
        return fut

    async def _write(
        self,
        fn: Callable[[_Conn], T],
        rows: builtins.list[_NewTask] | None = None,
        *,
        lazy: bool = False,
    ) -> T:
        return await self._queue_write(fn, rows, lazy=lazy)

    async def _read(self, fn: Callable[[_Conn], T]) -> T:
        """Run ``fn`` on the journal thread once every write queued before it has committed."""
        self._check_open()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Op(fn, fut, loop, read=True))
        return await fut

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> Callable[[_Conn], list[Any]]:
        return lambda conn: conn.execute(sql, params).fetchall()

    # ---- writes ----------------------------------------------------------------------------

    async def add(
        self, specs: Sequence[pb.TaskSpec], *, now: float, env: Mapping[str, str] | None = None
    ) -> builtins.list[int]:
        """Insert QUEUED tasks in one transaction (all or nothing); ids once committed, in order.

        ``env`` is the environment of the specs whose own env is empty (stored once).
        """
        return await self.queue_add(specs, now=now, env=env)

    def queue_add(
        self,
        specs: Sequence[pb.TaskSpec],
        *,
        now: float,
        env: Mapping[str, str] | None = None,
        stashed: bool = False,
        states: Sequence[int] | None = None,
        deps: Sequence[Sequence[int] | None] | None = None,
        restarted_from: Sequence[int] | None = None,
        schedule_id: int = 0,
        schedule_next_at: float | None = None,
        submitted_by: str = "",
    ) -> asyncio.Future[builtins.list[int]]:
        """:meth:`add`, queued at once: the future of its ids. ``stashed``: STASHED tasks.

        One item per spec in each of these, when given: ``states``, each task's first state
        (QUEUED, STASHED, WAITING or SCHEDULED; it overrides ``stashed``); ``deps``, the ids of
        its dependencies, ``-(k + 1)`` naming the k-th task of this call; ``restarted_from``
        (0: none). The column start_at is the spec's. ``schedule_id``: the schedule of every
        task; with ``schedule_next_at``, that schedule's occurrence is counted in the same
        transaction (next_at, last_task: the last new id, submitted + len(specs)).
        ``submitted_by``: the name of the token that submitted them ("": the Unix socket).
        """
        n = len(specs)
        for name, items in (("states", states), ("deps", deps), ("restarted_from", restarted_from)):
            if items is not None and len(items) != n:
                raise ValueError(f"{name}: must have one item per spec")
        if schedule_next_at is not None and not schedule_id:
            raise ValueError("schedule_next_at: needs schedule_id")
        if not specs:
            return _resolved([])
        shared = pb.TaskSpec(env=env).SerializeToString(deterministic=True) if env else b""
        if states is None:
            state = _STASHED if stashed else _QUEUED
            rows = [_prepare(spec, now, shared, state) for spec in specs]
        else:
            if not _NEW_STATES.issuperset(states):
                raise ValueError(f"states: not a state for a new task: {set(states) - _NEW_STATES}")
            rows = [_prepare(spec, now, shared, st) for spec, st in zip(specs, states, strict=True)]
        if restarted_from is not None or schedule_id:
            if not 0 <= schedule_id <= MAX_ID:
                raise ValueError("schedule_id: must be a schedule id")
            for row, origin in zip(rows, restarted_from or [0] * n, strict=True):
                if not 0 <= origin <= MAX_ID:
                    raise ValueError("restarted_from: must be task ids (0: none)")
                if origin or schedule_id:
                    more = row.more = row.more or _More()
                    more.restarted_from, more.schedule_id = origin, schedule_id
        if submitted_by:
            for row in rows:
                more = row.more = row.more or _More()
                more.submitted_by = submitted_by
        if deps is not None:
            for k, (row, wanted) in enumerate(zip(rows, deps, strict=True)):
                if wanted:
                    more = row.more = row.more or _More()
                    more.deps, more.index = _dep_refs(wanted, k, n), k
        if schedule_next_at is None:
            return self._queue_write(lambda conn: self._insert(conn, rows), rows)

        def write(conn: _Conn) -> builtins.list[int]:  # not merged: its own ids to count
            ids = self._insert(conn, rows)
            conn.execute(
                "UPDATE schedules SET next_at = ?, last_task = ?, submitted = submitted + ? "
                "WHERE id = ?",
                (schedule_next_at, ids[-1], n, schedule_id),
            )
            return ids

        return self._queue_write(write)

    def _env_id(self, conn: _Conn, env: bytes) -> int:
        # Keyed by content: a dict lookup of bytes keeps the GIL, where sha256 of 3 KB drops it
        # and then waits to get it back. The hash is only computed to find the row.
        env_id = self._env_cache.get(env)
        if env_id is None:
            env_hash = hashlib.sha256(env).digest()
            conn.execute(
                "INSERT INTO envs (hash, data) VALUES (?, ?) ON CONFLICT (hash) DO NOTHING",
                (env_hash, env),
            )
            env_id = cast(
                int, conn.execute("SELECT id FROM envs WHERE hash = ?", (env_hash,)).fetchone()[0]
            )
            if len(self._env_cache) >= _ENV_CACHE_MAX:
                self._env_cache.clear()
            self._env_cache[env] = env_id
        return env_id

    def _insert(self, conn: _Conn, rows: Sequence[_NewTask]) -> builtins.list[int]:
        env_ids: dict[bytes, int] = {}
        for r in rows:
            if r.env and r.env not in env_ids:
                env_ids[r.env] = self._env_id(conn, r.env)
        # Many rows to a statement: sqlite3 lets go of the GIL for each step, and a step per
        # row would hand it back and forth with the event loop thousands of times a batch.
        # A statement for each run of rows of one state and group (and shape: with more or not).
        wide = False  # some rows have more
        at = 0
        while at < len(rows):
            state, group, plain = rows[at].state, rows[at].group, rows[at].more is None
            end = at + 1
            stop = min(len(rows), at + (_ROWS_PER_INSERT if plain else _ROWS_PER_INSERT_EXTRA))
            while (
                end < stop
                and rows[end].group == group
                and rows[end].state == state
                and (rows[end].more is None) is plain
            ):
                end += 1
            values: builtins.list[Any] = [group]
            if plain:
                values += [
                    x
                    for r in rows[at:end]
                    for x in (
                        r.priority, r.queued_at, r.once, r.max_retries, r.spec,
                        env_ids[r.env] if r.env else None,
                    )
                ]  # fmt: skip
            else:
                wide = True
                values += [
                    x
                    for r in rows[at:end]
                    if (m := r.more) is not None
                    for x in (
                        r.priority, r.queued_at, r.once, r.max_retries, r.spec,
                        env_ids[r.env] if r.env else None, m.start_at, m.restarted_from,
                        m.schedule_id, m.submitted_by,
                    )
                ]  # fmt: skip
            conn.execute(_insert_sql(end - at, state, not plain), values)
            at = end
        # One writer connection and AUTOINCREMENT: the rows just inserted have consecutive ids.
        last = cast(int, conn.execute("SELECT last_insert_rowid()").fetchone()[0])
        ids = list(range(last - len(rows) + 1, last + 1))
        labels = [(i, k, v) for i, r in zip(ids, rows, strict=True) for k, v in r.labels]
        if labels:
            conn.executemany("INSERT INTO labels (task_id, key, value) VALUES (?, ?, ?)", labels)
        stdins = [(i, r.stdin) for i, r in zip(ids, rows, strict=True) if r.stdin]
        if stdins:
            conn.executemany("INSERT INTO stdins (task_id, data) VALUES (?, ?)", stdins)
        if wide:
            self._insert_deps(conn, rows, ids)
        return ids

    @staticmethod
    def _insert_deps(conn: _Conn, rows: Sequence[_NewTask], ids: Sequence[int]) -> None:
        """The deps rows of the tasks just inserted (``rows``, which got ``ids``)."""
        # A negative dependency -(k + 1) is the k-th task of the row's call: i - index + k.
        pairs = [
            x
            for i, r in zip(ids, rows, strict=True)
            if (m := r.more) is not None
            for d in m.deps
            for x in (i, d if d > 0 else i - m.index - d - 1)
        ]
        for lo in range(0, len(pairs), 2 * _DEPS_PER_INSERT):
            part = pairs[lo : lo + 2 * _DEPS_PER_INSERT]
            conn.execute(_deps_sql(len(part) // 2), part)

    def mark_started(
        self,
        task_id: int,
        *,
        attempt: int,
        pid: int,
        worker: int,
        started_at: float,
        run: Run | None = None,
        node: str = "",
    ) -> None:
        """State RUNNING, with what identifies the run (``run``) once it is spawned, and the
        Dask worker it runs on (``node``; "" here).

        Fire-and-forget: queued to the journal thread, ordered with all other writes.
        """
        self._check_open()
        pgid, start, token = (run.pgid, run.start_time, run.token) if run else (0, 0, "")

        def write(conn: _Conn) -> None:
            conn.execute(
                f"UPDATE tasks SET state = {_RUNNING}, attempts = ?, pid = ?, worker = ?, "
                f"started_at = ?, run_pgid = ?, run_start = ?, run_token = ?, node = ? "
                f"WHERE id = ? AND {_STARTABLE}",
                (attempt, pid, worker, started_at, pgid, start, token, node, task_id),
            )

        self._queue.put(_Op(write, None, None, lazy=True))

    def mark_finished(
        self,
        task_id: int,
        *,
        state: int,
        ended_at: float,
        error: str = "",
        exit_code: int | None = None,
        signal: int | None = None,
        attempts: int | None = None,
        started_at: float | None = None,
        pid: int | None = None,
        worker: int | None = None,
        stdout: bytes | bytearray = b"",
        stderr: bytes | bytearray = b"",
        stdout_truncated: bool = False,
        stderr_truncated: bool = False,
        node: str | None = None,
    ) -> asyncio.Future[None]:
        """Terminal state and result, queued at once: the future of its commit. ``node``: the
        Dask worker of its last attempt (None: as journaled at its start, or it ran here)."""
        if state not in TERMINAL_STATES:
            raise ValueError(f"state: {state} is not a terminal state")

        def write(conn: _Conn) -> None:
            conn.execute(
                "UPDATE tasks SET state = ?, ended_at = ?, error = ?, exit_code = ?, signal = ?, "
                "attempts = COALESCE(?, attempts), started_at = COALESCE(?, started_at), "
                "pid = COALESCE(?, pid), worker = COALESCE(?, worker), node = COALESCE(?, node) "
                "WHERE id = ?",
                (
                    state,
                    ended_at,
                    error,
                    exit_code,
                    signal,
                    attempts,
                    started_at,
                    pid,
                    worker,
                    node,
                    task_id,
                ),
            )
            if stdout or stderr or stdout_truncated or stderr_truncated:
                conn.execute(
                    "INSERT OR REPLACE INTO outputs VALUES (?, ?, ?, ?, ?)",
                    (task_id, stdout, stderr, stdout_truncated, stderr_truncated),
                )

        return self._queue_write(write, lazy=True)

    def mark_finished_many(
        self, task_ids: Sequence[int], *, state: int, ended_at: float, error: str
    ) -> asyncio.Future[None]:
        """Many tasks to one terminal state in one transaction (recovery: all LOST; a cancel
        or a kill of queued or stashed tasks), queued at once: the future of its commit. Tasks
        that are already terminal are left as they are."""
        if state not in TERMINAL_STATES:
            raise ValueError(f"state: {state} is not a terminal state")
        ids = list(task_ids)
        if not ids:
            return _resolved(None)

        def write(conn: _Conn) -> None:
            for at in range(0, len(ids), _IDS_PER_UPDATE):  # a statement per row: GIL hand-offs
                chunk = ids[at : at + _IDS_PER_UPDATE]
                conn.execute(
                    f"UPDATE tasks SET state = ?, ended_at = ?, error = ? WHERE {_UNFINISHED} "
                    f"AND id IN ({_marks(len(chunk))})",
                    (state, ended_at, error, *chunk),
                )

        return self._queue_write(write, lazy=True)

    async def requeue(
        self, task_ids: Sequence[int], *, attempts: Sequence[int] | None = None
    ) -> None:
        """Back to QUEUED (crash recovery / retry), optionally recording attempts."""
        if attempts is not None and len(attempts) != len(task_ids):
            raise ValueError("attempts: must have one item per task id")
        if not task_ids:
            return
        counts: Sequence[int | None] = [None] * len(task_ids) if attempts is None else attempts
        params = list(zip(counts, task_ids, strict=True))
        await self._write(
            lambda conn: conn.executemany(
                f"UPDATE tasks SET state = {_QUEUED}, attempts = COALESCE(?, attempts), "
                "ended_at = NULL, exit_code = NULL, signal = NULL, error = '', run_pgid = 0, "
                "run_start = 0, run_token = '' WHERE id = ?",
                params,
            )
        )

    async def discard(self, task_ids: Sequence[int]) -> None:
        """Delete tasks that were never acknowledged (their Submit was abandoned mid-call)."""
        keys = [(i,) for i in task_ids]
        if keys:
            await self._write(lambda conn: self._delete(conn, keys))

    def set_priority(self, task_ids: Collection[int], priority: int) -> asyncio.Future[int]:
        """The priority of unfinished tasks, in their row and in their stored spec (so their
        records show it), in one transaction; queued at once: the future of how many changed.
        Their queued_at (their place within a level) is unchanged."""
        ids = sorted(set(task_ids))
        if not ids:
            return _resolved(0)
        level = priority or pb.PRIORITY_NORMAL

        def write(conn: _Conn) -> int:
            changed: builtins.list[tuple[int, bytes, int]] = []
            for at in range(0, len(ids), _IDS_PER_UPDATE):
                chunk = ids[at : at + _IDS_PER_UPDATE]
                for task_id, blob in conn.execute(
                    f"SELECT id, spec FROM tasks WHERE id IN ({_marks(len(chunk))}) "
                    f"AND {_UNFINISHED}",
                    chunk,
                ):
                    spec = pb.TaskSpec.FromString(blob)
                    spec.priority = cast("pb.Priority.ValueType", priority)
                    changed.append((level, spec.SerializeToString(), task_id))
            conn.executemany("UPDATE tasks SET priority = ?, spec = ? WHERE id = ?", changed)
            return len(changed)

        return self._queue_write(write)

    def enqueue(
        self, task_ids: Collection[int], *, enqueue_at: float | None
    ) -> asyncio.Future[int]:
        """Stashed tasks to QUEUED (``enqueue_at`` None: their queued_at is unchanged), or left
        STASHED with ``enqueue_at`` planned; queued at once: the future of how many changed.
        Tasks that are not stashed are left as they are."""
        ids = sorted(set(task_ids))
        if not ids:
            return _resolved(0)
        state = _QUEUED if enqueue_at is None else _STASHED

        def write(conn: _Conn) -> int:
            changed = 0
            for at in range(0, len(ids), _IDS_PER_UPDATE):
                chunk = ids[at : at + _IDS_PER_UPDATE]
                changed += conn.execute(
                    f"UPDATE tasks SET state = ?, enqueue_at = ? WHERE state = {_STASHED} "
                    f"AND id IN ({_marks(len(chunk))})",
                    (state, enqueue_at, *chunk),
                ).rowcount
            return changed

        return self._queue_write(write)

    def remove(self, task_ids: Collection[int]) -> asyncio.Future[int]:
        """Delete the finished (terminal) tasks among ``task_ids`` as :meth:`clean` does (their
        labels, stdin, output, deps, envs no task uses any more); others are left, and so are
        those :meth:`dependents_waiting` names. Queued at once: the future of how many were
        removed."""
        ids = sorted({i for i in task_ids if 0 < i <= MAX_ID})
        if not ids:
            return _resolved(0)

        def write(conn: _Conn) -> int:
            keys: builtins.list[tuple[int]] = []
            for at in range(0, len(ids), _IDS_PER_UPDATE):
                chunk = ids[at : at + _IDS_PER_UPDATE]
                keys += conn.execute(
                    f"SELECT id FROM tasks WHERE id IN ({_marks(len(chunk))}) AND {_TERMINAL} "
                    f"AND NOT {_DEPENDED_ON.format('tasks.id')}",
                    chunk,
                ).fetchall()
            if keys:
                self._delete(conn, keys)
                self._want_reclaim(conn)
            return len(keys)

        return self._queue_write(write)

    def set_state(
        self,
        task_ids: Collection[int],
        state: int,
        *,
        start_at: float | EllipsisType | None = ...,
    ) -> asyncio.Future[int]:
        """Tasks that have not started (QUEUED, STASHED, WAITING, SCHEDULED) to ``state`` (one of
        these), and their start_at column to ``start_at`` when given (None clears it); leaving
        STASHED drops enqueue_at. Others are left as they are. Queued at once: the future of how
        many changed."""
        if state not in _NEW_STATES:
            raise ValueError(f"state: {state} is not a state of a task that has not started")
        ids = sorted({i for i in task_ids if 0 < i <= MAX_ID})
        if not ids:
            return _resolved(0)
        sets, where = "state = ?", "state != ?"
        params: builtins.list[float | None] = [state, state]
        if state != _STASHED:
            sets += ", enqueue_at = NULL"
        if not isinstance(start_at, EllipsisType):
            sets += ", start_at = ?"
            where += " OR start_at IS NOT ?"
            params[1:1] = [start_at]
            params.append(start_at)

        def write(conn: _Conn) -> int:
            changed = 0
            for at in range(0, len(ids), _IDS_PER_UPDATE):
                chunk = ids[at : at + _IDS_PER_UPDATE]
                changed += conn.execute(
                    f"UPDATE tasks SET {sets} WHERE {_NOT_STARTED} AND ({where}) "
                    f"AND id IN ({_marks(len(chunk))})",
                    (*params, *chunk),
                ).rowcount
            return changed

        return self._queue_write(write)

    def replace_spec(
        self, task_id: int, spec: pb.TaskSpec, *, env: Mapping[str, str] | None = None
    ) -> asyncio.Future[bool]:
        """Edit: a task that has not started (QUEUED, STASHED, WAITING, SCHEDULED) gets ``spec``,
        stored as :meth:`queue_add` stores it (``env``: for an empty ``spec.env``); its priority,
        once and max_retries columns follow. Its group, state, start_at and place are kept.
        Queued at once: the future of whether it changed a row."""
        if not 0 < task_id <= MAX_ID:
            return _resolved(False)
        shared = pb.TaskSpec(env=env).SerializeToString(deterministic=True) if env else b""
        new = _prepare(spec, 0.0, shared)

        def write(conn: _Conn) -> bool:
            found = conn.execute(
                f"SELECT env_id FROM tasks WHERE id = ? AND {_NOT_STARTED}", (task_id,)
            ).fetchone()
            if found is None:
                return False
            env_id = self._env_id(conn, new.env) if new.env else None
            conn.execute(
                "UPDATE tasks SET priority = ?, once = ?, max_retries = ?, spec = ?, env_id = ? "
                "WHERE id = ?",
                (new.priority, new.once, new.max_retries, new.spec, env_id, task_id),
            )
            conn.execute("DELETE FROM labels WHERE task_id = ?", (task_id,))
            if new.labels:
                conn.executemany(
                    "INSERT INTO labels (task_id, key, value) VALUES (?, ?, ?)",
                    [(task_id, k, v) for k, v in new.labels],
                )
            conn.execute("DELETE FROM stdins WHERE task_id = ?", (task_id,))
            if new.stdin:
                conn.execute(
                    "INSERT INTO stdins (task_id, data) VALUES (?, ?)", (task_id, new.stdin)
                )
            if found[0] is not None and found[0] != env_id:
                self._drop_envs(conn, [found[0]])
            return True

        return self._queue_write(write)

    def add_schedule(
        self,
        spec: pb.TaskSpec,
        *,
        every: float | None,
        cron: str,
        overlap: bool,
        next_at: float,
        now: float,
        env: Mapping[str, str] | None = None,
    ) -> asyncio.Future[int]:
        """Journal a schedule: ``spec`` in full, and ``env`` (for an empty ``spec.env``); either
        ``every`` (seconds) or ``cron``. Queued at once: the future of its id (never reused)."""
        if bool(every) == bool(cron):
            raise ValueError("every, cron: exactly one of them")
        if every is not None and every < 0:
            raise ValueError("every: must be > 0")
        blob = spec.SerializeToString()
        env_blob = pb.TaskSpec(env=env).SerializeToString(deterministic=True) if env else None

        def write(conn: _Conn) -> int:
            cursor = conn.execute(
                "INSERT INTO schedules (spec, env, every, cron, overlap, next_at, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (blob, env_blob, every or None, cron, int(overlap), next_at, now),
            )
            return cast(int, cursor.lastrowid)

        return self._queue_write(write)

    def update_schedule(
        self,
        schedule_id: int,
        *,
        next_at: float,
        last_task: int | None = None,
        submitted_inc: int = 0,
        skipped_inc: int = 0,
    ) -> asyncio.Future[bool]:
        """A schedule's next occurrence, last task (None: unchanged) and counts (added to).
        Queued at once: the future of whether the schedule exists."""
        if not 0 < schedule_id <= MAX_ID:
            return _resolved(False)

        def write(conn: _Conn) -> bool:
            return (
                conn.execute(
                    "UPDATE schedules SET next_at = ?, last_task = COALESCE(?, last_task), "
                    "submitted = submitted + ?, skipped = skipped + ? WHERE id = ?",
                    (next_at, last_task, submitted_inc, skipped_inc, schedule_id),
                ).rowcount
                > 0
            )

        return self._queue_write(write)

    def delete_schedule(self, schedule_id: int) -> asyncio.Future[bool]:
        """Forget a schedule (its tasks stay); queued at once: the future of whether it was
        journaled."""
        if not 0 < schedule_id <= MAX_ID:
            return _resolved(False)
        return self._queue_write(
            lambda conn: (
                conn.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,)).rowcount > 0
            )
        )

    def save_group(
        self,
        name: str,
        *,
        parallel: int,
        max_parallel: int,
        paused: bool,
        max_queue: int | None = None,
    ) -> asyncio.Future[None]:
        """Journal a group (insert or replace); queued at once: the future of its commit."""

        def write(conn: _Conn) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO groups (name, parallel, max_parallel, paused, max_queue) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, parallel, max_parallel, int(paused), max_queue),
            )

        return self._queue_write(write)

    def delete_group(self, name: str) -> asyncio.Future[bool]:
        """Forget a group (its tasks keep their group name); queued at once: the future of
        whether it was journaled."""
        return self._queue_write(
            lambda conn: conn.execute("DELETE FROM groups WHERE name = ?", (name,)).rowcount > 0
        )

    async def flush(self) -> None:
        """Wait until every write queued so far (``mark_started`` included) is committed."""
        await self._write(lambda conn: None)

    async def clean(self, *, older_than: float | None = None, now: float) -> int:
        """Delete terminal tasks that ended at least older_than seconds ago (all when None); their
        labels/outputs too; unreferenced envs. Returns how many tasks."""
        if older_than is None:
            return await self.prune(keep_finished=0, keep_for=None, now=now)
        return await self.prune(keep_finished=None, keep_for=older_than, now=now)

    async def prune(self, *, keep_finished: int | None, keep_for: float | None, now: float) -> int:
        """Retention: keep at most keep_finished terminal tasks (newest by id) and none older than
        keep_for seconds, but every one that :meth:`dependents_waiting` names. Returns how many
        deleted. Efficient on large journals (indexed, and batched so that other writes
        interleave)."""
        if keep_finished is None and keep_for is None:
            return 0
        if keep_finished is not None and keep_finished < 0:
            raise ValueError("keep_finished: must be >= 0")
        cutoff = None if keep_for is None else now - keep_for
        total = 0
        while True:
            deleted, more = await self._write(
                lambda conn: self._delete_chunk(conn, keep_finished, cutoff)
            )
            total += deleted
            if not more:
                break
        if total:
            await self._write(self._want_reclaim)
        return total

    def _delete_chunk(
        self, conn: _Conn, keep_finished: int | None, cutoff: float | None
    ) -> tuple[int, bool]:
        """Delete up to about DELETE_CHUNK victims; returns (deleted, maybe more)."""
        victims: set[int] = set()
        more = False
        if cutoff is not None:
            found = conn.execute(
                f"SELECT id FROM tasks INDEXED BY tasks_ended WHERE {_TERMINAL} AND ended_at <= ? "
                f"AND NOT {_DEPENDED_ON.format('tasks.id')} LIMIT ?",
                (cutoff, DELETE_CHUNK),
            ).fetchall()
            victims.update(r[0] for r in found)
            more = len(found) == DELETE_CHUNK
        if keep_finished is not None:
            edge = conn.execute(
                f"SELECT id FROM tasks INDEXED BY tasks_done WHERE {_TERMINAL} "
                "ORDER BY id DESC LIMIT 1 OFFSET ?",
                (keep_finished,),
            ).fetchone()
            if edge is not None:
                found = conn.execute(
                    f"SELECT id FROM tasks INDEXED BY tasks_done WHERE {_TERMINAL} AND id <= ? "
                    f"AND NOT {_DEPENDED_ON.format('tasks.id')} ORDER BY id LIMIT ?",
                    (edge[0], DELETE_CHUNK),
                ).fetchall()
                victims.update(r[0] for r in found)
                more = more or len(found) == DELETE_CHUNK
        if not victims:
            return 0, False
        keys = [(i,) for i in sorted(victims)]
        self._delete(conn, keys)
        return len(keys), more

    def _delete(self, conn: _Conn, keys: Sequence[tuple[int]]) -> None:
        """Delete tasks and everything attached (their own deps rows too); envs nobody uses any
        more."""
        env_ids = self._env_ids_of(conn, keys)
        conn.executemany("DELETE FROM labels WHERE task_id = ?", keys)
        conn.executemany("DELETE FROM outputs WHERE task_id = ?", keys)
        conn.executemany("DELETE FROM stdins WHERE task_id = ?", keys)
        for lo in range(0, len(keys), _IDS_PER_UPDATE):  # one statement: usually no rows
            part = [k[0] for k in keys[lo : lo + _IDS_PER_UPDATE]]
            conn.execute(f"DELETE FROM deps WHERE task_id IN ({_marks(len(part))})", part)
        conn.executemany("DELETE FROM tasks WHERE id = ?", keys)
        self._drop_envs(conn, env_ids)

    def _drop_envs(self, conn: _Conn, env_ids: Collection[int]) -> None:
        """Delete the envs rows among ``env_ids`` that no task uses any more."""
        if env_ids:
            gone = conn.executemany(
                "DELETE FROM envs WHERE id = ?1 AND NOT EXISTS "
                "(SELECT 1 FROM tasks WHERE env_id = ?1)",
                [(e,) for e in env_ids],
            ).rowcount
            if gone:
                self._env_cache.clear()

    @staticmethod
    def _env_ids_of(conn: _Conn, keys: Sequence[tuple[int]]) -> set[int]:
        env_ids: set[int] = set()
        for lo in range(0, len(keys), 500):
            part = [k[0] for k in keys[lo : lo + 500]]
            marks = ",".join("?" * len(part))
            env_ids.update(
                r[0]
                for r in conn.execute(
                    f"SELECT DISTINCT env_id FROM tasks WHERE id IN ({marks}) "
                    "AND env_id IS NOT NULL",
                    part,
                )
            )
        return env_ids

    def _want_reclaim(self, conn: _Conn) -> None:
        self._reclaim_due = True

    def _reclaim(self, conn: _Conn) -> None:
        """Give free pages back to the file system and truncate the WAL (outside a transaction)."""
        try:
            # executescript steps the pragma to completion (execute frees one page per call).
            conn.executescript("PRAGMA incremental_vacuum;")
        except sqlite3.Error:
            log.exception("journal: incremental vacuum failed")
        self._checkpoint(conn)

    # ---- reads (on the journal thread, in order with the writes) ---------------------------

    async def get(self, task_id: int, *, output: bool = False) -> pb.Task | None:
        """The full record (spec includes env and stdin); output only when asked."""
        if not 0 < task_id <= MAX_ID:
            return None
        rows = await self._read(self._rows(_GET_OUTPUT if output else _GET, (task_id,)))
        return _task(rows[0], full=True, output=output) if rows else None

    async def get_many(
        self, task_ids: Collection[int], *, output: bool = False, light: bool = False
    ) -> dict[int, pb.Task]:
        """Full records of the tasks that exist among ``task_ids``, in one read; ``light``:
        without output, and the spec without env and stdin (as :meth:`list` gives)."""
        wanted = sorted({i for i in task_ids if 0 < i <= MAX_ID})
        if light:
            sql = f"SELECT {_COLS} FROM tasks t WHERE t.id IN ({{}})"
        else:
            sql = (_GET_OUTPUT if output else _GET).replace("t.id = ?", "t.id IN ({})")

        def read(conn: _Conn) -> dict[int, pb.Task]:
            found: dict[int, pb.Task] = {}
            for at in range(0, len(wanted), 500):
                part = wanted[at : at + 500]
                for row in conn.execute(sql.format(",".join("?" * len(part))), part):
                    found[row[0]] = _task(row, full=not light, output=output and not light)
            return found

        return await self._read(read) if wanted else {}

    async def spec(self, task_id: int) -> pb.TaskSpec | None:
        """The full spec including env and stdin (used when a task starts)."""
        rows = await self._read(
            self._rows(
                "SELECT t.spec, e.data, s.data FROM tasks t LEFT JOIN envs e ON e.id = t.env_id "
                "LEFT JOIN stdins s ON s.task_id = t.id WHERE t.id = ?",
                (task_id,),
            )
        )
        return _spec_of(*rows[0]) if rows else None

    async def full_specs(self, task_ids: Collection[int]) -> dict[int, pb.TaskSpec]:
        """The full spec (env and stdin included) of each task that exists among ``task_ids``,
        in one read (for Restart)."""
        wanted = sorted({i for i in task_ids if 0 < i <= MAX_ID})

        def read(conn: _Conn) -> dict[int, pb.TaskSpec]:
            found: dict[int, pb.TaskSpec] = {}
            for lo in range(0, len(wanted), 500):
                part = wanted[lo : lo + 500]
                for task_id, light, env, stdin in conn.execute(
                    "SELECT t.id, t.spec, e.data, s.data FROM tasks t "
                    "LEFT JOIN envs e ON e.id = t.env_id LEFT JOIN stdins s ON s.task_id = t.id "
                    f"WHERE t.id IN ({_marks(len(part))})",
                    part,
                ):
                    found[task_id] = _spec_of(light, env, stdin)
            return found

        return await self._read(read) if wanted else {}

    async def failed_ids(self, limit: int) -> builtins.list[int]:
        """Ids of up to ``limit`` tasks in state FAILED, oldest first (``restart --failed``)."""
        rows = await self._read(
            self._rows(
                f"SELECT id FROM tasks WHERE state = {pb.TASK_STATE_FAILED} ORDER BY id LIMIT ?",
                (limit,),
            )
        )
        return [r[0] for r in rows]

    async def deps_of(self, task_ids: Collection[int]) -> dict[int, builtins.list[int]]:
        """The dependency ids (ascending) of each of ``task_ids`` that has any (recovery)."""
        found: dict[int, builtins.list[int]] = {}
        for task_id, dep_id in await self._by_ids(
            task_ids, "SELECT task_id, dep_id FROM deps WHERE task_id IN ({}) ORDER BY 1, 2"
        ):
            found.setdefault(task_id, []).append(dep_id)
        return found

    async def states_of(self, task_ids: Collection[int]) -> dict[int, int]:
        """The state of each of ``task_ids`` still in the journal."""
        return dict(await self._by_ids(task_ids, "SELECT id, state FROM tasks WHERE id IN ({})"))

    async def dependents_waiting(self, task_ids: Collection[int]) -> set[int]:
        """The tasks among ``task_ids`` that a task not queued yet (WAITING, SCHEDULED or
        STASHED) depends on: retention keeps them, and Remove must refuse them."""
        sql = f"SELECT id FROM tasks WHERE id IN ({{}}) AND {_DEPENDED_ON.format('tasks.id')}"
        return {r[0] for r in await self._by_ids(task_ids, sql)}

    async def _by_ids(self, task_ids: Collection[int], sql: str) -> builtins.list[Any]:
        """The rows of ``sql`` over ``task_ids``, in chunks (its ``{}``: their marks)."""
        wanted = sorted({i for i in task_ids if 0 < i <= MAX_ID})

        def read(conn: _Conn) -> builtins.list[Any]:
            rows: builtins.list[Any] = []
            for lo in range(0, len(wanted), _IDS_PER_READ):
                part = wanted[lo : lo + _IDS_PER_READ]
                rows += conn.execute(sql.format(_marks(len(part))), part).fetchall()
            return rows

        return await self._read(read) if wanted else []

    async def list(
        self,
        *,
        states: Collection[int] = (),
        labels: Mapping[str, str] | None = None,
        limit: int = 100,
        before_id: int | None = None,
        group: str | None = None,
    ) -> builtins.list[pb.Task]:
        """Newest first (id descending), ids < before_id, no output, spec WITHOUT env/stdin
        (light). All given labels must match; only ``group``'s tasks unless it is None."""
        return await self._read(
            lambda conn: _list_rows(conn, states, labels or {}, limit, before_id, group)
        )

    async def list_page(
        self,
        *,
        states: Collection[int],
        labels: Mapping[str, str],
        limit: int,
        before_id: int | None,
        ids: Collection[int],
        group: str | None = None,
    ) -> ListPage:
        """In one read: the rows in ``states`` (as :meth:`list`, of ``group`` unless None), and
        light rows of ``ids`` (whatever their group)."""
        wanted = sorted(ids)

        def read(conn: _Conn) -> ListPage:
            found = _list_rows(conn, states, labels, limit, before_id, group) if states else []
            by_id: dict[int, pb.Task] = {}
            for lo in range(0, len(wanted), 500):
                part = wanted[lo : lo + 500]
                sql = f"SELECT {_COLS} FROM tasks t WHERE t.id IN ({_marks(len(part))})"
                by_id.update((r[0], _task(r)) for r in conn.execute(sql, part))
            return ListPage(found, by_id)

        return await self._read(read)

    async def unfinished_page(self, *, after: int = 0, limit: int = -1) -> UnfinishedPage:
        """Unfinished (QUEUED, RUNNING, STASHED, WAITING, SCHEDULED) tasks ordered by id, from
        past ``after`` (up to ``limit``), for recovery: plain rows (a million of them), and the
        few rows with more (another group, a planned start, links) apart."""

        def read(conn: _Conn) -> UnfinishedPage:
            # In rowid order, page by page: an index on state would sort each page anew.
            rows = conn.execute(
                "SELECT id, state, queued_at, attempts, spec FROM tasks NOT INDEXED "
                f"WHERE id > ? AND {_NOT_TERMINAL} ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
            if not rows:
                return UnfinishedPage(rows, {})
            rare = conn.execute(
                f"SELECT id, NULLIF(grp, '{DEFAULT_GROUP}'), enqueue_at, start_at, "
                "restarted_from, schedule_id, submitted_by FROM tasks INDEXED BY tasks_rare "
                f"WHERE {_RARE} AND id > ? AND id <= ? AND {_NOT_TERMINAL}",
                (after, rows[-1][0]),
            ).fetchall()
            return UnfinishedPage(rows, {r[0]: Rare(*r[1:]) for r in rare})

        return await self._read(read)

    async def unfinished(self, *, after: int = 0, limit: int = -1) -> builtins.list[Unfinished]:
        """:meth:`unfinished_page` as one record a task."""
        page = await self.unfinished_page(after=after, limit=limit)
        plain = Rare(None, None, None, 0, 0, "")
        tasks = []
        for row in page.rows:
            more = page.rare.get(row[0], plain)
            tasks.append(Unfinished(*row, more.group or DEFAULT_GROUP, *more[1:]))
        return tasks

    async def runs(self) -> builtins.list[Run]:
        """What identifies each journaled RUNNING task's last run (for crash recovery)."""
        rows = await self._read(
            self._rows(
                "SELECT id, pid, run_pgid, run_start, run_token FROM tasks "
                f"WHERE state = {_RUNNING} ORDER BY id"
            )
        )
        return [Run(*r) for r in rows]

    async def groups(self) -> builtins.list[GroupRow]:
        """The journaled groups, by name."""
        rows = await self._read(
            self._rows(
                "SELECT name, parallel, max_parallel, paused, max_queue FROM groups ORDER BY name"
            )
        )
        return [GroupRow(n, p, m, bool(z), q) for n, p, m, z, q in rows]

    async def schedules(self) -> builtins.list[ScheduleRow]:
        """The journaled schedules, by id."""
        rows = await self._read(
            self._rows(
                "SELECT id, spec, env, every, cron, overlap, next_at, last_task, submitted, "
                "skipped, created_at FROM schedules ORDER BY id"
            )
        )
        found = []
        for sid, spec, env, every, cron, overlap, *counts in rows:
            env_map = dict(pb.TaskSpec.FromString(env).env) if env else {}
            spec_pb = pb.TaskSpec.FromString(spec)
            found.append(ScheduleRow(sid, spec_pb, env_map, every, cron, bool(overlap), *counts))
        return found

    async def last_id(self) -> int:
        """The highest id ever given (0 for a new journal); ids are never reused."""
        rows = await self._read(self._rows("SELECT seq FROM sqlite_sequence WHERE name = 'tasks'"))
        return int(rows[0][0]) if rows else 0


def _list_rows(
    conn: _Conn,
    states: Collection[int],
    labels: Mapping[str, str],
    limit: int,
    before_id: int | None,
    group: str | None = None,
) -> builtins.list[pb.Task]:
    """The rows of a List page, read on the journal thread (see :meth:`Store.list`)."""
    if limit <= 0:
        return []
    before = MAX_ID if before_id is None else min(before_id, MAX_ID)
    state_list = sorted(set(states))
    if group is not None and not labels and not state_list:
        state_list = _ALL_STATES  # state by state: each an indexed range
    if labels:
        (key0, value0), *others = labels.items()
        sql = (
            f"SELECT {_COLS} FROM labels l0 CROSS JOIN tasks t ON t.id = l0.task_id "
            "WHERE l0.key = ? AND l0.value = ? AND l0.task_id < ?"
        )
        params: builtins.list[Any] = [key0, value0, before]
        for key, value in others:
            sql += (
                " AND EXISTS (SELECT 1 FROM labels lx WHERE lx.task_id = t.id"
                " AND lx.key = ? AND lx.value = ?)"
            )
            params += [key, value]
        if state_list:
            sql += f" AND t.state IN ({_marks(len(state_list))})"
            params += state_list
        if group is not None:
            sql += " AND t.grp = ?"
            params.append(group)
        rows = conn.execute(sql + " ORDER BY l0.task_id DESC LIMIT ?", [*params, limit]).fetchall()
    elif state_list:
        # One indexed range per state, merged here: fast even when a state is rare.
        ids: builtins.list[int] = []
        for state in state_list:
            if group is None:
                found = conn.execute(
                    "SELECT id FROM tasks WHERE state = ? AND id < ? ORDER BY id DESC LIMIT ?",
                    (state, before, limit),
                )
            elif state in TERMINAL_STATES:
                found = conn.execute(
                    f"SELECT id FROM tasks INDEXED BY tasks_grp WHERE grp = ? AND {_TERMINAL} "
                    "AND state = ? AND id < ? ORDER BY id DESC LIMIT ?",
                    (group, state, before, limit),
                )
            else:
                found = conn.execute(
                    "SELECT id FROM tasks INDEXED BY tasks_state WHERE state = ? AND id < ? "
                    "AND grp = ? ORDER BY id DESC LIMIT ?",
                    (state, before, group, limit),
                )
            ids += (r[0] for r in found)
        ids = sorted(ids, reverse=True)[:limit]
        if not ids:
            return []
        rows = conn.execute(
            f"SELECT {_COLS} FROM tasks t WHERE t.id IN ({_marks(len(ids))}) ORDER BY t.id DESC",
            ids,
        ).fetchall()
    else:
        rows = conn.execute(
            f"SELECT {_COLS} FROM tasks t WHERE t.id < ? ORDER BY t.id DESC LIMIT ?",
            (before, limit),
        ).fetchall()
    return [_task(r) for r in rows]
