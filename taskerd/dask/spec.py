"""What the daemon and a Dask worker exchange for one run: the spec, the result, the events.

Plain data only (dicts of str, int, float, bool, bytes, lists), so that it pickles and packs
with msgpack; and no Dask import, so the daemon may read results without the worker module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypedDict

from taskerd.runner import STDERR, STDOUT, Capture, Exit, Spawned

__all__ = [
    "NODE_VAR",
    "REVOKED",
    "STDERR",
    "STDOUT",
    "Executor",
    "FinishedEvent",
    "Job",
    "NodeLost",
    "OutputEvent",
    "RunResult",
    "RunSpec",
    "StartedEvent",
    "to_exit",
]

NODE_VAR = "TASKER_NODE"
"""Set in each task's environment: the name of the Dask worker that runs it (else its address)."""

REVOKED = "revoked"
"""The holder of a claim revoked before any worker took it (:func:`taskerd.dask.claims.revoke`)."""


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One attempt of one task, as :func:`taskerd.dask.worker.run_task` takes it (as a dict:
    :meth:`to_dict`; unknown keys are refused).

    - ``task_id``, ``attempt``: the task and the attempt number as the daemon counts them; they
      only label events and results.
    - ``run_key``: unique per attempt. The key of the claim on the scheduler, of the run in its
      worker's registry (:func:`~taskerd.dask.worker.cancel_run`), and best also the Dask key of
      the submission (``client.submit(..., key=run_key)``): the claim is then dropped when Dask
      forgets that key.
    - ``argv``: the command; with ``shell`` it is ``/bin/sh -c argv[0] argv[1:]...``, otherwise
      argv[0] is looked up in the task's PATH.
    - ``topic``: the Dask event topic of the run's events (:class:`StartedEvent`,
      :class:`OutputEvent`); one topic per daemon instance is enough, events name their run.
    - ``env``: the task's own environment; empty means the worker's environment (the local
      rule: the task's variables, else the runner's).
    - ``env_add``: set on top of it (``TASKER_TASK_ID``, ``TASKER_ATTEMPT``, ``TASKER_DEADLINE``,
      ...). The worker adds ``TASKER_NODE`` and the runner ``TASKER_RUN_TOKEN``.
    - ``cwd``: working directory on the worker, or None for the worker's own.
    - ``stdin``: fed to the command, then closed; empty means /dev/null.
    - ``timeout``: seconds the run may take on the worker (None: no limit). Past it, every
      process of the run gets SIGTERM, SIGKILL after ``kill_grace``; ``timed_out`` is set.
    - ``kill_grace``: seconds between SIGTERM and SIGKILL on a timeout, a cancel or an end.
    - ``output_limit``: bytes kept per stream, as the local ``output_limit``; past it the rest
      is dropped and the stream's ``*_truncated`` flag set. Events carry exactly the kept bytes.
    - ``once``: at most once. The run claims ``run_key`` before it spawns and never spawns
      when the claim is lost (``claimed`` false in the result).
    - ``claim``: claim ``run_key`` for an ordinary task too (the default), so that a second
      execution by Dask (after a worker died or retired) does not spawn and the daemon decides
      what to do. False saves one round trip to the scheduler per run; Dask may then run it
      again on its own. Ignored (always claimed) with ``once``.
    - ``epoch``: the daemon instance that submitted the run; after a restart the daemon calls
      :func:`~taskerd.dask.worker.end_runs` with its new epoch to end the others.
    - ``return_output``: include the kept stdout and stderr in the result (for the journal;
      events may be missed by a client that was not subscribed).
    """

    task_id: int
    attempt: int
    run_key: str
    argv: list[str]
    topic: str
    env: dict[str, str] = field(default_factory=dict)
    env_add: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    stdin: bytes = b""
    shell: bool = False
    timeout: float | None = None
    kill_grace: float = 5.0
    output_limit: int = 1 << 20
    once: bool = False
    claim: bool = True
    epoch: str = ""
    return_output: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The spec as the plain dict that is submitted."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        """The spec from a submitted dict (TypeError on unknown or missing keys)."""
        return cls(**data)

    @property
    def claimed(self) -> bool:
        """Whether the run claims its ``run_key`` before it spawns."""
        return self.once or self.claim


class StartedEvent(TypedDict):
    """Logged on ``topic`` right after the spawn, before any output: always ``seq`` 1."""

    type: Literal["started"]
    run_key: str
    task_id: int
    attempt: int
    seq: int
    pid: int
    node: str  # TASKER_NODE
    address: str  # the worker's address (where cancel_run goes)
    time: float  # wall clock on the worker


class OutputEvent(TypedDict):
    """Logged on ``topic``: the next piece of one stream, in order (``seq`` 2, 3, ...).

    Output is batched: what a run writes within 100 ms, or up to 32 KiB, goes in one flush,
    one event per run of consecutive bytes of the same stream. Only the kept bytes (up to
    ``output_limit`` per stream) are sent.
    """

    type: Literal["output"]
    run_key: str
    task_id: int
    attempt: int
    seq: int
    stream: int  # 1 stdout, 2 stderr
    data: bytes


class RunResult(TypedDict):
    """What :func:`~taskerd.dask.worker.run_task` returns (never raises for the run itself).

    ``started`` false means no process was spawned: the claim was lost (``claimed`` false,
    ``claimed_by`` the worker address that holds it, or :data:`REVOKED`), it was cancelled
    before the spawn, or the spawn failed (``error`` says why). When started, ``exit_code``,
    ``signal`` and ``killed_by_us`` are those of :class:`taskerd.runner.Exit`
    (:func:`to_exit`), ``timed_out`` / ``cancelled`` say why we ended it.
    """

    run_key: str
    task_id: int
    attempt: int
    node: str
    address: str
    claimed: bool
    claimed_by: str
    started: bool
    pid: int  # 0 when not started
    exit_code: int | None
    signal: int | None
    killed_by_us: bool
    timed_out: bool
    cancelled: bool
    error: str
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    started_at: float | None  # wall clock on the worker
    ended_at: float
    last_seq: int  # seq of the last event sent: the daemon has them all once it saw that one


class FinishedEvent(TypedDict):
    """Logged on ``topic`` as a run's last event (``seq`` one past ``result["last_seq"]``):
    its result, without ``stdout`` and ``stderr`` (the output events carried them).

    The daemon takes a run's end from it rather than from the Dask future: it comes with the
    other events, where fetching the future's data costs a round trip through the scheduler to
    the worker. Not sent for a run that was already running on the worker (a second execution
    of its key there), whose future alone tells.
    """

    type: Literal["finished"]
    run_key: str
    seq: int
    result: RunResult


class NodeLost(Exception):
    """The worker (or the scheduler) running an attempt was lost after it started."""


@dataclass(frozen=True, slots=True)
class Job:
    """One attempt of one task, as an executor runs it."""

    task_id: int
    attempt: int
    argv: list[str]
    shell: bool
    env: dict[str, str]  # the task's own variables ({}: the runner's own environment)
    extras: dict[str, str]  # TASKER_* on top
    cwd: str | None
    stdin: bytes
    once: bool
    timeout: float | None  # what is left of its timeout
    kill_grace: float
    output_limit: int


class Executor(Protocol):
    """Where a group's attempts run when not here (a group's ``executor``; None: here)."""

    async def run(self, job: Job, capture: Capture, on_spawn: Callable[[Spawned], None]) -> Exit:
        """Run one attempt, feeding ``capture`` and calling ``on_spawn`` once it started."""


def to_exit(result: RunResult) -> Exit | None:
    """The local runner's :class:`~taskerd.runner.Exit` for a result; None if nothing ran."""
    if not result["started"]:
        return None
    return Exit(result["pid"], result["exit_code"], result["signal"], result["killed_by_us"])
