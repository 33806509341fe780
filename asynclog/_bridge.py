"""The stdlib ``logging`` bridge: ``LoggingHandler(run)`` puts a probe's ``logger.info(...)`` lines in its run.

Each log record becomes one event named ``log`` (``log.events(name="log")``) whose data is::

    {"level": "WARNING", "levelno": 30, "logger": "probe", "message": "ESS low: 3.5",
     "time": 1736937000.12,            # record.created: when the line was logged, seconds since the epoch
     "thread": "MainThread", "where": "probe.py:88",
     "exception": "Traceback ...\nKeyError: 'x'" or None}   # record.exc_info, formatted

The handler may be called from any thread (``Run.event`` is thread-safe). It never raises into the caller's
logging: a line that cannot be logged goes to ``handleError`` as with any stdlib handler. Once the run is
closed the handler stops quietly (``stopped`` becomes True) and drops later lines.
"""

from __future__ import annotations

import logging
import threading

from asynclog.errors import ClosedError

__all__ = ["LoggingHandler", "EVENT"]

EVENT = "log"


class LoggingHandler(logging.Handler):
    """A ``logging.Handler`` that logs each record as a ``log`` event of ``run`` (see the module docstring)."""

    def __init__(self, run, level: int = logging.NOTSET):
        super().__init__(level)
        self.run = run
        self.stopped = False
        # run.event may itself warn through logging (a logger routed here too): do not recurse into it
        self._inside = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if self.stopped or getattr(self._inside, "active", False):
            return
        self._inside.active = True
        try:
            self.run.event(EVENT, **self.fields(record))
        except ClosedError:
            self.stopped = True
        except Exception:
            self.handleError(record)
        finally:
            self._inside.active = False

    def fields(self, record: logging.LogRecord) -> dict:
        """The event's data for one record; override to log more or less."""
        exception = None
        if record.exc_info:
            exception = (self.formatter or _formatter).formatException(record.exc_info)
        elif record.exc_text:
            exception = record.exc_text
        return {"level": record.levelname, "levelno": record.levelno, "logger": record.name,
                "message": record.getMessage(), "time": record.created, "thread": record.threadName,
                "where": f"{record.filename}:{record.lineno}", "exception": exception}


_formatter = logging.Formatter()
