"""Callbacks of the Python API: `jaxcnn.train(config, callbacks=[...])` and `loop.fit(..., callbacks=...)`.

A callback sees what the loop already has on the host, so it costs no device sync:
- `on_train_start(info)`: the run's facts (workdir, config, members, steps, where it starts);
- `on_log(record)`: each `train` record of `metrics.jsonl` (at `log_every_steps`);
- `on_epoch_end(record)`: each `epoch` record (with the validation numbers); returning True stops
  the run as early stopping does (it tests, writes the summary; `epochs_run` counts the epoch);
- `on_train_end(summary)`: the summary, once `summary.json` is written.

A run of members calls `on_log` and `on_epoch_end` once per training member, with that member's
record (its `member` key says which); True from `on_epoch_end` stops that member only, and the run
ends when every member has stopped.

A callback that raises stops the run at the next safe point, with a checkpoint saved as after
SIGTERM (the same command resumes it), and `CallbackFailed` names it in one line.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from jaxcnn.errors import JaxcnnError


class Callback:
    """The base class of callbacks: every method does nothing; override those you need."""

    def on_train_start(self, info: dict[str, Any]) -> None:
        """Before the first step (also of a resumed run: `info["start_step"]` says where it stands)."""

    def on_log(self, record: dict[str, Any]) -> None:
        """A `train` record (loss, accuracy, learning rate over the last logging interval)."""

    def on_epoch_end(self, record: dict[str, Any]) -> bool | None:
        """An `epoch` record; return True to stop (this member of) the run after this epoch."""

    def on_train_end(self, summary: dict[str, Any]) -> None:
        """The run's summary, as written to `summary.json`."""


class CallbackFailed(JaxcnnError):
    """A callback raised: one line naming it and what it raised, and where the run stands."""


def describe(callback: Callback, hook: str, error: BaseException) -> str:
    """`callback NAME.HOOK raised TYPE: MESSAGE`, on one line."""
    message = " ".join(str(error).split())[:200]
    return f"callback {type(callback).__name__}.{hook} raised {type(error).__name__}" + (f": {message}" if message
                                                                                          else "")


@dataclasses.dataclass
class Callbacks:
    """The run's callbacks, called in order; the first failure is kept (`failure`, one line) and the
    callbacks are not called again, so the loop can stop at its next safe point."""

    callbacks: tuple[Callback, ...] = ()
    failure: str | None = None
    error: BaseException | None = None

    @classmethod
    def of(cls, callbacks: Iterable[Callback] | None) -> Callbacks:
        """Checked: each must be a `jaxcnn.Callback` (a typo'd hook name would otherwise never run)."""
        given = tuple(callbacks or ())
        for i, callback in enumerate(given):
            if not isinstance(callback, Callback):
                raise JaxcnnError(f"callbacks[{i}] must be a jaxcnn.Callback (subclass it and override its on_* "
                                  f"methods), got {type(callback).__name__}")
        return cls(given)

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def call(self, hook: str, argument: Any) -> list[Any]:
        """Each callback's `hook(argument)` (a copy of a record, so none changes what is written);
        their results. After a failure, nothing."""
        results = []
        for callback in self.callbacks:
            if self.failure is not None:
                break
            try:
                results.append(getattr(callback, hook)(dict(argument) if isinstance(argument, dict) else argument))
            except Exception as error:  # any error of user code stops the run in one line
                self.failure, self.error = describe(callback, hook, error), error
        return results

    def wants_stop(self, record: dict[str, Any]) -> str | None:
        """`on_epoch_end(record)` of each; the name of the first that returned True (None: none did)."""
        for callback, result in zip(self.callbacks, self.call("on_epoch_end", record)):
            if result is True:
                return type(callback).__name__
        return None

    def raise_failure(self, where: str) -> None:
        """Raises `CallbackFailed` if a callback failed, its line followed by `where` the run stands."""
        if self.failure is not None:
            raise CallbackFailed(f"{self.failure}; {where}") from self.error


NONE = Callbacks()
