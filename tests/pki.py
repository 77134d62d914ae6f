"""Real TLS material for tests, made by ``openssl``: CAs, certificates, and a tokens file."""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _key_and_csr(at: Path, name: str) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(at / f"{name}.key"), "-out", str(at / f"{name}.csr"), "-subj", f"/CN={name}",
    )  # fmt: skip


def _ca(at: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(at / f"{name}.key"), "-out", str(at / f"{name}.pem"), "-days", "2",
        "-subj", f"/CN={name}",
    )  # fmt: skip


def _sign(at: Path, name: str, ca: str, ext: str) -> None:
    _key_and_csr(at, name)
    (at / f"{name}.ext").write_text(ext + "\n")
    _openssl(
        "x509", "-req", "-in", str(at / f"{name}.csr"), "-CA", str(at / f"{ca}.pem"),
        "-CAkey", str(at / f"{ca}.key"), "-CAcreateserial", "-out", str(at / f"{name}.pem"),
        "-days", "2", "-extfile", str(at / f"{name}.ext"),
    )  # fmt: skip


@dataclass
class Pki:
    """Two CAs (``ca`` is the daemon's, ``other`` is not), a server certificate for 127.0.0.1
    and localhost, client certificates of each CA, and a tokens file (mode 0600)."""

    dir: Path
    tokens: dict[str, str]

    def __getattr__(self, name: str) -> str:
        return str(self.dir / name.replace("_", "."))

    def token_file(self, name: str) -> str:
        path = self.dir / f"{name}.token"
        path.write_text(self.tokens[name] + "\n")
        return str(path)


def remote_config(pki: Pki, port: int, *more: str) -> str:
    """taskerd.conf lines of a TLS listener on 127.0.0.1:``port`` with ``pki``'s tokens."""
    return "\n".join(
        (
            f'listen = ["127.0.0.1:{port}"]',
            f'tls_cert = "{pki.server_pem}"',
            f'tls_key = "{pki.server_key}"',
            f'tokens_file = "{pki.dir / "tokens"}"',
            *more,
        )
    )


def server_certificate(at: Path, name: str, ca: str) -> None:
    """``name``.pem and ``name``.key in ``at``: a server certificate for 127.0.0.1 and
    localhost, signed by the CA ``ca`` of :func:`make_pki`."""
    _sign(at, name, ca, "subjectAltName=IP:127.0.0.1,DNS:localhost")


def make_pki(at: Path, roles: dict[str, str]) -> Pki:
    """Certificates and a tokens file (one random token per name of ``roles``) in ``at``."""
    _ca(at, "ca")
    _ca(at, "other")
    server_certificate(at, "server", "ca")
    _sign(at, "client", "ca", "extendedKeyUsage=clientAuth")
    _sign(at, "stranger", "other", "extendedKeyUsage=clientAuth")
    tokens = {name: secrets.token_urlsafe(24) for name in roles}
    path = at / "tokens"
    path.write_text(
        "# NAME ROLE TOKEN\n\n" + "".join(f"{n} {roles[n]} {t}\n" for n, t in tokens.items())
    )
    path.chmod(0o600)
    return Pki(at, tokens)
