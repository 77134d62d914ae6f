"""The bursting rule as a pure function: how many burst workers the measured rates call for.

The manager's scaler samples, every ``burst_interval``, how many tasks arrived and how many
finished (the drain), turns both into tasks/s, estimates one worker's throughput, and asks
:func:`burst_target` for the number of burst workers it should have. It then spawns the
missing ones or retires the surplus (idle ones first; a busy one after its current task).
"""

from __future__ import annotations

import math

_EPSILON = 1e-9  # so that e.g. 20.0000001 / 10 still asks for 2 workers, not 3


def burst_target(
    *,
    arrival_rate: float,
    drain_rate: float,
    per_worker_rate: float | None,
    backlog: int,
    base: int,
    burst: int,
    max_workers: int,
    interval: float,
) -> int:
    """The number of burst workers wanted, in ``0 .. max_workers - base``.

    ``arrival_rate`` / ``drain_rate``: tasks/s submitted / finished over the last interval.
    ``per_worker_rate``: tasks/s one busy worker finishes (``1 / mean task duration``), or
    None while unknown. ``backlog``: tasks waiting that no existing worker is about to take.
    ``base`` / ``burst``: base workers and (non-retiring) burst workers now. ``interval``:
    the seconds the rates were measured over (about ``burst_interval``).

    The rule:

    - Grow only when arrivals outpace draining AND work is waiting: add
      ``ceil((arrival_rate - drain_rate) / per_worker_rate)`` workers, at most one per
      waiting task, up to the ceiling ``max_workers - base``. A backlog with no arrivals (or
      arrivals the drain keeps up with) never grows the pool, however slowly it drains.
    - Unknown throughput (no task finished yet): assume ``1 / interval``. Seeing no completion
      in the interval means a worker does fewer than that, so this is the least need that
      fits what was seen: one worker per task of net growth (arrived minus finished) in it.
    - Retire all burst workers once the surplus is gone: draining keeps up with arrivals and
      nothing is waiting. Otherwise keep the current number (capped by the ceiling).
    """
    ceiling = max(0, max_workers - base)
    current = min(max(0, burst), ceiling)
    deficit = arrival_rate - drain_rate
    if backlog <= 0:
        return 0 if deficit <= 0 else current
    if arrival_rate <= 0 or deficit <= 0:
        return current
    rate = per_worker_rate if per_worker_rate is not None and per_worker_rate > 0 else 0.0
    if rate == 0.0:
        rate = 1.0 / interval
    wanted = max(1, math.ceil(deficit / rate - _EPSILON))
    return min(ceiling, current + min(wanted, backlog))
