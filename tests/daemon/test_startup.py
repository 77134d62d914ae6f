"""Start-up: the socket's permissions, stale and live sockets, config, notify."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import Daemon


def test_socket_and_directory_are_private(daemon: Daemon) -> None:
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(daemon.socket.parent).st_mode) == 0o700


def test_stale_socket_is_replaced(make_daemon: type[Daemon]) -> None:
    d = make_daemon(start=False)
    d.socket.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(d.socket))
    stale.close()  # the file stays, nobody listens: stale
    d.start()
    assert "removing stale socket" in d.log()


def test_live_socket_refuses_second_daemon(make_daemon: type[Daemon], tmp_path: Path) -> None:
    first = make_daemon()
    second = subprocess.run(
        [sys.executable, "-m", "taskerd", "--socket", str(first.socket),
         "--state-dir", str(tmp_path / "other-state")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert second.returncode == 1
    assert "already serving" in second.stderr
    assert "Traceback" not in second.stderr
    from tasker.v1 import tasker_pb2 as pb

    assert first.stub.Stats(pb.StatsRequest(), timeout=5).base_workers == 2, "first one unharmed"


def test_state_dir_is_locked(make_daemon: type[Daemon], tmp_path: Path) -> None:
    first = make_daemon()
    second = subprocess.run(
        [sys.executable, "-m", "taskerd", "--socket", str(tmp_path / "other.sock"),
         "--state-dir", str(first.state_dir)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert second.returncode == 1 and "state directory" in second.stderr


def test_never_clobbers_a_non_socket(tmp_path: Path) -> None:
    path = tmp_path / "precious"
    path.write_text("keep me")
    result = subprocess.run(
        [sys.executable, "-m", "taskerd", "--socket", str(path),
         "--state-dir", str(tmp_path / "s")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1 and "not a socket" in result.stderr
    assert path.read_text() == "keep me"


def test_print_config_merges_file_and_flags(tmp_path: Path) -> None:
    conf = tmp_path / "taskerd.toml"
    conf.write_text('workers = 3\nkill_grace = "1m30s"\nmax_queue = 10\n')
    result = subprocess.run(
        [sys.executable, "-m", "taskerd", "--config", str(conf), "--max-queue", "20",
         "--print-config"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert "workers = 3\n" in result.stdout
    assert 'kill_grace = "1m30s"' in result.stdout
    assert "max_queue = 20\n" in result.stdout


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    conf = tmp_path / "taskerd.toml"
    conf.write_text("workers = 0\n")
    result = subprocess.run(
        [sys.executable, "-m", "taskerd", "--config", str(conf), "--print-config"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2 and "workers must be >= 1" in result.stderr
    conf.write_text("wrokers = 2\n")
    result = subprocess.run(
        [sys.executable, "-m", "taskerd", "--config", str(conf), "--print-config"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2 and "unknown config key 'wrokers'" in result.stderr


def test_health_and_reflection_are_served(daemon: Daemon) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(daemon.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tasker.v1.Tasker"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="tasker.v1.Tasker"),
        ]
        listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=5))
    names = {s.name for s in listed.list_services_response.service}
    assert {"tasker.v1.Tasker", "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto, "the proto is discoverable"


def test_socket_group_shares_the_socket(make_daemon: type[Daemon]) -> None:
    import grp

    group = grp.getgrgid(os.getgid()).gr_name
    d = make_daemon(config=f'socket_group = "{group}"\n')
    info = os.stat(d.socket)
    assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == os.getgid()
    assert stat.S_IMODE(os.stat(d.socket.parent).st_mode) == 0o750
