"""Divergence: a training loss (or parameters) no longer finite stops the run, exit status 3.

A float16 step whose gradients overflow is skipped by the dynamic loss scaling
(`jaxcnn.core.loss_scale`) and left out of the interval's loss: that is scaling at work, not
divergence, unless every step of an interval overflowed at the minimum scale (`check_skipped`).

The loop fetches the logging interval's loss sums at every logging step anyway (`loop.log`), so
checking them costs no extra host sync; before each checkpoint save the parameters are checked
too (one small reduction per save), so that no checkpoint ever holds a diverged state.

`config.on_nonfinite`: `stop` (the default) raises `TrainingDiverged` before anything of the
diverged interval is written or saved: the newest checkpoint is the last finite state, and the
line names the steps, the last finite loss and the learning rate in effect. `continue` trains on
(the JSON files then hold `null` for the non-finite numbers).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.core import optim

ON_NONFINITE = ("stop", "continue")
EXIT_STATUS = 3


class TrainingDiverged(Exception):
    """The training loss (or the parameters) stopped being finite; the command exits with status 3."""

    exit_status = EXIT_STATUS


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


class Watch:
    """Remembers the last finite logged loss; raises `TrainingDiverged` (with `on_nonfinite=stop`).

    `saver` is the run's `checkpoint.Checkpointer`: its newest committed step is the one kept.
    """

    def __init__(self, on_nonfinite: str, step: int, saver: Any):
        self.stop = on_nonfinite == "stop"
        self.saver = saver
        self.checked_step = step  # the step up to which the loss was found finite
        self.last_loss: tuple[int, float] | None = None  # (step, loss) of the last finite logged loss

    def check_loss(self, loss: float, step: int, state: Any) -> None:
        """At a logging step: `loss` is the mean training loss of the steps since the last one."""
        if math.isfinite(loss):
            self.checked_step, self.last_loss = step, (step, loss)
        elif self.stop:
            raise self._diverged(f"the training loss is {loss}", step, state)

    def check_skipped(self, at_minimum: bool, step: int, state: Any) -> None:
        """At a logging step of a float16 run where a member skipped every step of the interval for
        overflow: not divergence while the loss scale can still go down (`at_minimum` False); at
        its minimum, gradients that overflow whatever the scale have diverged."""
        if at_minimum and self.stop:
            raise self._diverged("every step overflowed in float16 at loss_scale.minimum", step, state)

    def check_state(self, state: Any, step: int) -> None:
        """Before a checkpoint save: refuses to save parameters that are not finite."""
        if self.stop and not bool(_all_finite((state.params, state.batch_stats))):
            raise self._diverged(f"the parameters after step {step} are not finite", step, state)

    def _diverged(self, what: str, step: int, state: Any) -> TrainingDiverged:
        lr = float(np.max(jax.device_get(optim.learning_rate_in_effect(state.opt_state))))  # the largest member's
        last = (f"last finite loss {self.last_loss[1]:.4g} at step {self.last_loss[0]}" if self.last_loss
                else "no finite loss logged before")
        self.saver.wait()  # the saves in flight, committed or failed, before naming the kept one
        kept = self.saver.latest_committed_step()
        where = (f"the checkpoint of step {kept} in {self.saver.directory} is kept" if kept is not None
                 else "no checkpoint was saved before")
        return TrainingDiverged(
            f"training diverged in steps {self.checked_step + 1}-{step}: {what} ({last}, learning rate {lr:.3g}); "
            f"{where}; lower optimizer.learning_rate and train again (--fresh), or set "
            "--config.on_nonfinite=continue to train on")
