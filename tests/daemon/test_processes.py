"""A task's processes are contained, signalled once each, and ended exactly, also after a crash.

With ``cgroups = "auto"`` (a cgroup v2 per run) and ``"off"`` (process group and run token only),
against real processes, real signals and real cgroups: the runner in process, and real daemons.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasker.v1 import tasker_pb2 as pb
from taskerd import cgroups, procs
from taskerd.config import load
from taskerd.procs import TOKEN_VAR, RunIdentity
from taskerd.runner import Capture, Exit, Spawned, install_child_watcher, run_command
from tests.conftest import Daemon
from tests.daemon.util import alive, poll_state, spec, submit, wait, wait_gone

pytestmark = pytest.mark.timeout(60)

MODES = ["auto", "off"]


def _cgroup_v2_writable() -> bool:
    try:
        return os.access(os.path.join(cgroups.own_cgroup_dir(), "cgroup.procs"), os.W_OK)
    except OSError:
        return False


CGROUPS = _cgroup_v2_writable()


def _skip_without_cgroups(mode: str) -> None:
    if mode == "auto" and not CGROUPS:
        pytest.skip("no writable cgroup v2 hierarchy here: cgroups=auto falls back to off")


def wait_for(path: Path, timeout: float = 10) -> str:
    """The content of ``path`` once it holds a full line."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().endswith("\n")):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.01)
    return path.read_text()


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid``, from ``/proc/PID/task/TID/children``."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as fh:
                kids = [int(k) for k in fh.read().split()]
        except OSError:
            continue
        found += kids
        todo += kids
    return found


def wait_env_cleared(pid: int) -> None:
    """Wait until ``pid`` has exec'd with an empty environment (``env -i``): until then, it still
    carries its run token."""
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}/environ").read_bytes() != b"":
        assert time.monotonic() < deadline, f"{pid} never cleared its environment"
        time.sleep(0.01)


def in_subtree(pid: int, tree: str) -> bool:
    """True if ``pid`` is in a cgroup under the directory ``tree``."""
    own = Path("/proc/self/cgroup").read_text().partition("0::")[2].strip()
    mine = Path(f"/proc/{pid}/cgroup").read_text().partition("0::")[2].strip()
    return os.path.dirname(mine) == os.path.join(own, os.path.basename(tree))


def kill_all(pids: list[int]) -> None:
    """Clean-up: SIGKILL what is still alive of ``pids`` (processes the test started)."""
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    wait_gone(pids)


def subtree(state_dir: Path) -> str:
    """Where a daemon on ``state_dir`` keeps its runs' cgroups."""
    return os.path.join(
        cgroups.own_cgroup_dir(), cgroups.SUBTREE_PREFIX + procs.state_key(state_dir)
    )


# ------------------------------------------------------------------------ in process (runner)


