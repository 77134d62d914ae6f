"""The one duration parser, shared by the CLI and the daemon."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskerctl.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("5s", 5), ("1m30s", 90), ("2h", 7200), ("5", 5), ("0.5", 0.5),
     ("1h30m", 5400), ("1d", 86400), (" 3s ", 3), ("1.5s", 1.5), ("100us", 1e-4)],
)  # fmt: skip
def test_parses(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "5x", "1s1m", "-1", "s", "5 s", "nan", "inf", "1h-5m"])
def test_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**7))
def test_format_round_trips_whole_seconds(n: int) -> None:
    assert parse_duration(format_duration(n)) == n
