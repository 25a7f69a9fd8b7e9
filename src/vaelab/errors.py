"""Why a training run stopped early, as exceptions (raised by train.py, caught by vaelab-train
and `vaelab resume`). Here rather than in train.py so that the commands that catch them do
not import torch before they have checked their arguments."""
from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys

# Signals that stop a run as a Ctrl-C does (save after the current step), not on the spot:
# SIGTERM (kill, a batch system) and SIGHUP (the terminal was closed: an ssh session that
# dropped, a terminal window shut). A process started ignoring one (nohup) keeps ignoring it.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def after_hangup(signum: int) -> None:
    """Call from a handler of `signum`: on a SIGHUP from a closed terminal, this process's standard
    streams that were that terminal now go to /dev/null, and so do output pipes (`| tee log`:
    the reader was in the terminal's job and had the hang-up too). Every write to a hung-up
    terminal fails (EIO), one to a pipe without its reader too (EPIPE), and a failed print or
    progress bar would end the save the stop asked for. The run's log file (RUN/train.log) keeps
    what it says from here. A `kill -HUP` with the terminal still there leaves the streams as
    they are."""
    if signum != signal.SIGHUP:
        return
    try:
        null = os.open(os.devnull, os.O_RDWR)
    except OSError:
        return
    try:
        null_dev = os.fstat(null).st_rdev
        gone, pipes = [], []
        for fd in (0, 1, 2):
            try:
                st = os.fstat(fd)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev != null_dev and not os.isatty(fd):
                    gone.append(fd)  # a character device that is no longer a terminal: a hung-up one
                elif stat.S_ISFIFO(st.st_mode) and fd != 0:
                    pipes.append(fd)
            except OSError:  # (not open)
                continue
        for fd in gone + (pipes if gone else []):
            os.dup2(null, fd)
    finally:
        os.close(null)


def when_the_reader_has_gone(command) -> int:
    """command()'s exit status; 0 if it ended on a write to a stdout pipe whose reader has closed
    (`vaelab compare ... | head`, `vaelab-train --help | head`: the reader has what it wanted,
    where the traceback of a BrokenPipeError said otherwise). A pipe other than stdout's (a
    worker's) is not for us to hide."""
    try:
        return command()
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise
        # (Python's own recipe: point stdout at devnull, so flushing it at exit raises nothing)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        return 0


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end has closed (poll reports an error on it)."""
    import select

    try:
        poller = select.poll()
        poller.register(1, select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows)
        return False


# `vaelab reproduce` of a run carried on with changed settings (resumes.yaml) replays each change
# at the step it was made: it trains each part in a process of its own, which stops after this
# many steps (set in its environment) as a Ctrl-C would there, and `vaelab resume` goes on from it.
STOP_AFTER_STEP = "VAELAB_STOP_AFTER_STEP"


def say_while_stopping(text: str) -> None:
    """Print `text` on stderr during a stop: a line there must not end the process that is waiting
    for its jobs to save. After a hang-up the terminal can close between after_hangup's look at
    it and the write (a busy host), which then fails (EIO): the streams go to /dev/null from
    there, as after_hangup does for a terminal found gone, and the line with them."""
    try:
        print(text, file=sys.stderr, flush=True)
    except OSError:
        after_hangup(signal.SIGHUP)


class SweepTaken(SystemExit):
    """A launch whose sweep folder another process's sweep holds (two launches begun at once, which
    both passed the pre-flight check): its one line, and exit status 2, before Hydra writes there."""


class SweepWorkerDied(SystemExit):
    """A joblib worker killed under its job (train_cli._a_killed_worker_is_one_line): one line."""


class NonFiniteLoss(RuntimeError):
    """The loss or the weights became inf/NaN; the last good checkpoint is kept."""


class Interrupted(RuntimeError):
    """Ctrl-C, SIGTERM or SIGHUP: the run saved a checkpoint after its current step and stopped.
    finished: it came in the last epoch, which the run finished (metrics.json written); only
    its end-of-training evaluation, if any, did not run: the run is done, not stopped early."""

    def __init__(self, message: str, finished: bool = False):
        super().__init__(message)
        self.finished = finished


class SaveFailed(RuntimeError):
    """A checkpoint could not be written (disk full, permissions). The ones already there are intact."""


@contextlib.contextmanager
def stop_signals_as_ctrl_c(first=None):
    """Within the block a SIGTERM (kill, a batch system's stop) or a SIGHUP (the terminal closed)
    is a Ctrl-C: a KeyboardInterrupt, so the clean-up a Ctrl-C runs (an evaluation's half-written
    files and events) runs for it too, where the default action would end the process on the
    spot. `first(signum)`: called before, for what a Ctrl-C reaches through the terminal and a
    SIGTERM to this process alone does not (vaelab-train's joblib workers); False from it: a stop
    already under way goes on. A stop signal again is the same stop: an interactive shell passes the
    hang-up to its job, and the kernel sends the job another as the shell ends. So is one after a
    Ctrl-C (`vaelab reproduce` passes a SIGINT sent to its whole group on to its training as a
    SIGTERM, workflow._run_child), while each Ctrl-C keeps its own handler, a second one included.
    Only for a signal that has its default action (an outer handler stays in charge, nohup's
    ignored hang-up stays ignored; train() sets its own stop for the steps it runs inside the
    block), and not outside the main thread (no signals there)."""
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        after_hangup(signum)
        if stopping:
            return
        stopping = True
        if first is not None and first(signum) is False:
            return
        raise KeyboardInterrupt

    def ctrl_c(signum, frame):
        nonlocal stopping
        stopping = True
        ctrl_c_handler(signum, frame)
    before = {}
    try:
        for s in STOP_SIGNALS:
            if signal.getsignal(s) is signal.SIG_DFL:
                before[s] = signal.signal(s, stop)
        ctrl_c_handler = signal.getsignal(signal.SIGINT)
        if before and callable(ctrl_c_handler):  # (Python's KeyboardInterrupt, or an outer block's own)
            before[signal.SIGINT] = signal.signal(signal.SIGINT, ctrl_c)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for s, handler in before.items():
            if signal.getsignal(s) in (stop, ctrl_c):  # (not over leaving_after_a_stop's SIG_IGN)
                signal.signal(s, handler)


def leaving_after_a_stop() -> None:
    """A command that has stopped and saved, on its way out: a late Ctrl-C, SIGTERM or hang-up
    changes nothing (an interactive shell's second hang-up, a `kill PID` sent twice ended the
    process with 143 or 129 where a stop exits 130)."""
    for s in (signal.SIGINT, *STOP_SIGNALS):
        try:
            signal.signal(s, signal.SIG_IGN)
        except ValueError:  # not the main thread
            return
