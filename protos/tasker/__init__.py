"""The Tasker contract: generated gRPC stubs for `tasker.v1` (see protos/tasker/v1/tasker.proto)."""
