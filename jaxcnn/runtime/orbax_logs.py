"""Orbax's own log records, dropped: jaxcnn reports checkpoint problems itself, in one line.

Orbax logs through absl (`logging.getLogger("absl")`): a failed read or save prints tracebacks
there, some from background threads, and asyncio reports its failed tasks once more; after a
failed read tensorstore calls back into Orbax's closed event loop, one traceback each. With
`JAXCNN_ORBAX_LOGS=1` they are kept (for debugging Orbax itself).
"""

from __future__ import annotations

import os
import sys
from typing import Any

ORBAX_LOGS_ENV = "JAXCNN_ORBAX_LOGS"


class _DropOrbaxRecords:
    """A logging filter: drops records logged by Orbax, or carrying an exception raised through
    Orbax's code. (Not a `logging.Filter` subclass: the command imports this module first and
    `logging` is slow to import.)"""

    def filter(self, record: Any) -> bool:
        orbax = f"{os.sep}orbax{os.sep}"
        tb = record.exc_info[2] if record.exc_info else None
        files = {record.pathname}
        while tb is not None:
            files.add(tb.tb_frame.f_code.co_filename)
            tb = tb.tb_next
        return not any(orbax in f for f in files)


_ORBAX_FILTER = _DropOrbaxRecords()


def silence_orbax_logs() -> None:
    """Drops Orbax's absl log records (tracebacks of failed reads and saves) and asyncio's reports
    of its failed tasks: jaxcnn reports those in one line of its own. `JAXCNN_ORBAX_LOGS=1` keeps them."""
    if os.environ.get(ORBAX_LOGS_ENV) == "1":
        return
    import logging

    for logger in (logging.getLogger("absl"), logging.getLogger("asyncio")):
        if _ORBAX_FILTER not in logger.filters:
            logger.addFilter(_ORBAX_FILTER)
    ignore_closed_event_loop_callbacks()


def ignore_closed_event_loop_callbacks() -> None:
    """After a failed Orbax read (a damaged checkpoint), tensorstore finishes the cancelled reads on
    its own threads and calls back into the asyncio loop Orbax has already closed; Python would print
    each such `RuntimeError: Event loop is closed` as a traceback. They say nothing the one-line
    error has not, so they are dropped; every other unraisable exception is printed as before."""
    previous = sys.unraisablehook
    if getattr(previous, "ignores_closed_event_loop", False):
        return

    def hook(unraisable: Any) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.ignores_closed_event_loop = True
    sys.unraisablehook = hook
