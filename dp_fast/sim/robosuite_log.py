"""A filter for the messages robosuite 1.5 logs on every import that say nothing about this package's use.

`import robosuite` logs, in each process that imports it (the parent and every env worker):
  * "No private macro file found!" + two lines on how to make one (macros.py): the defaults of
    robosuite/macros.py are the settings dp_fast uses;
  * "Could not import robosuite_models ..." (__init__.py): that package holds robots other than the Panda;
  * "Could not load the mink-based whole-body IK ..." (__init__.py): the GR1 robot's IK;
and building a Panda controller logs (INFO) "Loading controller configuration from: .../default_panda.json"
(composite_controller_factory.py), the same file every time.

`install()` adds a filter to robosuite's logger ("robosuite_logs") that drops exactly those records: the
message must start with one of the known texts and come from the file that logs it. Every other record
of robosuite, any level, passes. It does not import robosuite, and must run before robosuite is imported
(the macro-file lines are logged while it imports): dp_fast.sim.env_args, through which the package
imports robosuite, calls it when it is imported, so it is in place in the parent and in every worker
process (their targets live in modules that import env_args).
"""
from __future__ import annotations

import logging
import os

ROBOSUITE_LOGGER = "robosuite_logs"

# (file name that logs it, start of the message)
KNOWN_MESSAGES = (
    ("macros.py", "No private macro file found!"),
    ("macros.py", "It is recommended to use a private macro file"),
    ("macros.py", "To setup, run: python "),
    ("__init__.py", "Could not import robosuite_models."),
    ("__init__.py", "Could not load the mink-based whole-body IK."),
    ("composite_controller_factory.py", "Loading controller configuration from: "),
)


class KnownRobosuiteMessages(logging.Filter):
    """Drops the records listed in KNOWN_MESSAGES; lets everything else through."""

    def filter(self, record: logging.LogRecord) -> bool:
        source = os.path.basename(record.pathname or "")
        message = record.getMessage()
        return not any(source == f and message.startswith(m) for f, m in KNOWN_MESSAGES)


def install() -> None:
    """Add the filter to robosuite's logger once per process (repeated calls do nothing)."""
    logger = logging.getLogger(ROBOSUITE_LOGGER)
    if not any(isinstance(f, KnownRobosuiteMessages) for f in logger.filters):
        logger.addFilter(KnownRobosuiteMessages())
