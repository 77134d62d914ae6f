"""`submit --batch` that the queue cuts short, `cancel` of many ids in one request, and
`cancel --all / --label / --state`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tasker.v1 import tasker_pb2 as pb
from tests.cli.test_cli import submit_id, tc
from tests.cli.test_results import wait_for
from tests.conftest import Daemon


def test_batch_cut_short_prints_what_was_accepted(
    make_daemon: type[Daemon], tmp_path: Path
) -> None:
    """A later request of a batch hit a full queue: no id was printed, and it exited 75,
    although the first requests' tasks were accepted (and ran): retrying duplicated them."""
    d = make_daemon("--workers", "1", "--max-workers", "1", "--max-queue", "1500")
    blocker = submit_id(d, "--", "sleep", "30")
    wait_for(d, blocker, pb.TASK_STATE_RUNNING)
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("# 2,500 jobs\n" + "".join(f"true job{i}\n" for i in range(1, 2501)))
    p = tc(d, "submit", "--batch", str(jobs), "-l", "grp=batch")
    ids = [int(x) for x in p.stdout.split()]
    assert p.returncode == 75 and len(ids) == 1000, p.stderr
    assert p.stderr == (
        "taskerctl: error: queue full (1000/1500): 1,000 tasks accepted (ids printed), "
        f"1,500 commands not submitted, from line 1,002 on (resume: tail -n +1002 {jobs})\n"
    )
    rest = subprocess.run(["tail", "-n", "+1002", str(jobs)], capture_output=True, text=True)
    assert rest.stdout.splitlines()[0] == "true job1001"  # the first command not submitted
    listed = json.loads(tc(d, "list", "--json", "-l", "grp=batch", "-n", "2000").stdout)
    assert sorted(t["id"] for t in listed) == ids  # what was printed is what exists
    assert tc(d, "cancel", "--label", "grp=batch").returncode == 0
    as_json = tc(d, "submit", "--json", "--batch", "-", input="true\n" * 2500)
    assert as_json.returncode == 75 and len(json.loads(as_json.stdout)) == 1000
    assert "1,500 commands not submitted, from line 1,001 of the input on" in as_json.stderr
    cancelled = json.loads(tc(d, "cancel", "--all", "--json").stdout)
    assert len(cancelled) == 1001 and all(c["cancelled"] for c in cancelled)


def test_cancel_many_is_one_request(make_daemon: type[Daemon], tmp_path: Path) -> None:
    """F1: `cancel A B C` is one request: the queued ones leave the queue before the running one
    is stopped, so the worker it frees starts none of them."""
    d = make_daemon("--workers", "1", "--max-workers", "1")
    running = submit_id(d, "--", "sleep", "30")
    wait_for(d, running, pb.TASK_STATE_RUNNING)
    queued = [submit_id(d, "--", "touch", str(tmp_path / f"ran{i}")) for i in range(3)]
    p = tc(d, "cancel", str(running), *map(str, queued))
    assert p.returncode == 0
    assert p.stdout.splitlines() == [f"{i} cancelled" for i in (running, *queued)]
    for task_id in queued:
        task = wait_for(d, task_id, pb.TASK_STATE_CANCELLED)
        assert not task.HasField("started_at")
    wait_for(d, running, pb.TASK_STATE_CANCELLED)
    assert not list(tmp_path.glob("ran*"))


def test_cancel_selects_by_label_state_or_all(make_daemon: type[Daemon]) -> None:
    """`cancel --label K=V`, `--state queued|running`, `--all` (CancelRequest.labels/states/all)."""
    d = make_daemon("--workers", "1", "--max-workers", "1")
    running = submit_id(d, "-l", "grp=a", "--", "sleep", "30")
    wait_for(d, running, pb.TASK_STATE_RUNNING)
    a, b1, b2 = (submit_id(d, "-l", f"grp={g}", "--", "true") for g in ("a", "b", "b"))
    by_label = tc(d, "cancel", "--label", "grp=b")
    assert sorted(by_label.stdout.splitlines()) == sorted([f"{b1} cancelled", f"{b2} cancelled"])
    by_state = tc(d, "cancel", "--state", "queued", "--json")
    assert json.loads(by_state.stdout) == [{"id": a, "cancelled": True}]
    refused = tc(d, "cancel", "--state", "succeeded")
    assert refused.returncode == 2 and "only queued or running" in refused.stderr
    assert wait_for(d, running, pb.TASK_STATE_RUNNING)  # a running task was not selected
    everything = tc(d, "cancel", "--all")
    assert everything.stdout == f"{running} cancelled\n"
    nothing = tc(d, "cancel", "--all")
    assert (nothing.returncode, nothing.stdout) == (0, "")
    assert nothing.stderr == "taskerctl: no queued or running task matched\n"