@pytest.fixture(params=MODES)
def mode(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """``procs.configure`` for a state directory of this test's own, with or without cgroups."""
    install_child_watcher()
    _skip_without_cgroups(request.param)
    for name in ("_state_key", "_configured", "_tree"):
        monkeypatch.setattr(procs, name, getattr(procs, name))
    procs.configure(tmp_path / "state", cgroups=request.param == "auto")
    assert bool(procs._tree) == (request.param == "auto")
    yield request.param
    procs.close()


async def start_run(script: str, **kw: object) -> tuple[asyncio.Task[Exit], Capture]:
    """Start ``script`` (shell) with run_command; return once it has written something."""
    got = asyncio.Event()
    cap = Capture(1000, lambda s, d: got.set())
    task = asyncio.create_task(run_command([script], shell=True, capture=cap, **kw))  # type: ignore[arg-type]
    await asyncio.wait_for(got.wait(), 10)
    return task, cap


async def test_configure_is_idempotent_and_names_tokens_after_the_state_dir(
    mode: str, tmp_path: Path
) -> None:
    tree, prefix = procs._tree, procs.token_prefix()
    procs.configure(tmp_path / "state", cgroups=mode == "auto")
    assert (procs._tree, procs.token_prefix()) == (tree, prefix)
    assert prefix.startswith(procs.state_key(tmp_path / "state") + ".")
    assert procs.state_key(tmp_path / "state") == procs.state_key(tmp_path / "x" / ".." / "state")
    assert procs.state_key(tmp_path / "state") != procs.state_key(tmp_path / "other")


async def test_spawned_names_the_run_and_its_cgroup_holds_early_forks(mode: str) -> None:
    # The main process forks at once, before the placer thread can move it: its children must
    # end up in the cgroup too.
    for _ in range(5):
        seen: list[Spawned] = []
        task, _ = await start_run("sleep 300 & sleep 300 & echo up; wait", on_spawn=seen.append)
        (run,) = seen
        assert run.pid == run.pgid and run.start_time == procs.start_time(run.pid)
        assert run.token.startswith(procs.token_prefix())
        assert run.to_identity() == RunIdentity(run.pid, run.pid, run.start_time, run.token)
        if mode == "auto":
            assert run.cgroup == os.path.join(procs._tree, run.token.partition(".")[2])
            kids = descendants(run.pid)
            assert len(kids) == 2
            deadline = time.monotonic() + 5
            while cgroups.members(run.cgroup) != {run.pid, *kids}:
                assert time.monotonic() < deadline, (cgroups.members(run.cgroup), kids)
                await asyncio.sleep(0.01)
        else:
            assert run.cgroup == ""
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        if mode == "auto":
            deadline = time.monotonic() + 5
            while os.path.exists(run.cgroup):  # removed once the run is over
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)


async def test_exit_status_of_runs_that_end_before_or_while_they_are_moved(mode: str) -> None:
    # Short runs often end before the placer thread moves them (then they are not moved at all),
    # or while it does: their statuses are right and nothing is left behind.
    for _ in range(20):
        cap = Capture(100)
        exited = await run_command(["exit 7"], shell=True, capture=cap)
        killed = await run_command(["kill -KILL $$"], shell=True, capture=cap)
        assert (exited.exit_code, exited.signal) == (7, None)
        assert (killed.exit_code, killed.signal, killed.killed_by_us) == (None, 9, False)
    assert not procs.spawned  # every main process reaped
    if mode == "auto":
        deadline = time.monotonic() + 5
        while cgroups.children(procs._tree):  # every run's cgroup removed
            assert time.monotonic() < deadline, cgroups.children(procs._tree)
            await asyncio.sleep(0.01)


