"""Give freed heap memory back to the system after big outputs have come and gone.

A task's output is kept in memory while it runs (up to ``output_limit`` per stream) and written to
the journal when it ends. After hundreds of MiB have passed through, glibc's heap keeps most of it
mapped (fragmentation: freed, but not at the top of an arena), so RSS stays high though nothing
holds the bytes. ``malloc_trim(0)`` returns it; it runs on a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger("taskerd")

#: Trim once this many bytes of output have been released since the last trim.
TRIM_AFTER = 64 << 20


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


class Heap:
    """Counts released output bytes; :meth:`trim_forever` trims when enough have piled up."""

    def __init__(self) -> None:
        self.released = 0
        self._trim = _malloc_trim()

    def note(self, size: int) -> None:
        """``size`` bytes of output were just let go."""
        self.released += size

    async def trim_forever(self, interval: float = 2.0) -> None:
        """Every ``interval`` seconds, trim the heap if ``TRIM_AFTER`` bytes were released."""
        if self._trim is None:
            return
        while True:
            await asyncio.sleep(interval)
            if self.released >= TRIM_AFTER:
                self.released = 0
                await asyncio.to_thread(self._trim, 0)
