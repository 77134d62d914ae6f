"""``python -m taskerd``, and the ``taskerd`` command."""

import os


def main() -> None:
    """The ``taskerd`` command (see :func:`taskerd.server.main`)."""
    # gRPC's C core logs a failed TLS handshake of any client at INFO, on stderr, around the
    # daemon's own (JSON) log. It reads the variable once, when grpc is first imported.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from taskerd.server import main as serve

    serve()


if __name__ == "__main__":
    main()