async def test_cancel_terms_each_process_once(mode: str, tmp_path: Path) -> None:
    # Both shells trap TERM and go on: a second SIGTERM would run a trap twice.
    for i in range(3):
        log = tmp_path / f"terms{i}"
        script = (
            f"trap 'echo leader >> {log}' TERM; "
            f"sh -c \"trap 'echo child >> {log}' TERM; while :; do sleep 0.02; done\" & "
            "sleep 0.1; echo up; while :; do sleep 0.02; done"
        )
        task, cap = await start_run(script, kill_grace=0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cap.exit is not None and cap.exit.signal == signal.SIGKILL  # it ignored SIGTERM
        assert sorted(log.read_text().split()) == ["child", "leader"]


async def test_a_shell_dies_of_the_signal_even_when_its_children_die_first(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A busy daemon signals processes one by one with time between them. A shell whose children
    # were signalled before it returned from its ``wait`` and exited 0 before its own SIGTERM
    # came: a timed-out task then looked like a success (exit 0). Its group goes first, at once.
    # (One by one, in a set's order, the shell came last about one time in eight.)
    if mode == "off":
        pytest.skip("without cgroups the group always had one killpg")
    kill = os.kill

    def slow_kill(pid: int, sig: int) -> None:
        kill(pid, sig)
        if sig:
            time.sleep(0.02)  # the daemon's loop, busy between two signals

    monkeypatch.setattr(os, "kill", slow_kill)
    for _ in range(24):
        seen: list[Spawned] = []
        task, cap = await start_run(
            "sleep 300 & sleep 300 & echo up; wait", kill_grace=2, on_spawn=seen.append
        )
        deadline = time.monotonic() + 5
        while len(cgroups.members(seen[0].cgroup)) < 3:  # all three in the run's cgroup
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cap.exit is not None
        assert (cap.exit.signal, cap.exit.exit_code) == (signal.SIGTERM, None), cap.exit


async def test_env_clearing_escapee_of_a_finished_run(mode: str, tmp_path: Path) -> None:
    # Leaves the session and clears its environment: only a cgroup still knows it. (The main
    # process lives on a little: see cgroups.py for what a run that ends at once may leave.)
    cap = Capture(1000)
    script = "setsid env -i sleep 300 >/dev/null 2>&1 </dev/null & echo $!; sleep 0.3"
    ended = await run_command([script], shell=True, capture=cap)
    assert ended.exit_code == 0
    (escapee,) = [int(p) for p in cap.stdout.split()]
    try:
        if mode == "auto":
            wait_gone([escapee], timeout=5)
        else:
            time.sleep(0.3)
            assert alive(escapee), "the documented limit of cgroups = off"
    finally:
        kill_all([escapee])
        procs.reap_orphans()


# ------------------------------------------------------------------------ end_previous_runs


def _start(argv: list[str], token: str, **kw: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, TOKEN_VAR: token}
    return subprocess.Popen(argv, env=env, **kw)  # type: ignore[call-overload, no-any-return]


def _carrying(tokens: set[str]) -> list[int]:
    """Live processes whose run token is one of ``tokens``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                env = Path(f"/proc/{name}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(f"{TOKEN_VAR}={t}".encode() in env for t in tokens) and alive(int(name)):
                found.append(int(name))
    return found


def _identity(proc: subprocess.Popen[bytes], token: str, start_time: int = 0) -> RunIdentity:
    return RunIdentity(proc.pid, proc.pid, start_time or procs.start_time(proc.pid), token)


def _pids_of(proc: subprocess.Popen[bytes], count: int) -> list[int]:
    """The process and ``count`` descendants of it (waits for them to be started)."""
    deadline = time.monotonic() + 10
    while len(kids := descendants(proc.pid)) < count:
        assert time.monotonic() < deadline, "descendants never started"
        time.sleep(0.01)
    return [proc.pid, *kids]


async def test_end_previous_runs(mode: str, tmp_path: Path) -> None:
    key = procs.state_key(tmp_path / "state")
    old = f"{key}.0badc0de"  # an earlier instance on this state directory
    started: list[subprocess.Popen[bytes]] = []
    cgroup = os.path.join(procs._tree, "0badc0de.3")

    tokens: set[str] = set()

    def start(argv: list[str], token: str, **kw: object) -> subprocess.Popen[bytes]:
        tokens.add(token)
        started.append(_start(argv, token, start_new_session=True, **kw))
        return started[-1]

    try:
        # An earlier instance's run, with a setsid member; one that ignores SIGTERM.
        a = start(["sh", "-c", "setsid sleep 300 & sleep 300 & wait"], f"{old}.1")
        b = start(["sh", "-c", "trap '' TERM; sleep 300 & wait"], f"{old}.2")
        # A journaled run whose token this daemon never gave out (an older version's).
        c = start(["sh", "-c", "sleep 300 & wait"], "legacy-7")
        # A journaled run whose leader is gone and whose pid now belongs to someone else: its
        # start time differs and no member carries its token.
        reused = start(["sleep", "300"], "someone-else")
        # Another state directory's earlier run, and a run of the current instance.
        other = start(["sleep", "300"], f"{procs.state_key(tmp_path / 'other')}.0badc0de.1")
        current = start(["sleep", "300"], f"{procs.token_prefix()}1")
        ended = _pids_of(a, 2) + _pids_of(b, 1) + _pids_of(c, 1)
        spared = [reused.pid, other.pid, current.pid]
        if mode == "auto":
            # A leftover cgroup: its member cleared its environment and left the session.
            os.mkdir(cgroup)
            d = start(["sh", "-c", "read x; setsid env -i sleep 300 & wait"], f"{old}.3",
                      stdin=subprocess.PIPE)  # fmt: skip
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as fh:
                fh.write(str(d.pid))
            assert d.stdin is not None
            d.stdin.write(b"go\n")
            d.stdin.close()
            ended += _pids_of(d, 1)
            wait_env_cleared(ended[-1])
        runs = [
            _identity(c, "legacy-7"),
            _identity(reused, "gone", start_time=procs.start_time(reused.pid) + 1),
        ]
        t0 = time.monotonic()
        count = await procs.end_previous_runs(runs, grace=0.5)
        took = time.monotonic() - t0
        assert count == len(ended)
        assert 0.5 <= took < 5, "b ignored SIGTERM: SIGKILL after the grace"
        wait_gone(ended, timeout=2)
        assert all(alive(p) for p in spared)
        if mode == "auto":
            assert not os.path.exists(cgroup), "the leftover cgroup is removed"
        assert b.wait(5) == -signal.SIGKILL and a.wait(5) == -signal.SIGTERM
        # Nothing left of earlier instances: a second pass finds nothing.
        assert await procs.end_previous_runs(runs, grace=0.5) == 0
    finally:
        if mode == "auto":
            cgroups.kill(cgroup)
            cgroups.remove(cgroup)  # best effort: a failed test may leave it to the next
        kill_all([p.pid for p in started] + _carrying(tokens))
        for p in started:
            p.wait(5)
        procs.reap_orphans()


# ------------------------------------------------------------------------ daemon level


def _terms_script(log: Path, ready: Path) -> str:
    return (
        f"trap 'echo leader >> {log}' TERM; "
        f"sh -c \"trap 'echo child >> {log}' TERM; while :; do sleep 0.02; done\" & "
        f"sleep 0.1; echo up > {ready}; while :; do sleep 0.02; done"
    )


@pytest.mark.parametrize("cgroup_mode", MODES)
def test_daemon_terms_each_process_once_on_cancel_and_timeout(
    make_daemon: type[Daemon], tmp_path: Path, cgroup_mode: str
) -> None:
    _skip_without_cgroups(cgroup_mode)
    d = make_daemon("--workers", "6", config=f'cgroups = "{cgroup_mode}"')
    specs = []
    for i in range(6):
        script = _terms_script(tmp_path / f"terms{i}", tmp_path / f"up{i}")
        specs.append(spec(script, shell=True, **({"timeout": 1.5} if i % 2 else {})))
    ids = submit(d.stub, *specs)
    for i in range(6):
        wait_for(tmp_path / f"up{i}")
    d.stub.Cancel(pb.CancelRequest(ids=ids[0::2]), timeout=10)
    done = wait(d.stub, *ids)
    for i, task_id in enumerate(ids):
        expected = pb.TASK_STATE_TIMED_OUT if i % 2 else pb.TASK_STATE_CANCELLED
        assert done[task_id].state == expected
        assert sorted((tmp_path / f"terms{i}").read_text().split()) == ["child", "leader"], i


_ESCAPEE = "setsid env -i sleep 300 >/dev/null 2>&1 </dev/null & echo $! > {}; sleep 300"


@pytest.mark.parametrize("cgroup_mode", MODES)
def test_daemon_env_clearing_escapee_on_timeout_cancel_and_stop(
    make_daemon: type[Daemon], tmp_path: Path, cgroup_mode: str
) -> None:
    _skip_without_cgroups(cgroup_mode)
    d = make_daemon("--workers", "3", config=f'cgroups = "{cgroup_mode}"\nstop_timeout = "0s"')
    files = [tmp_path / name for name in ("timeout", "cancel", "stop")]
    timed, cancelled, stopped = submit(
        d.stub,
        spec(_ESCAPEE.format(files[0]), shell=True, timeout=0.5),
        spec(_ESCAPEE.format(files[1]), shell=True),
        spec(_ESCAPEE.format(files[2]), shell=True),
    )
    escapees = [int(wait_for(f)) for f in files]
    try:
        for pid in escapees:
            wait_env_cleared(pid)
        if cgroup_mode == "auto":
            assert os.path.isdir(subtree(d.state_dir))
        d.stub.Cancel(pb.CancelRequest(id=cancelled), timeout=10)
        done = wait(d.stub, timed, cancelled)
        assert done[timed].state == pb.TASK_STATE_TIMED_OUT
        assert done[cancelled].state == pb.TASK_STATE_CANCELLED
        poll_state(d.stub, stopped, {pb.TASK_STATE_RUNNING})
        assert d.stop() == 0
        if cgroup_mode == "auto":
            wait_gone(escapees)
            assert not os.path.exists(subtree(d.state_dir)), "removed when the daemon stops"
        else:
            time.sleep(0.3)
            assert all(alive(p) for p in escapees), "the documented limit of cgroups = off"
    finally:
        kill_all(escapees)


@pytest.mark.parametrize("cgroup_mode", MODES)
def test_restart_after_kill9_ends_the_previous_runs_first(
    make_daemon: type[Daemon], tmp_path: Path, cgroup_mode: str
) -> None:
    _skip_without_cgroups(cgroup_mode)
    d = make_daemon("--workers", "2", config=f'cgroups = "{cgroup_mode}"')
    marks = tmp_path / "marks"
    script = (
        f"trap '' TERM; echo $$ >> {marks}; sleep 300 & echo $! >> {marks}; "
        f"setsid sleep 300 >/dev/null 2>&1 & echo $! >> {marks}; "
        f"setsid env -i sleep 300 >/dev/null 2>&1 </dev/null & echo $! >> {marks}; wait"
    )
    [task_id] = submit(d.stub, spec(script, shell=True, once=True))
    deadline = time.monotonic() + 10
    while len(marks.read_text().split() if marks.exists() else []) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    leader, child, setsid_child, env_cleared = old = [int(p) for p in marks.read_text().split()]
    try:
        wait_env_cleared(env_cleared)
        if cgroup_mode == "auto":
            # A crash before the daemon's placer thread has moved the run (a few milliseconds
            # after the spawn) leaves what forked before that outside the run's cgroup.
            deadline = time.monotonic() + 5
            while not all(in_subtree(p, subtree(d.state_dir)) for p in old):
                assert time.monotonic() < deadline, "not all in the run's cgroup"
                time.sleep(0.01)
        d.kill9()
        time.sleep(0.2)
        assert all(alive(p) for p in old), "a crashed daemon's tasks live on"
        d.start()  # ready only once recovery ended them (SIGTERM ignored: SIGKILL after 1s)
        if cgroup_mode == "auto":
            assert not [p for p in old if alive(p)], old
            assert not cgroups.children(subtree(d.state_dir)), "the leftover cgroup is removed"
        else:
            assert not any(alive(p) for p in (leader, child, setsid_child))
            assert alive(env_cleared), "the documented limit of cgroups = off"
        assert d.stub.Get(pb.GetRequest(id=task_id), timeout=5).state == pb.TASK_STATE_LOST
    finally:
        kill_all(old)


def test_cgroups_key(tmp_path: Path) -> None:
    assert load(None, {}).cgroups == "auto"
    assert load(None, {"cgroups": "off"}).cgroups == "off"
    assert 'cgroups = "auto"' in load(None, {}).to_toml()
    with pytest.raises(ValueError, match="cgroups must be 'auto' or 'off'"):
        load(None, {"cgroups": "on"})
