"""The runner against real processes: exit status, I/O, cancellation, escapees, reaping, hooks."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskerd import procs
from taskerd.runner import (
    TOKEN_VAR,
    Capture,
    HookError,
    Spawned,
    SpawnError,
    install_child_watcher,
    reap_orphans,
    run_command,
    run_hook,
)

pytestmark = pytest.mark.timeout(30)


def dead(pid: int) -> bool:
    """True if ``pid`` is gone or a zombie (dead, just not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return True
    return data[data.rfind(b")") + 2 :][:1] in (b"Z", b"X")


def gone(pid: int) -> bool:
    """True if ``pid`` no longer exists at all (dead and reaped)."""
    return not os.path.exists(f"/proc/{pid}")


def eventually(check: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return bool(check())  # type: ignore[operator]


def pids_in(data: bytes | bytearray) -> list[int]:
    return [int(x) for x in bytes(data).split()]


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Make the test process a child subreaper for one test, then undo it and clean up."""
    assert procs.become_subreaper()
    yield
    procs.set_subreaper(False)
    reap_orphans()


@pytest.fixture(autouse=True)
def _pidfd_watcher() -> None:
    install_child_watcher()


async def run(argv: list[str], **kw: object) -> tuple[Capture, object]:
    cap = Capture(1 << 20)
    ended = await run_command(argv, capture=cap, **kw)  # type: ignore[arg-type]
    return cap, ended


async def test_exit_codes() -> None:
    _, ok = await run(["true"])
    _, bad = await run(["sh", "-c", "exit 7"])
    assert (ok.exit_code, ok.signal, ok.killed_by_us) == (0, None, False)  # type: ignore[attr-defined]
    assert (bad.exit_code, bad.signal) == (7, None)  # type: ignore[attr-defined]


async def test_death_by_signal_is_not_ours() -> None:
    _, ended = await run(["kill -9 $$"], shell=True)
    assert (ended.exit_code, ended.signal, ended.killed_by_us) == (None, 9, False)  # type: ignore[attr-defined]


async def test_shell_mode_passes_args_from_dollar_zero() -> None:
    cap, _ = await run(['echo "$0|$1|$2"', "zero", "one", "two words"], shell=True)
    assert cap.stdout == b"zero|one|two words\n"


async def test_env_is_passed_with_token_and_none_inherits(monkeypatch: pytest.MonkeyPatch) -> None:
    cap, _ = await run(["/usr/bin/env"], env={"ONLY": "this"})
    lines = sorted(bytes(cap.stdout).splitlines())
    assert lines[0] == b"ONLY=this"
    assert lines[1].startswith(TOKEN_VAR.encode() + b"=") and len(lines) == 2
    monkeypatch.setenv("TASKER_TEST_INHERIT", "yes")
    cap, _ = await run(["sh", "-c", 'echo "$TASKER_TEST_INHERIT $TASKER_RUN_TOKEN"'])
    inherited, token = bytes(cap.stdout).split()
    assert inherited == b"yes" and token
    cap2, _ = await run(["sh", "-c", 'echo "$TASKER_RUN_TOKEN"'])
    assert cap2.stdout.strip() != token  # every run has its own token


async def test_command_is_looked_up_in_the_tasks_path(tmp_path: Path) -> None:
    tool = tmp_path / "mytool"
    tool.write_text("#!/bin/sh\necho found me\n")
    tool.chmod(0o755)
    cap, _ = await run(["mytool"], env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert cap.stdout == b"found me\n"
    with pytest.raises(SpawnError):
        await run(["mytool"], env={"PATH": "/usr/bin:/bin"})


async def test_cwd(tmp_path: Path) -> None:
    cap, ended = await run(["pwd"], cwd=str(tmp_path))
    assert cap.stdout.decode().strip() == str(tmp_path.resolve())
    assert ended.exit_code == 0  # type: ignore[attr-defined]
    cap, _ = await run(["sh", "-c", "ps -o sid= -p $$; echo $$"], cwd=str(tmp_path))
    sid, pid = pids_in(cap.stdout)
    assert sid == pid  # a new session on the cwd path too


async def test_cwd_spawn_leaves_the_daemon_where_it_was(tmp_path: Path) -> None:
    # The cwd path steps into the directory around posix_spawn: a relative command is found
    # there (as with Popen's cwd), and the daemon's own working directory is unchanged after,
    # also when the spawn fails.
    script = tmp_path / "here.sh"
    script.write_text("#!/bin/sh\necho from here\n")
    script.chmod(0o755)
    before = os.getcwd()
    cap, _ = await run(["./here.sh"], cwd=str(tmp_path))
    assert cap.stdout == b"from here\n" and os.getcwd() == before
    with pytest.raises(SpawnError):
        await run(["./missing.sh"], cwd=str(tmp_path))
    assert os.getcwd() == before


async def test_new_session_per_run() -> None:
    cap, _ = await run(["sh", "-c", "ps -o sid=,pgid= -p $$; echo $$"])
    sid, pgid, pid = pids_in(cap.stdout)
    assert sid == pgid == pid != os.getsid(0)


async def test_stdin_large_round_trip_and_devnull() -> None:
    data = os.urandom(1 << 20)
    cap, ended = await run(["cat"], stdin=data)
    assert ended.exit_code == 0 and bytes(cap.stdout) == data  # type: ignore[attr-defined]
    cap, _ = await run(["sh", "-c", "cat; echo end"])
    assert cap.stdout == b"end\n"  # /dev/null: cat sees EOF at once


async def test_stdin_not_read_does_not_hang() -> None:
    _, ended = await run(["true"], stdin=os.urandom(1 << 20))
    assert ended.exit_code == 0  # type: ignore[attr-defined]


async def test_stdout_stderr_separated_truncated_and_streamed_live() -> None:
    chunks: list[tuple[int, bytes]] = []
    cap = Capture(5, lambda stream, data: chunks.append((stream, data)))
    script = "printf 0123456789; printf abc >&2; head -c 300000 /dev/zero"
    ended = await run_command(["sh", "-c", script], capture=cap)
    assert ended.exit_code == 0
    assert cap.stdout == b"01234" and cap.stdout_truncated
    assert cap.stderr == b"abc" and not cap.stderr_truncated
    out = b"".join(d for s, d in chunks if s == 1)
    err = b"".join(d for s, d in chunks if s == 2)
    assert out == b"0123456789" + bytes(300000) and err == b"abc"


async def test_on_spawn_gets_pid_before_output() -> None:
    seen: list[object] = []
    cap = Capture(100, lambda s, d: seen.append(d))
    started: list[int] = []

    def spawned(s: Spawned) -> None:
        seen.append(s)
        started.append(s.start_time)  # read while the process runs (it is read on first use)

    ended = await run_command(["sh", "-c", "echo $$"], capture=cap, on_spawn=spawned)
    assert isinstance(seen[0], Spawned)
    assert seen[0].pid == seen[0].pgid == ended.pid == int(cap.stdout)
    assert started[0] > 0 and seen[0].token.startswith(procs.token_prefix())
    assert cap.exit == ended


async def test_spawn_errors() -> None:
    with pytest.raises(
        SpawnError, match=r"^spawn failed: no-such-cmd-x: No such file or directory"
    ):
        await run(["no-such-cmd-x"])
    with pytest.raises(SpawnError, match="No such file or directory"):
        await run(["/nonexistent/bin/x"])
    with pytest.raises(SpawnError, match=r"^spawn failed: true: No such file or directory"):
        await run(["true"], cwd="/nonexistent-dir")
    with pytest.raises(SpawnError, match="Permission denied"):
        await run(["/etc/passwd"])


async def test_spawn_error_for_unusable_cwd(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o000)
    try:
        with pytest.raises(SpawnError, match="Permission denied"):
            await run(["true"], cwd=str(locked))
    finally:
        locked.chmod(0o755)


async def test_leftover_background_children_are_killed_at_exit() -> None:
    # The background sleep holds stdout open; the run must still end promptly and kill it.
    t0 = time.monotonic()
    cap, ended = await run(["sleep 300 & echo $!; exit 4"], shell=True)
    assert ended.exit_code == 4  # type: ignore[attr-defined]
    assert time.monotonic() - t0 < 5
    (child,) = pids_in(cap.stdout)
    assert eventually(lambda: dead(child))


async def test_escapee_of_finished_run_is_killed(subreaper: None) -> None:
    t0 = time.monotonic()
    cap, ended = await run(["setsid sleep 300 & echo $!; sleep 0.3"], shell=True)
    assert ended.exit_code == 0  # type: ignore[attr-defined]
    assert time.monotonic() - t0 < 5
    (child,) = pids_in(cap.stdout)
    assert eventually(lambda: dead(child))


async def cancel_after_output(
    argv: list[str], grace: float, lines: int = 1
) -> tuple[Capture, float, list[int]]:
    got = asyncio.Event()
    cap = Capture(1000, lambda s, d: got.set() if cap.stdout.count(b"\n") >= lines else None)
    spawned: list[int] = []
    task = asyncio.create_task(
        run_command(
            argv,
            shell=True,
            capture=cap,
            kill_grace=grace,
            on_spawn=lambda s: spawned.append(s.pid),
        )
    )
    await asyncio.wait_for(got.wait(), 10)
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return cap, time.monotonic() - t0, spawned


async def test_cancel_kills_the_whole_group_with_sigterm() -> None:
    cap, took, (leader,) = await cancel_after_output(["sleep 300 & echo $!; sleep 300"], 5.0)
    (child,) = pids_in(cap.stdout)
    assert took < 3  # SIGTERM was enough: no waiting for the grace
    assert cap.exit is not None and cap.exit.signal == signal.SIGTERM and cap.exit.killed_by_us
    assert eventually(lambda: dead(child)) and gone(leader)


async def test_cancel_escalates_to_sigkill_after_grace() -> None:
    script = "trap '' TERM; sleep 300 & echo $!; wait; wait"
    cap, took, _ = await cancel_after_output([script], 0.3)
    (child,) = pids_in(cap.stdout)
    assert 0.25 <= took < 4
    assert cap.exit is not None and cap.exit.signal == signal.SIGKILL and cap.exit.killed_by_us
    assert eventually(lambda: dead(child))


async def test_second_cancel_escalates_at_once() -> None:
    got = asyncio.Event()
    cap = Capture(1000, lambda s, d: got.set())
    task = asyncio.create_task(
        run_command(["trap '' TERM; echo up; sleep 300"], shell=True, capture=cap, kill_grace=20)
    )
    await asyncio.wait_for(got.wait(), 10)
    task.cancel()
    await asyncio.sleep(0.2)
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - t0 < 5
    assert cap.exit is not None and cap.exit.signal == signal.SIGKILL


async def test_cancel_kills_setsid_escapee(subreaper: None) -> None:
    # The escapee leaves the group and the session, and does not hold the pipes.
    script = "setsid sleep 300 >/dev/null 2>&1 </dev/null & echo $!; sleep 300"
    cap, took, _ = await cancel_after_output([script], 2.0)
    (child,) = pids_in(cap.stdout)
    assert took < 3
    assert eventually(lambda: dead(child))
    assert eventually(lambda: reap_orphans() >= 0 and gone(child))


async def test_periodic_reaper_kills_stale_escapee_and_reaps_it(subreaper: None) -> None:
    # Finished run whose escapee holds no pipe: the run ends at once, the reaper finishes it.
    cap, _ = await run(
        ["setsid sleep 300 >/dev/null 2>&1 </dev/null & echo $!; sleep 0.3"], shell=True
    )
    (child,) = pids_in(cap.stdout)
    assert eventually(lambda: reap_orphans() >= 0 and gone(child))


async def test_adopted_orphan_is_reaped(subreaper: None) -> None:
    # A double fork inside a live run: the grandchild is adopted by us and exits on its own.
    got = asyncio.Event()
    cap = Capture(1000, lambda s, d: got.set())
    script = "(sh -c 'echo $$; exec sleep 0.3' &); sleep 300"
    task = asyncio.create_task(run_command([script], shell=True, capture=cap))
    await asyncio.wait_for(got.wait(), 10)
    (orphan,) = pids_in(cap.stdout)
    assert eventually(lambda: dead(orphan))
    await asyncio.sleep(0.2)
    assert not gone(orphan)  # a zombie until someone reaps it
    assert reap_orphans() >= 1
    assert gone(orphan)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_reaper_leaves_asyncio_children_alone(subreaper: None) -> None:
    proc = await asyncio.create_subprocess_exec("sh", "-c", "exit 5", start_new_session=True)
    await asyncio.sleep(0.3)  # a zombie now, but not yet collected by asyncio
    reap_orphans()
    assert await proc.wait() == 5


async def test_run_hook() -> None:
    assert await run_hook("echo '  worker-7 '; echo noise >&2") == "worker-7"
    assert await run_hook('echo "$HOOKVAR"', env={"HOOKVAR": "v"}) == "v"
    with pytest.raises(HookError, match=r"^second$") as err:
        await run_hook("echo first >&2; echo second >&2; exit 3")
    assert err.value.exit is not None and err.value.exit.exit_code == 3
    t0 = time.monotonic()
    with pytest.raises(HookError, match=r"^stuck$"):
        await run_hook("echo stuck >&2; sleep 300", timeout=0.3)
    assert time.monotonic() - t0 < 5
    with pytest.raises(HookError, match="timed out"):
        await run_hook("sleep 300", timeout=0.2)
