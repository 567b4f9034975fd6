"""pytest plugin for runs under a time bound: `python -m pytest -p benchmarks.pytest_bounded ...`.

benchmarks/gpu_first.sh runs every pytest under `timeout`, which stops it with SIGTERM. Plain pytest dies
on SIGTERM without writing its reports. With this plugin SIGTERM raises KeyboardInterrupt instead, so the
session ends as an interrupted one and still writes --junitxml and --benchmark-json with the tests that
finished (a second SIGTERM, or timeout's SIGKILL after its grace period, ends it at once).

The benchmark that was running when the signal came has no rounds, and one such entry makes
pytest-benchmark fail to write the whole JSON: it is dropped before pytest-benchmark saves.
"""
from __future__ import annotations

import signal
import threading

import pytest


def _stop_on_term(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise KeyboardInterrupt("SIGTERM: the time bound of this run was reached; writing the reports of what finished")


def pytest_configure(config):
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_on_term)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is not None and getattr(bs, "benchmarks", None):
        bs.benchmarks[:] = [b for b in bs.benchmarks if getattr(getattr(b, "stats", None), "data", None)]
    yield
