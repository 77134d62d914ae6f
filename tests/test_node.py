"""The Node.js example client against a real daemon."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tasker.v1 import tasker_pb2 as pb
from taskerd.peers import user_name
from tests.conftest import Daemon
from tests.daemon.test_prometheus import free_port
from tests.pki import make_pki, remote_config

NODE_DIR = Path(__file__).resolve().parent.parent / "examples" / "node"

pytestmark = [
    pytest.mark.skipif(
        shutil.which("node") is None or shutil.which("npm") is None,
        reason="node and npm are not installed",
    ),
    pytest.mark.timeout(360),  # the first test may run `npm ci`
]


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """``npm ci`` once, when examples/node/node_modules is absent."""
    modules = NODE_DIR / "node_modules"
    if not (modules / "@grpc" / "grpc-js").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR, check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    return modules


def _client(
    socket: Path, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TASKER_SOCKET": str(socket), **(env or {})}
    return subprocess.run(
        ["node", str(NODE_DIR / "client.js"), *argv],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def test_default_task_succeeds(node_modules: Path, daemon: Daemon) -> None:
    res = _client(daemon.socket)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    submitted = re.search(r"^submitted task (\d+): echo hello from node$", out, re.M)
    assert submitted, out
    tid = submitted.group(1)
    assert "hello from node\n" in out
    assert re.search(rf"^task {tid}: SUCCEEDED exit 0 in \d+\.\d+s$", out, re.M), out
    stats = re.search(r"^stats: workers \d+/2-\d+ .* succeeded (\d+) ", out, re.M)
    assert stats and int(stats.group(1)) >= 1, out
    # The daemon agrees, and knows the user it came from (the socket's side door).
    task = daemon.stub.Get(pb.GetRequest(id=int(tid)), timeout=5)
    assert task.spec.argv == ["echo", "hello from node"]
    assert task.submitted_by == user_name(os.getuid())


def test_failing_task_and_stderr(node_modules: Path, daemon: Daemon) -> None:
    res = _client(daemon.socket, "sh", "-c", "echo to-out; echo to-err >&2; exit 3")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "to-out\n" in res.stdout and "to-err\n" in res.stderr
    assert re.search(r"^task \d+: FAILED exit 3 ", res.stdout, re.M), res.stdout
    assert re.search(r"failed [1-9]", res.stdout), res.stdout


def test_unreachable_daemon(node_modules: Path, tmp_path: Path) -> None:
    res = _client(tmp_path / "nobody.sock")
    assert res.returncode == 69, res.stdout + res.stderr


def test_live_output_printed_once(node_modules: Path, daemon: Daemon) -> None:
    """Chunks streamed live are not printed again from the final event."""
    res = _client(daemon.socket, "sh", "-c", "echo first; sleep 1; echo second")
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"^task \d+: started \(pid \d+", res.stdout, re.M), res.stdout
    lines = res.stdout.splitlines()
    assert lines.count("first") == 1 and lines.count("second") == 1, res.stdout
    assert lines.index("first") < lines.index("second") < len(lines) - 2  # before the state


def test_groups_pause_and_resume(node_modules: Path, daemon: Daemon) -> None:
    """The queue-control verbs are reachable from Node: ListGroups, Pause and Resume."""
    daemon.stub.AddGroup(pb.AddGroupRequest(name="gpu", parallel=2), timeout=5)
    listed = _client(daemon.socket, "--groups")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert re.search(r"^group default: parallel \d+-\d+ .* paused no$", listed.stdout, re.M)
    assert "group gpu: parallel 2-2 running 0 queued 0 stashed 0 paused no\n" in listed.stdout
    paused = _client(daemon.socket, "--pause", "gpu")
    assert paused.returncode == 0, paused.stdout + paused.stderr
    assert paused.stdout.startswith("paused group gpu\n") and "paused yes\n" in paused.stdout
    groups = daemon.stub.ListGroups(pb.ListGroupsRequest(), timeout=5).groups
    assert [g.paused for g in groups if g.name == "gpu"] == [True]
    resumed = _client(daemon.socket, "--resume", "gpu")
    assert resumed.returncode == 0 and "group gpu: parallel 2-2 " in resumed.stdout
    assert resumed.stdout.startswith("resumed group gpu\n") and "paused yes" not in resumed.stdout
    unknown = _client(daemon.socket, "--pause", "nosuch")
    assert unknown.returncode == 1 and "nosuch" in unknown.stderr, unknown.stdout + unknown.stderr


def test_over_tcp_with_tls_and_a_token(
    node_modules: Path, make_daemon: type[Daemon], tmp_path: Path
) -> None:
    """The same client over TCP: TLS with the daemon's CA, and a bearer token."""
    pki = make_pki(tmp_path, {"ci": "submit", "grafana": "read"})
    port = free_port()
    d = make_daemon(config=remote_config(pki, port))
    tcp = {"TASKER_ADDRESS": f"127.0.0.1:{port}", "TASKER_TLS_CA": pki.ca_pem}
    ok = _client(tmp_path / "unused.sock", "echo", "over tls",
                 env={**tcp, "TASKER_TOKEN_FILE": pki.token_file("ci")})  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "over tls\n" in ok.stdout
    tid = re.search(r"^submitted task (\d+)", ok.stdout, re.M)
    assert tid, ok.stdout
    assert d.stub.Get(pb.GetRequest(id=int(tid.group(1))), timeout=5).submitted_by == "ci"
    reader = _client(tmp_path / "unused.sock", env={**tcp, "TASKER_TOKEN": pki.tokens["grafana"]})
    assert reader.returncode == 77 and "may not call Submit" in reader.stderr, reader.stderr
    nobody = _client(tmp_path / "unused.sock", env=tcp)
    assert nobody.returncode == 77 and "token" in nobody.stderr, nobody.stderr
