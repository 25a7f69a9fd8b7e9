"""Why a training run stopped early, as exceptions (raised by train.py, caught by vaelab-train
and `vaelab resume`). Here rather than in train.py so that the commands that catch them do
not import torch before they have checked their arguments."""
from __future__ import annotations

import contextlib
import signal


class NonFiniteLoss(RuntimeError):
    """The loss or the weights became inf/NaN; the last good checkpoint is kept."""


class Interrupted(RuntimeError):
    """Ctrl-C or SIGTERM: the run saved a checkpoint after its current step and stopped.
    finished: it came in the last epoch, which the run finished (metrics.json written); only
    its end-of-training evaluation, if any, did not run: the run is done, not stopped early."""

    def __init__(self, message: str, finished: bool = False):
        super().__init__(message)
        self.finished = finished


class SaveFailed(RuntimeError):
    """A checkpoint could not be written (disk full, permissions). The ones already there are intact."""


@contextlib.contextmanager
def sigterm_as_ctrl_c(first=None):
    """Within the block a SIGTERM (kill, a batch system's stop) is a Ctrl-C: a KeyboardInterrupt,
    so the clean-up a Ctrl-C runs (an evaluation's half-written files and events) runs for it
    too, where the default action would end the process on the spot. `first()`: called before,
    for what a Ctrl-C reaches through the terminal and a SIGTERM to this process alone does not
    (vaelab-train's joblib workers). Only where SIGTERM has its default action (an outer handler
    stays in charge; train() sets its own stop for the steps it runs inside the block), and not
    outside the main thread (no signals there)."""
    def stop(signum, frame):
        if first is not None:
            first()
        raise KeyboardInterrupt
    try:
        before = signal.signal(signal.SIGTERM, stop) if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL else None
    except ValueError:  # not the main thread
        before = None
    if before is None:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
