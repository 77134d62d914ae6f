"""The Tasker contract, and what the daemon and its clients share.

``tasker.v1``: the generated gRPC stubs (see protos/tasker/v1/tasker.proto). ``tasker.durations``
and ``tasker.paths``: the duration syntax and the default socket path, used by both ``taskerd`` and
``taskerctl``, which therefore never import each other.
"""
