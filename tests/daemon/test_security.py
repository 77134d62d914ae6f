"""The files taskerd creates are its user's alone; a socket directory others control is refused."""

from __future__ import annotations

import grp
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Daemon
from tests.daemon.util import spec, submit, wait

#: A real other user and group: nobody / nogroup.
OTHER_UID = OTHER_GID = 65534
JOURNAL_FILES = ("journal.sqlite3", "journal.sqlite3-wal", "journal.sqlite3-shm")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_journal_and_state_dir_are_private(make_daemon: type[Daemon]) -> None:
    """Under umask 0, in a state directory that exists as 0755: 0700 and 0600 all the same."""
    d = make_daemon(start=False)
    d.state_dir.mkdir()
    os.chmod(d.state_dir, 0o755)
    old_umask = os.umask(0)
    try:
        d.start()
    finally:
        os.umask(old_umask)
    wait(d.stub, *submit(d.stub, spec("echo", "secret")))  # the WAL and its index now exist
    assert _mode(d.state_dir) == 0o700
    for name in (*JOURNAL_FILES, "taskerd.lock"):
        assert _mode(d.state_dir / name) == 0o600, name
    assert d.stop() == 0  # and its log is flushed
    assert "was mode 0755: made it 0700" in d.log()


def test_loose_journal_files_are_tightened(make_daemon: type[Daemon]) -> None:
    d = make_daemon()
    wait(d.stub, *submit(d.stub, spec("echo", "secret")))
    d.kill9()  # a crash leaves the -wal and -shm files behind
    for name in JOURNAL_FILES:
        os.chmod(d.state_dir / name, 0o644)
    d.start()
    for name in JOURNAL_FILES:
        assert _mode(d.state_dir / name) == 0o600, name
    assert d.stop() == 0
    for name in JOURNAL_FILES:
        assert f"{name} was mode 0644: made it 0600" in d.log()


def _taskerd(socket: Path, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskerd", "--socket", str(socket), "--state-dir", str(state_dir)],
        capture_output=True, text=True, timeout=15,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("uid", "mode", "reason"),
    [
        (OTHER_UID, 0o777, "belongs to uid 65534"),  # /tmp/tasker-$UID made by someone else
        (OTHER_UID, 0o700, "belongs to uid 65534"),
        (os.getuid(), 0o777, "writable by group or others"),
        (os.getuid(), 0o770, "writable by group or others"),
        (os.getuid(), 0o1777, "writable by group or others"),  # a shared sticky dir like /tmp
    ],
    ids=["other-0777", "other-0700", "own-0777", "own-0770", "own-sticky-1777"],
)
def test_socket_directory_others_control_is_refused(
    tmp_path: Path, uid: int, mode: int, reason: str
) -> None:
    directory = tmp_path / f"tasker-{os.getuid()}"
    directory.mkdir()
    os.chown(directory, uid, -1)
    os.chmod(directory, mode)
    result = _taskerd(directory / "taskerd.sock", tmp_path / "state")
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("taskerd: socket directory ")
    assert reason in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (directory / "taskerd.sock").exists()
    assert os.stat(directory).st_uid == uid and _mode(directory) == mode, "left as it was"


def test_socket_group_only_changes_a_directory_it_created(make_daemon: type[Daemon]) -> None:
    group = grp.getgrgid(OTHER_GID).gr_name
    assert os.getgid() != OTHER_GID
    existing = make_daemon(start=False, config=f'socket_group = "{group}"\n')
    existing.socket.parent.mkdir()
    os.chmod(existing.socket.parent, 0o750)
    existing.start()
    info = os.stat(existing.socket)
    assert info.st_gid == OTHER_GID and stat.S_IMODE(info.st_mode) == 0o660
    info = os.stat(existing.socket.parent)
    assert info.st_gid == os.getgid() and stat.S_IMODE(info.st_mode) == 0o750, "not touched"
    assert existing.stop() == 0
    assert f"is not in group {group}" in existing.log()

    created = make_daemon(config=f'socket_group = "{group}"\n')
    info = os.stat(created.socket.parent)
    assert info.st_gid == OTHER_GID and stat.S_IMODE(info.st_mode) == 0o750
