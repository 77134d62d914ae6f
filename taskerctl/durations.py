"""Compatibility re-export: the duration parser lives in :mod:`tasker.durations`, shared by the
daemon and the client without either importing the other."""

from tasker.durations import format_duration, parse_duration

__all__ = ["format_duration", "parse_duration"]
