"""At most once across the cluster: each run claims its ``run_key`` on the scheduler.

Dask may execute a function more than once: when the worker running it dies, and when it
retires gracefully. So before it spawns, :func:`taskerd.dask.worker.run_task` asks the
scheduler (handler ``tasker_claim``, added by :class:`Claims`) to claim its ``run_key``. The
first claim wins; any later one, from whichever worker, gets the holder's address and the run
does not spawn. The daemon, seeing ``claimed`` false in a result, decides: LOST for a ``once``
task, a new attempt (new ``run_key``) for an ordinary one.

A claim says "this attempt may have started on that worker": it is taken immediately before
the spawn. Claims live in the scheduler's memory, until the Dask key equal to the run key is
forgotten (the daemon dropped its future) or :func:`release` is called; a new scheduler starts
with none (the daemon handles a lost scheduler as a crash).

Install the plugin either from the daemon's client (:func:`register`, idempotent) or on the
scheduler itself: ``dask scheduler --preload taskerd.dask.claims``.

Client-side helpers take a ``distributed.Client``; with an asynchronous client they return
awaitables.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypedDict

from distributed.diagnostics.plugin import SchedulerPlugin

from taskerd.dask.spec import REVOKED

if TYPE_CHECKING:
    from distributed import Client, Scheduler

__all__ = [
    "NAME",
    "ClaimReply",
    "Claims",
    "call",
    "dask_setup",
    "lookup",
    "new_claimant",
    "register",
    "release",
    "revoke",
]

NAME = "tasker-claims"
"""The plugin's name on the scheduler."""


class ClaimReply(TypedDict):
    """The scheduler's answer to ``tasker_claim``."""

    ok: bool  # this claimant holds the claim now
    holder: str  # the holding worker's address, or REVOKED


class Claims(SchedulerPlugin):
    """Scheduler plugin: a table ``run_key -> holder`` and the handlers that use it.

    Handlers: ``tasker_claim(run_key, worker, claimant)`` (from a worker, right before the
    spawn), ``tasker_revoke(run_keys)``, ``tasker_lookup(run_keys)``, ``tasker_release(run_keys)``.
    """

    name = NAME
    idempotent = True  # registering again keeps the running instance and its claims

    def __init__(self) -> None:
        # run_key -> (claimant, worker address or REVOKED). The claimant is unique per
        # execution, so a worker restarted on the same address cannot take over an old claim.
        self.holders: dict[str, tuple[str, str]] = {}

    async def start(self, scheduler: Scheduler) -> None:
        """Add the handlers to the scheduler; quicken its streams (see :func:`quicken`)."""
        scheduler.handlers.update(
            tasker_claim=self.claim,
            tasker_revoke=self.revoke,
            tasker_lookup=self.lookup,
            tasker_release=self.release,
        )
        for stream in (*scheduler.stream_comms.values(), *scheduler.client_comms.values()):
            quicken(stream)

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        """A worker joined: quicken the scheduler's stream to it."""
        quicken(scheduler.stream_comms.get(worker))

    def add_client(self, scheduler: Scheduler, client: str) -> None:
        """A client connected: quicken the scheduler's stream to it."""
        quicken(scheduler.client_comms.get(client))

    def claim(self, run_key: str, worker: str, claimant: str) -> ClaimReply:
        """Claim ``run_key`` for one execution on ``worker``; the first claimant wins."""
        holder = self.holders.setdefault(run_key, (claimant, worker))
        return {"ok": holder[0] == claimant, "holder": holder[1]}

    def revoke(self, run_keys: list[str]) -> dict[str, str]:
        """Make every later claim of ``run_keys`` fail; return the worker holding each one
        already ("" when none did: it will never start)."""
        held: dict[str, str] = {}
        for key in run_keys:
            holder = self.holders.setdefault(key, (REVOKED, REVOKED))[1]
            held[key] = "" if holder == REVOKED else holder
        return held

    def lookup(self, run_keys: list[str]) -> dict[str, str]:
        """The holder of each of ``run_keys`` that has one (worker address or REVOKED)."""
        return {k: h[1] for k in run_keys if (h := self.holders.get(k)) is not None}

    def release(self, run_keys: list[str]) -> int:
        """Forget the claims of ``run_keys`` (the attempts are over); return how many were."""
        return sum(self.holders.pop(k, None) is not None for k in run_keys)

    def transition(
        self, key: Any, start: str, finish: str, *args: Any, stimulus_id: str, **kwargs: Any
    ) -> None:
        """Drop the claim of a run whose Dask key (when it is its run key) is forgotten."""
        if finish == "forgotten" and self.holders:
            self.holders.pop(key, None)


#: Seconds between batches on a stream of Dask's (its defaults: 2 to 10 ms).
SEND_INTERVAL = 0.001


def quicken(stream: Any) -> None:
    """Batch a Dask stream (a ``BatchedSend``) every millisecond rather than every 2 to 10.

    taskerd hands Dask one task per free slot, so each hand-over waits for the messages' round
    trip (client, scheduler, worker, and back); on an idle stream a message goes at once, but
    under load each waits for the stream's next batch. A little more CPU for the scheduler.
    """
    if stream is not None and hasattr(stream, "interval"):
        stream.interval = SEND_INTERVAL


async def dask_setup(scheduler: Scheduler) -> None:
    """``dask scheduler --preload taskerd.dask.claims``: install the plugin at start-up."""
    await scheduler.register_scheduler_plugin(Claims(), name=NAME, idempotent=True)


def new_claimant(worker: str) -> str:
    """A claimant id unique to one execution on ``worker``."""
    return f"{worker}#{secrets.token_hex(8)}"


# ------------------------------------------------------------------------------ from a client


def register(client: Client) -> Any:
    """Install :class:`Claims` on the client's scheduler, unless it is there already."""
    return client.register_plugin(Claims(), name=NAME)


async def call(client: Client, op: str, run_keys: list[str]) -> Any:
    """Await one of the plugin's handlers with ``run_keys`` (inside the client's loop)."""
    return await getattr(client.scheduler, op)(run_keys=run_keys)


def revoke(client: Client, run_keys: Iterable[str]) -> Any:
    """Revoke ``run_keys`` (a cancel): no execution may claim them from now on. Returns
    ``{run_key: worker address holding it, or "" if none}``: for each held one, the run may
    be going and :func:`taskerd.dask.worker.cancel_run` must go to that worker."""
    return client.sync(call, client, "tasker_revoke", list(run_keys))  # type: ignore[no-untyped-call]


def lookup(client: Client, run_keys: Iterable[str]) -> Any:
    """``{run_key: holder}`` for those of ``run_keys`` that are claimed (or revoked): what
    tells "may have started there" from "never started"."""
    return client.sync(call, client, "tasker_lookup", list(run_keys))  # type: ignore[no-untyped-call]


def release(client: Client, run_keys: Iterable[str]) -> Any:
    """Forget the claims of finished attempts (also done when their Dask key is forgotten)."""
    return client.sync(call, client, "tasker_release", list(run_keys))  # type: ignore[no-untyped-call]
