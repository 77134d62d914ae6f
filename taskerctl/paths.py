"""Compatibility re-export: the socket paths live in :mod:`tasker.paths`, shared by the daemon and
the client without either importing the other."""

from tasker.paths import SOCKET_ENV, client_socket_path, default_socket_path

__all__ = ["SOCKET_ENV", "client_socket_path", "default_socket_path"]
