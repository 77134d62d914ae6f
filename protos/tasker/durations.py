"""The one duration parser and formatter, shared by the daemon (``taskerd``) and its client and
CLI (``taskerctl``): it lives here, beside the contract, so that neither side imports the other.

Durations are written as ``250ms``, ``5s``, ``1m30s``, ``2h``, ``1d`` or plain seconds (``5``,
``0.5``). Units may be combined from largest to smallest: ``1h30m``, ``2m5s``.
"""

from __future__ import annotations

import math
import re

_UNITS: dict[str, float] = {
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|d|h|m|s)")
_ORDER = ["d", "h", "m", "s", "ms", "us"]


def parse_duration(text: str) -> float:
    """Parse a duration such as ``1m30s`` into seconds.

    Raises ``ValueError`` with a message naming the bad text.
    """
    s = text.strip().lower()
    if not s:
        raise ValueError("empty duration")
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"invalid duration {text!r}: must be a finite number >= 0")
        return value
    total = 0.0
    pos = 0
    last = -1
    for match in _PART.finditer(s):
        if match.start() != pos:
            break
        rank = _ORDER.index(match.group(2))
        if rank <= last:
            raise ValueError(f"invalid duration {text!r}: units must go from largest to smallest")
        last = rank
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(s) or last < 0:
        raise ValueError(
            f"invalid duration {text!r}: use forms like 250ms, 5s, 1m30s, 2h or plain seconds"
        )
    return total


def format_duration(seconds: float) -> str:
    """Format seconds compactly: ``250ms``, ``5s``, ``1.5s``, ``1m30s``, ``2h``, ``3d4h``."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:.0f}ms" if ms >= 1 or ms == 0 else f"{ms:.2f}ms"
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    whole = round(seconds)
    parts = []
    for unit in ("d", "h", "m", "s"):
        size = int(_UNITS[unit])
        n, whole = divmod(whole, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)
