"""Remote access (issue 13): gRPC over TCP with real TLS (certificates made by ``openssl`` in the
test), bearer tokens and their roles, mutual TLS, and the Unix socket left as it was.

Every test talks to a real ``taskerd`` through the real clients and CLI.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from taskerctl import (
    Client,
    DaemonUnavailable,
    PermissionDenied,
    TaskState,
    Unauthenticated,
)
from taskerd.peers import user_name
from tests.conftest import Daemon
from tests.daemon.test_prometheus import free_port
from tests.daemon.util import until
from tests.pki import Pki, make_pki, remote_config, server_certificate

ROLES = {"root": "admin", "alice": "submit", "bob": "submit", "rita": "read"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), ROLES)


@pytest.fixture(scope="module")
def remote(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    """One daemon with a TLS listener, shared by the tests that only call it."""
    port = free_port()
    d = Daemon(tmp_path_factory.mktemp("remote"), "--workers", "2",
               config=remote_config(pki, port))  # fmt: skip
    d.start()
    yield d, f"127.0.0.1:{port}"
    d.stop()


def client(pki: Pki, address: str, who: str | None, **more: str) -> Client:
    token = pki.tokens[who] if who else None
    return Client(address=address, token=token, rpc_timeout=10, **{"tls_ca": pki.ca_pem, **more})


def test_each_role_may_do_its_verbs_and_no_more(pki: Pki, remote: tuple[Daemon, str]) -> None:
    d, address = remote
    with (
        client(pki, address, "root") as root,
        client(pki, address, "alice") as alice,
        client(pki, address, "bob") as bob,
        client(pki, address, "rita") as rita,
        Client(d.socket) as local,
    ):
        # submit: submits, and sees its name on its tasks
        mine = alice.submit(["sleep", "30"], labels={"t": "roles"})
        done = alice.submit(["true"]).wait(timeout=10)
        assert done.state is TaskState.SUCCEEDED and done.submitted_by == "alice"
        theirs = root.submit(["sleep", "30"], labels={"t": "roles"})
        bobs = bob.submit(["sleep", "30"], labels={"t": "roles"})
        # the Unix socket: no token, every verb, recorded as its user (tests/daemon/test_peers)
        here = local.submit(["sleep", "30"], labels={"t": "roles"})
        me = user_name(os.getuid())
        assert local.get(here.id).submitted_by == me
        assert {t.id: t.submitted_by for t in rita.list(labels={"t": "roles"})} == {
            mine.id: "alice", theirs.id: "root", bobs.id: "bob", here.id: me,
        }  # fmt: skip
        # read: reads, and nothing else
        assert rita.get(mine.id).submitted_by == "alice"
        assert rita.stats().queued + rita.stats().running >= 4
        for act in (
            lambda: rita.submit(["true"]),
            lambda: rita.cancel(mine.id),
            lambda: rita.pause(all=True),
            lambda: rita.shutdown("drain"),
        ):
            with pytest.raises(PermissionDenied, match="role read"):
                act()
        # submit: cancels its own tasks only; a selection selects only its own
        with pytest.raises(PermissionDenied, match=f"task {theirs.id} was not submitted by"):
            alice.cancel(theirs.id)
        with pytest.raises(PermissionDenied, match="role submit"):
            alice.pause(all=True)
        with pytest.raises(PermissionDenied, match="role submit"):
            alice.shutdown("kill")
        alice.cancel_many(labels={"t": "roles"})
        assert alice.wait(mine.id, timeout=10).state is TaskState.CANCELLED
        for other in (theirs, bobs, here):
            assert root.get(other.id).state in (TaskState.RUNNING, TaskState.QUEUED)
        bob.cancel(bobs.id)
        # admin: everything, on anyone's task
        root.cancel_many([theirs.id, here.id])
        ended = {root.wait(i, timeout=10).state for i in (theirs.id, bobs.id, here.id)}
        assert ended == {TaskState.CANCELLED}


def test_no_token_or_an_unknown_one_is_unauthenticated_and_never_logged(
    pki: Pki, remote: tuple[Daemon, str]
) -> None:
    d, address = remote
    guess = secrets.token_urlsafe(24)
    with client(pki, address, None) as nobody, pytest.raises(Unauthenticated, match="token"):
        nobody.stats()
    with Client(address=address, tls_ca=pki.ca_pem, token=guess) as wrong:
        with pytest.raises(Unauthenticated, match="unknown token"):
            wrong.submit(["true"])
        with pytest.raises(Unauthenticated):
            list(wrong.stream_results([1]))
    with client(pki, address, "root") as root:
        root.stats()
    until(lambda: "refused /tasker.v1.Tasker/Submit: an unknown token" in d.log())
    log = d.log_path.read_text()
    for token in (guess, *pki.tokens.values()):
        assert token not in log


def test_health_needs_no_token_and_reflection_needs_one(
    pki: Pki, remote: tuple[Daemon, str]
) -> None:
    _, address = remote
    creds = grpc.ssl_channel_credentials(Path(pki.ca_pem).read_bytes())
    with grpc.secure_channel(address, creds) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service="tasker.v1.Tasker"), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.ServerReflectionInfo(iter([ask]), timeout=5))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        bearer = (("authorization", f"Bearer {pki.tokens['rita']}"),)
        [found] = stub.ServerReflectionInfo(iter([ask]), timeout=5, metadata=bearer)
        names = {s.name for s in found.list_services_response.service}
        assert "tasker.v1.Tasker" in names


def refused(c: Client, error: type[Exception], match: str | None = None) -> None:
    """``c.stats()`` raises ``error``; the client is closed."""
    with c, pytest.raises(error, match=match):
        c.stats()


def test_a_certificate_of_another_ca_is_refused(pki: Pki, remote: tuple[Daemon, str]) -> None:
    _, address = remote
    token = pki.tokens["root"]
    other_ca = Client(address=address, tls_ca=pki.other_pem, token=token)
    refused(other_ca, DaemonUnavailable, "CERTIFICATE_VERIFY_FAILED")
    plain = Client(address=address, insecure=True, token=token)
    refused(plain, DaemonUnavailable)  # a TLS listener does not speak plaintext


def test_cli_over_tcp_flags_and_environment(pki: Pki, remote: tuple[Daemon, str]) -> None:
    _, address = remote
    cli = [sys.executable, "-m", "taskerctl"]
    flags = ["--address", address, "--tls-ca", pki.ca_pem, "--token-file", pki.token_file("bob")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKER_")}
    done = subprocess.run(
        [*cli, "run", *flags, "--", "echo", "over tcp"],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "over tcp" in done.stdout
    env.update(TASKER_ADDRESS=address, TASKER_TLS_CA=pki.ca_pem, TASKER_TOKEN=pki.tokens["rita"])
    shown = subprocess.run(
        [*cli, "list", "-n", "1"], capture_output=True, text=True, env=env, timeout=30
    )
    assert shown.returncode == 0, shown.stderr
    assert "bob" in shown.stdout and "BY" in shown.stdout
    denied = subprocess.run(
        [*cli, "submit", "true"], capture_output=True, text=True, env=env, timeout=30
    )
    assert denied.returncode == 77
    assert denied.stderr.count("\n") == 1 and "permission denied" in denied.stderr
    env.pop("TASKER_TOKEN")
    anonymous = subprocess.run([*cli, "stats"], capture_output=True, text=True, env=env, timeout=30)
    assert anonymous.returncode == 77
    assert anonymous.stderr.startswith("taskerctl: error: unauthenticated")
    assert anonymous.stderr.count("\n") == 1, anonymous.stderr
    bad_ca = subprocess.run(
        [*cli, "stats", "--tls-ca", pki.other_pem], capture_output=True, text=True, env=env,
        timeout=30,
    )  # fmt: skip
    assert bad_ca.returncode == 69
    assert bad_ca.stderr.count("\n") == 1, bad_ca.stderr  # no gRPC log line before it


def test_mutual_tls(pki: Pki, make_daemon: type[Daemon]) -> None:
    port = free_port()
    make_daemon(config=remote_config(pki, port, f'tls_client_ca = "{pki.ca_pem}"'))
    address = f"127.0.0.1:{port}"
    token = pki.tokens["root"]
    ours = {"tls_cert": pki.client_pem, "tls_key": pki.client_key}
    theirs = {"tls_cert": pki.stranger_pem, "tls_key": pki.stranger_key}
    for cert in ({}, theirs):  # none, or one of another CA
        refused(Client(address=address, tls_ca=pki.ca_pem, token=token, **cert), DaemonUnavailable)
    with Client(address=address, tls_ca=pki.ca_pem, token=token, **ours) as known:
        assert known.submit(["true"]).wait(timeout=10).state is TaskState.SUCCEEDED
    no_token = Client(address=address, tls_ca=pki.ca_pem, **ours)
    refused(no_token, Unauthenticated)  # a certificate is not a token


def test_submitter_survives_a_restart_and_tokens_reload_on_sighup(
    pki: Pki, make_daemon: type[Daemon]
) -> None:
    port = free_port()
    tokens = pki.dir / "tokens-reload"
    tokens.write_text(f"alice submit {pki.tokens['alice']}\n")
    tokens.chmod(0o600)
    config = remote_config(pki, port).replace(str(pki.dir / "tokens"), str(tokens))
    d = make_daemon(config=config)
    address = f"127.0.0.1:{port}"
    with client(pki, address, "alice") as alice:
        held = alice.submit(["true"], stashed=True)
    d.come_back("kill9")
    with client(pki, address, "alice") as alice, client(pki, address, "bob") as bob:
        assert alice.get(held.id).submitted_by == "alice"
        with pytest.raises(Unauthenticated):
            bob.stats()
        tokens.write_text(f"bob submit {pki.tokens['bob']}\n")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        until(lambda: "SIGHUP: read 1 tokens" in d.log(), what="tokens reloaded")
        with pytest.raises(PermissionDenied, match=f"task {held.id} was not submitted by 'bob'"):
            bob.cancel(held.id)
        with pytest.raises(Unauthenticated):
            alice.stats()
        tokens.chmod(0o644)
        d.proc.send_signal(signal.SIGHUP)
        until(lambda: "kept the tokens in use" in d.log(), what="a refused reload")
        assert bob.stats() is not None


def test_sighup_reads_the_certificate_again_for_new_connections(
    pki: Pki, make_daemon: type[Daemon], tmp_path: Path
) -> None:
    # The certificate is renewed, by another CA here so that the change shows: after SIGHUP,
    # new connections get the new one; a file that cannot be used keeps the one in use.
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes(Path(pki.server_pem).read_bytes())
    key.write_bytes(Path(pki.server_key).read_bytes())
    key.chmod(0o600)
    port = free_port()
    config = remote_config(pki, port).replace(pki.server_pem, str(cert))
    d = make_daemon(config=config.replace(pki.server_key, str(key)))
    address = f"127.0.0.1:{port}"
    assert d.proc is not None
    with client(pki, address, "rita") as before:
        assert before.stats() is not None
        server_certificate(pki.dir, "renewed", "other")
        cert.write_bytes(Path(pki.renewed_pem).read_bytes())
        key.write_bytes(Path(pki.renewed_key).read_bytes())
        d.proc.send_signal(signal.SIGHUP)
        until(lambda: "read tls_cert" in d.log(), what="the certificate read again")
        with client(pki, address, "rita", tls_ca=pki.other_pem) as after:
            assert after.stats() is not None
        refused(client(pki, address, "rita"), DaemonUnavailable, "CERTIFICATE_VERIFY_FAILED")
        assert before.stats() is not None  # its connection goes on
        cert.write_text("not a certificate\n")
        d.proc.send_signal(signal.SIGHUP)
        until(lambda: "kept the TLS certificate in use" in d.log(), what="a refused reload")
        with client(pki, address, "rita", tls_ca=pki.other_pem) as again:
            assert again.stats() is not None


def test_insecure_loopback_only_when_asked(pki: Pki, make_daemon: type[Daemon]) -> None:
    port = free_port()
    tokens = f'tokens_file = "{pki.dir / "tokens"}"'
    plain = make_daemon(config=f'listen = ["127.0.0.1:{port}"]\n{tokens}', start=False)
    with pytest.raises(RuntimeError, match="needs tls_cert and tls_key"):
        plain.start()
    wide = make_daemon(
        config=f'listen = ["0.0.0.0:{port}"]\ninsecure_loopback = true\n{tokens}', start=False
    )
    with pytest.raises(RuntimeError, match=r"'0\.0\.0\.0:\d+' needs tls_cert"):
        wide.start()
    make_daemon(config=f'listen = ["127.0.0.1:{port}"]\ninsecure_loopback = true\n{tokens}')
    with Client(address=f"127.0.0.1:{port}", insecure=True, token=pki.tokens["rita"]) as c:
        assert c.stats() is not None


def test_a_tokens_file_others_may_read_is_refused(pki: Pki, make_daemon: type[Daemon]) -> None:
    loose = pki.dir / "tokens-loose"
    loose.write_text(f"rita read {pki.tokens['rita']}\n")
    loose.chmod(0o644)
    port = free_port()
    d = make_daemon(
        config=remote_config(pki, port).replace(str(pki.dir / "tokens"), str(loose)), start=False
    )
    with pytest.raises(RuntimeError, match="mode 0644 lets others read it"):
        d.start()
    assert pki.tokens["rita"] not in d.log()
    short = pki.dir / "tokens-short"
    short.write_text("rita read abc\n")
    short.chmod(0o600)
    d2 = make_daemon(
        config=remote_config(pki, port).replace(str(pki.dir / "tokens"), str(short)), start=False
    )
    with pytest.raises(RuntimeError, match="line 1: the token is shorter than 16"):
        d2.start()
