"""Status: one updating line on stderr while long work runs, and nothing at all when stderr is not a terminal.

No library: the line is redrawn in place with a carriage return and "erase to end of line", once when the
text changes and every half second after (the seconds count is the sign of life), and erased on close,
so the output that follows starts on a clean line. Output piped to a file or a CI log gets no line at all.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from typing import TextIO

__all__ = ["Status"]

_ERASE = "\x1b[K"
_TICK_S = 0.5


class Status:
    """``show(text)`` replaces the line; ``clear()`` erases it (before printing something else); ``close()``
    erases it and stops the redraw thread. A context manager; close twice is fine. Thread-safe."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.live = _is_terminal(self.stream)
        self._text = ""
        self._since = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def show(self, text: str) -> None:
        if not self.live:
            return
        with self._lock:
            self._text, self._since = text, time.monotonic()
            self._draw()
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="asynclog-status", daemon=True)
            self._ticker.start()

    def clear(self) -> None:
        if not self.live:
            return
        with self._lock:
            if self._text:
                self._text = ""
                self._write("\r" + _ERASE)

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        self.clear()

    def __enter__(self) -> "Status":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tick(self) -> None:
        while not self._stop.wait(_TICK_S):
            with self._lock:
                if self._text:
                    self._draw()

    def _draw(self) -> None:
        line = f"{self._text} ({time.monotonic() - self._since:.0f} s)"
        width = shutil.get_terminal_size((80, 24)).columns - 1  # never wrap: a wrapped line cannot be redrawn
        self._write("\r" + line[:width] + _ERASE)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed terminal must not break the work it reports on
            self.live = False


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
