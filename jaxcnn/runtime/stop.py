"""Stop signals: SIGTERM, SIGINT and the requeue signal (SIGUSR1) become a flag that training polls
at safe points.

This module imports nothing heavy, so that `jaxcnn train` installs the handlers before it imports
JAX: a Ctrl-C in the first seconds is then a flag too, never a `KeyboardInterrupt` raised inside
an import or a library thread. Start-up polls the flag (`check_startup`) and stops in one line with
exit status 128 + the signal's number (130 for SIGINT, 143 for SIGTERM); once training runs, the
loop stops after the current call and saves a checkpoint (`jaxcnn.files.checkpoint.TrainingInterrupted`).
A second Ctrl-C quits at once without saving.

The requeue signal is what a cluster sends ahead of a time limit or a preemption (SLURM's
`--signal=USR1@120`): it stops like SIGTERM, every process saving at the same step, so that the
requeued job's same command resumes. It is SIGUSR1 unless the environment variable
JAXCNN_REQUEUE_SIGNAL names another (`USR2`, `SIGHUP`) or `none`. An environment variable rather
than a flag or a config field: the handlers are installed before the command line is parsed and
before JAX is imported, and a job script sets it once for every process it starts.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterator

REQUEUE_SIGNAL_ENV = "JAXCNN_REQUEUE_SIGNAL"


def requeue_signal(environ: Any = os.environ) -> signal.Signals | None:
    """The signal that stops and saves like SIGTERM for a requeue: SIGUSR1 unless JAXCNN_REQUEUE_SIGNAL
    names another or `none`. A name that is no signal here is ignored with one line (the command
    must not fail in a job's last minutes over it)."""
    name = environ.get(REQUEUE_SIGNAL_ENV, "SIGUSR1").strip().upper()
    if name in ("", "NONE", "OFF"):
        return None
    found = getattr(signal, name if name.startswith("SIG") else f"SIG{name}", None)
    if not isinstance(found, signal.Signals) or found in (signal.SIGKILL, getattr(signal, "SIGSTOP", None)):
        _say_once(f"jaxcnn: {REQUEUE_SIGNAL_ENV}={environ[REQUEUE_SIGNAL_ENV]} names no signal that can be caught; "
             "no requeue signal watched")
        return None
    return found


def stop_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM, SIGINT and the requeue signal, if any."""
    extra = requeue_signal()
    return (signal.SIGTERM, signal.SIGINT) + ((extra,) if extra not in (None, signal.SIGTERM, signal.SIGINT) else ())


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # always watched; `stop_signals()` adds the requeue signal


class StartupInterrupted(Exception):
    """A stop signal received before training started: nothing was trained (exit 128 + signal number)."""

    def __init__(self, signal_name: str):
        self.signal_name = signal_name
        self.exit_status = 128 + int(getattr(signal, signal_name, signal.SIGTERM))
        super().__init__(f"{signal_name} received during start-up: stopped before training began, nothing trained")


class StopSignals:
    """SIGTERM / SIGINT / the requeue signal -> `received` (the signal's name), polled by start-up and
    the training loop.

    A second SIGINT quits at once: with `hard_exit` (the `jaxcnn` command) the process exits with
    status 130 without any clean-up (checkpoints are atomic, the workdir lock dies with the
    process); otherwise (a library caller) it raises KeyboardInterrupt.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self.hard_exit = False

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in stop_signals():
                signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.received and signum == signal.SIGINT:
            if self.hard_exit:
                _say("jaxcnn: interrupted again: quit without saving")
                os._exit(130)
            raise KeyboardInterrupt
        self.received = name
        if _is_terminal(sys.stderr):  # in a pipe or a log the final line says it all
            _say(f"jaxcnn: {name} received: stopping at the next safe point "
                 "(press Ctrl-C again to quit without saving)")


def _is_terminal(stream: Any) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (ValueError, OSError):
        return False


_SAID: set[str] = set()


def _say_once(line: str) -> None:
    """`_say`, but a line already said stays unsaid (the handlers are looked up more than once)."""
    if line not in _SAID:
        _SAID.add(line)
        _say(line)


def _say(line: str) -> None:
    """One line on stderr, unbuffered: safe inside a signal handler (no re-entry into sys.stderr)."""
    try:
        os.write(2, (line + "\n").encode())
    except OSError:
        pass


SIGNALS = StopSignals()  # one per process: the handler the command installs first is the loop's


def check_startup(agree: bool = False) -> None:
    """Raises `StartupInterrupted` when a stop signal has arrived. With several processes, a
    process must not stop alone: only calls every process makes at the same point (`agree`)
    check, and they stop together when any of them received one."""
    import jax  # imported here: this module stays light for the command's first moments

    if jax.process_count() == 1:
        if SIGNALS.received:
            raise StartupInterrupted(SIGNALS.received)
        return
    if agree:
        from jaxcnn.runtime.distributed import any_process

        if any_process(SIGNALS.received is not None):
            raise StartupInterrupted(SIGNALS.received or "SIGTERM")


def restores_signal_handlers(fn: Callable) -> Callable:
    """Decorator: whatever `fn` installs for SIGTERM/SIGINT is undone when it returns or raises,
    and a signal it received is forgotten."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with handlers_restored():
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def handlers_restored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in stop_signals()}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        SIGNALS.received = None


@contextlib.contextmanager
def watching_from_the_start() -> Iterator[None]:
    """For `jaxcnn train`: the stop handlers from now on (quitting hard on a second Ctrl-C), and
    the previous handlers back afterwards."""
    with handlers_restored():
        SIGNALS.install()
        SIGNALS.hard_exit = True
        try:
            yield
        finally:
            SIGNALS.hard_exit = False
