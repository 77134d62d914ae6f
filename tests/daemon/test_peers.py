"""Who submitted a task over the Unix socket: its user, from the kernel (``SO_PEERCRED``).

grpc's Python server cannot tell; the clients show themselves at the socket's side door
(``tasker.peers``, ``taskerd.peers``), and taskerd records ``unix:USER``. Real daemons, a real
client process that drops to another user, and a forged nonce.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasker.peers import KEY, peer_path
from tasker.v1 import tasker_pb2 as pb
from taskerctl import Client
from taskerd.peers import user_name
from tests.conftest import Daemon
from tests.daemon.util import spec

NOBODY = 65534
ME = user_name(os.getuid())


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory other users may enter (a test's tmp_path is private to root)."""
    where = Path(tempfile.mkdtemp(prefix="tasker-peers-"))
    where.chmod(0o755)
    yield where
    shutil.rmtree(where, ignore_errors=True)


def test_the_client_and_the_cli_record_their_user(make_daemon: type[Daemon]) -> None:
    d = make_daemon()
    with Client(d.socket) as c:
        mine = c.submit(["true"])
        assert c.get(mine.id).submitted_by == ME
        cli = subprocess.run(
            [sys.executable, "-m", "taskerctl", "--socket", str(d.socket), "submit", "--", "true"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert c.get(int(cli.stdout)).submitted_by == ME
        listed = subprocess.run(
            [sys.executable, "-m", "taskerctl", "--socket", str(d.socket), "list"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert listed.stdout.count(ME) == 2
        # A long-lived client shows itself again after taskerd came back from a crash.
        d.come_back("kill9")
        again = c.submit(["true"])
        assert c.get(again.id).submitted_by == ME


def test_a_forged_nonce_or_none_records_the_socket_alone(make_daemon: type[Daemon]) -> None:
    d = make_daemon()
    request = pb.SubmitRequest(tasks=[spec("true")])
    [forged] = d.stub.Submit(request, metadata=((KEY, "x" * 32),), timeout=10).ids
    [plain] = d.stub.Submit(request, timeout=10).ids
    for task_id in (forged, plain):
        assert d.stub.Get(pb.GetRequest(id=task_id), timeout=10).submitted_by == ""
    assert oct(peer_path(d.socket).stat().st_mode & 0o777) == oct(0o600), "as the socket"


def test_another_user_is_recorded_as_that_user(make_daemon: type[Daemon], open_dir: Path) -> None:
    d = make_daemon(start=False)
    d.socket = open_dir / "run" / "taskerd.sock"
    d.start()
    (open_dir / "run").chmod(0o755)
    for path in (d.socket, peer_path(d.socket)):
        path.chmod(0o666)  # as socket_group would let a group in
    # The client is imported as root (the checkout may be private), then the process becomes
    # nobody before its first call.
    script = (
        "import os; from taskerctl import Client\n"
        f"c = Client({str(d.socket)!r})\n"
        f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
        "print(c.submit(['true']).id)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    with Client(d.socket) as c:
        assert c.get(int(out.stdout)).submitted_by == user_name(NOBODY) != ME
