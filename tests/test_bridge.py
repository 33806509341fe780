"""The stdlib logging bridge: ``logger.info(...)`` lines land in the run's log with level, time and traceback."""

from __future__ import annotations

import logging
import threading
import time

import asynclog
from asynclog._bridge import LoggingHandler


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger


def test_log_lines_land_in_the_run_with_level_and_time(logdir):
    before = time.time()
    with asynclog.start(logdir, name="bridged") as run:
        handler = LoggingHandler(run, level=logging.INFO)
        logger = _logger("probe.bridge.levels", handler)
        logger.debug("below the handler's level")
        logger.info("phase %s done", "phase1")
        logger.warning("ESS low: %.1f", 3.5)
        logger.removeHandler(handler)
    with asynclog.open(run.path) as log:
        lines = [e["data"] for e in log.events(name="log")]
    assert [(d["level"], d["message"]) for d in lines] == [("INFO", "phase phase1 done"), ("WARNING", "ESS low: 3.5")]
    assert all(d["logger"] == "probe.bridge.levels" and before <= d["time"] <= time.time() for d in lines)
    assert lines[1]["levelno"] == logging.WARNING and lines[0]["exception"] is None


def test_an_exceptions_traceback_is_kept(logdir):
    with asynclog.start(logdir, name="bridged") as run:
        logger = _logger("probe.bridge.exc", LoggingHandler(run))
        try:
            {}["missing_key"]
        except KeyError:
            logger.exception("lookup failed")
    with asynclog.open(run.path) as log:
        [line] = [e["data"] for e in log.events(name="log")]
    assert line["level"] == "ERROR" and line["message"] == "lookup failed"
    assert line["exception"].startswith("Traceback") and "KeyError: 'missing_key'" in line["exception"]


def test_lines_from_many_threads_all_land(logdir):
    with asynclog.start(logdir, name="bridged") as run:
        logger = _logger("probe.bridge.threads", LoggingHandler(run))
        threads = [threading.Thread(target=lambda k=k: [logger.info("t%d n%d", k, n) for n in range(50)])
                   for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    with asynclog.open(run.path) as log:
        messages = {e["data"]["message"] for e in log.events(name="log")}
    assert messages == {f"t{k} n{n}" for k in range(4) for n in range(50)}


def test_after_the_run_closes_the_handler_stops_quietly(logdir, capsys):
    run = asynclog.start(logdir, name="bridged")
    handler = LoggingHandler(run)
    logger = _logger("probe.bridge.closed", handler)
    logger.info("before close")
    run.close()
    logger.info("after close")  # neither raises nor prints a logging error
    assert "Traceback" not in capsys.readouterr().err and handler.stopped
    with asynclog.open(run.path) as log:
        assert [e["data"]["message"] for e in log.events(name="log")] == ["before close"]


def test_a_record_that_cannot_be_logged_goes_to_handle_error_not_the_caller(logdir, capsys):
    with asynclog.start(logdir, name="bridged") as run:
        logger = _logger("probe.bridge.bad", LoggingHandler(run))
        logger.info("%d items", "not a number")  # formatting fails inside emit
        logger.info("still logging")
    assert "--- Logging error ---" in capsys.readouterr().err
    with asynclog.open(run.path) as log:
        assert [e["data"]["message"] for e in log.events(name="log")] == ["still logging"]
