"""The systemd units verify, the sample config is the real defaults, and sd_notify works."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tasker.v1 import tasker_pb2 as pb
from taskerctl.durations import parse_duration
from tests.conftest import Daemon

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "systemd"
SYSTEM_UNIT = SYSTEMD / "taskerd.service"
USER_UNIT = SYSTEMD / "user" / "taskerd.service"
SAMPLE_CONF = SYSTEMD / "taskerd.conf"
#: The taskerd this test run uses; verify checks that ExecStart's binary is executable.
VENV_TASKERD = Path(sys.executable).parent / "taskerd"
#: Keys whose sample value is an example, not the default (machine or deployment specific).
NOT_DEFAULTS = {"socket", "state_dir", "workers", "max_workers"}

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def _directives(unit: Path) -> dict[str, str]:
    """``Key=value`` lines of a unit (last one wins), comments skipped."""
    out: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if line and line[0] not in "#;[" and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def _verify(unit: Path, installed_binary: str, tmp: Path, *, user: bool) -> None:
    """Copy ``unit`` into ``tmp`` with ExecStart pointing at the venv's taskerd, then verify."""
    text = unit.read_text()
    assert installed_binary in text, f"{unit} no longer starts {installed_binary}"
    assert VENV_TASKERD.exists(), f"{VENV_TASKERD} missing: is the package installed?"
    copy = tmp / "taskerd.service"
    copy.write_text(text.replace(installed_binary, str(VENV_TASKERD)))
    env = dict(os.environ)
    if user:  # the user manager needs a runtime directory to exist
        runtime = tmp / "runtime"
        runtime.mkdir(mode=0o700)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    cmd = ["systemd-analyze", *(["--user"] if user else []), "verify", str(copy)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    output = res.stdout + res.stderr
    # verify exits 0 on unknown keys and bad values, only warning: fail on any word about us.
    ours = [line for line in output.splitlines() if "taskerd.service" in line]
    assert res.returncode == 0 and not ours, output


@needs_analyze
def test_system_unit_verifies(tmp_path: Path) -> None:
    _verify(SYSTEM_UNIT, "/usr/local/bin/taskerd", tmp_path, user=False)


@needs_analyze
def test_user_unit_verifies(tmp_path: Path) -> None:
    _verify(USER_UNIT, "%h/.local/bin/taskerd", tmp_path, user=True)


@needs_analyze
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt directive is reported."""
    broken = tmp_path / "src.service"
    broken.write_text(SYSTEM_UNIT.read_text().replace("KillMode=", "KilMode="))
    with pytest.raises(AssertionError, match="KilMode"):
        _verify(broken, "/usr/local/bin/taskerd", tmp_path, user=False)


def _uncommented_sample() -> str:
    """The sample config with every ``#key = value`` line switched on."""
    return re.sub(r"(?m)^#(?=[a-z_]+ = )", "", SAMPLE_CONF.read_text())


@pytest.mark.parametrize("unit", [SYSTEM_UNIT, USER_UNIT], ids=["system", "user"])
def test_units_match_the_daemon(unit: Path) -> None:
    """Type=notify, SIGTERM to taskerd only, and time for its own graceful stop."""
    d = _directives(unit)
    assert d["Type"] == "notify"
    assert d["KillMode"] == "mixed"
    assert d["Restart"] == "on-failure"
    assert d["RuntimeDirectory"] == "tasker" and d["StateDirectory"] == "tasker"
    assert "--socket" in d["ExecStart"] and "--state-dir" in d["ExecStart"]
    defaults = tomllib.loads(_uncommented_sample())
    needed = parse_duration(defaults["stop_timeout"]) + parse_duration(defaults["kill_grace"])
    assert parse_duration(d["TimeoutStopSec"]) >= needed + 5


def test_system_unit_is_sandboxed() -> None:
    d = _directives(SYSTEM_UNIT)
    assert d["User"] == d["Group"] == "tasker"
    assert d["NoNewPrivileges"] == "yes"
    assert d["ProtectSystem"] == "strict"
    assert d["PrivateTmp"] == "yes"
    assert d["ProtectHome"] == "read-only"
    assert d["RuntimeDirectoryMode"] == "0750"
    assert "/run/tasker/taskerd.sock" in d["ExecStart"]
    assert "/etc/tasker/taskerd.conf" in d["ExecStart"]


def _print_config(tmp: Path, *args: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "XDG_STATE_HOME")}
    res = subprocess.run(
        [sys.executable, "-m", "taskerd", *args, "--print-config"],
        capture_output=True, text=True, env=env, cwd=tmp, timeout=30,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return tomllib.loads(res.stdout)


def test_sample_config_documents_every_key_and_the_defaults(tmp_path: Path) -> None:
    """Uncommented, the sample is accepted by taskerd and equals its built-in defaults."""
    uncommented = _uncommented_sample()
    assert tomllib.loads(SAMPLE_CONF.read_text()) == {}, "the shipped sample must set nothing"
    conf = tmp_path / "taskerd.conf"
    conf.write_text(uncommented)
    keys = set(tomllib.loads(uncommented))
    effective = _print_config(tmp_path, "--config", str(conf))
    defaults = _print_config(tmp_path)
    assert set(defaults) <= keys, f"undocumented keys: {set(defaults) - keys}"
    assert keys == set(effective)
    for key in keys - NOT_DEFAULTS:
        assert effective[key] == defaults[key], f"sample {key} is not the default"


def _notifications(sock: socket.socket, until: str, proc: subprocess.Popen[bytes]) -> list[str]:
    """Read datagrams until one carries the ``until`` line; returns all lines read."""
    lines: list[str] = []
    deadline = time.monotonic() + 20
    while until not in lines:
        assert time.monotonic() < deadline, f"no {until} within 20s; got {lines}"
        try:
            data = sock.recv(4096)
        except TimeoutError:
            assert proc.poll() is None or until == "STOPPING=1", f"exited {proc.returncode}"
            continue
        lines.extend(data.decode().splitlines())
    return lines


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_sd_notify_ready_and_stopping(
    kind: str, tmp_path: Path, make_daemon: Callable[..., Daemon]
) -> None:
    """READY=1 only once Stats answers; STOPPING=1 on SIGTERM; then a clean exit."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(0.2)
    if kind == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    else:
        address = f"@tasker-test-{uuid.uuid4().hex}"
        sock.bind("\0" + address[1:])
    d = make_daemon(start=False)
    env = {**os.environ, "NOTIFY_SOCKET": address}
    with sock, open(d.log_path, "ab") as log:
        d.proc = subprocess.Popen(d.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        lines = _notifications(sock, "READY=1", d.proc)
        # Serving already: no retry, no wait_for_ready.
        stats = d.stub.Stats(pb.StatsRequest(), timeout=5)
        assert not stats.shutting_down
        assert "STOPPING=1" not in lines, lines
        d.proc.send_signal(signal.SIGTERM)
        lines += _notifications(sock, "STOPPING=1", d.proc)
        assert d.proc.wait(30) == 0, d.log()
        try:
            while True:
                lines += sock.recv(4096).decode().splitlines()
        except TimeoutError:
            pass
    assert lines.count("READY=1") == 1, lines
    assert lines.index("READY=1") < lines.index("STOPPING=1")
