"""Stopping a run cleanly on SIGTERM or SIGINT.

SLURM (``scancel``, a time limit with ``--signal``, preemption) and Kubernetes send SIGTERM
some time before SIGKILL; Ctrl-C sends SIGINT. While :meth:`StopRequest.installed` is active,
either signal only sets a flag: the trainer finishes the current step, writes ``last.pth.tar``
(mid-epoch; the resumed run continues from that batch) and raises :class:`TrainingInterrupted`,
which the entrypoint turns into exit status ``128 + signal`` (143, 130): non-zero, so a
scheduler sees the job as interrupted and may requeue it. A second Ctrl-C stops at once.

The flag is read at the step's one sync, its finiteness check (under DDP the ranks agree on both
in one collective, so that every rank stops after the same step): a signal that comes after it,
later in the step (optimizer step, balancer update), stops the run after the next step. After
each epoch's validation and checkpoint, the last epoch's included, :meth:`StopRequest.agreed`
reads it once more: a signal during the last validation or save ends the run saved, unfinished,
and the same command then finishes it (the end-of-run steps, e.g. the showcase).

A sweep (``-m``) stops as a whole (:class:`SweepSignals`, docs/sweeps.md): the process that
runs the sweeper catches the signal and writes ``STOP`` into the sweep folder; every job of the
sweep, in that process or in a launcher's worker process, stops after its current step when it
sees the file, and a job that starts after it does not train (:class:`SweepStopped`). The next
command with the same sweep folder removes the file and continues.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from hpcm.train.distributed import DistContext

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Written into the sweep folder when a sweep is told to stop; holds the signal's name.
STOP_FILE = "STOP"


def signal_exit_code(signum: int) -> int:
    """The exit status of a process stopped by ``signum`` (the shell's convention)."""
    return 128 + signum


class TrainingInterrupted(CompactHydraException):
    """The run stopped on a signal after saving its state; ``exit_code`` is ``128 + signal``.
    (A Hydra compact exception: a sweep that ends with it prints its one-line message.)"""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = signal_exit_code(signum)

    def __reduce__(self) -> tuple[Any, ...]:  # pickled by a launcher (two arguments)
        return type(self), (self.signum, str(self))


class SweepStopped(TrainingInterrupted):
    """A job of a sweep that was told to stop before the job started: it did not train."""


def read_stop_file(path: Path) -> int | None:
    """The signal recorded in a sweep's ``STOP`` file, or None when there is no such file."""
    try:
        name = path.read_text().strip()
    except FileNotFoundError:
        return None
    return signal.Signals[name] if name in signal.Signals.__members__ else signal.SIGTERM


def ignore_signals() -> None:
    """SIGTERM and SIGINT ignored by this process, except while a :class:`StopRequest` is
    installed: for a launcher's worker process, which a signal between two jobs would otherwise
    kill (joblib then kills the other workers, whatever they are doing)."""
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)


class StopRequest:
    """The flag the signal handlers set (``signum``, this process's signal) and the decision to
    stop (``stopping``), which all DDP ranks take together: :meth:`go_on` is this rank's vote
    in a :meth:`DistContext.all_true`, :meth:`settle` takes the agreed result.

    ``stop_file``: a job of a sweep also stops when the sweep's ``STOP`` file appears (a stat
    per step, read by :meth:`go_on`). A handler that was installed before, a Python function
    such as the sweep's own, is called after this one's (same process: the basic launcher)."""

    def __init__(self, stop_file: Path | None = None) -> None:
        self.signum: int | None = None
        self.stopping = False
        self.stop_file = stop_file
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
        self.signum = signum
        log.warning(
            "received %s: finishing the current step, then saving last.pth.tar (Ctrl-C again "
            "to stop without saving)",
            signal.Signals(signum).name,
        )
        previous = self._previous.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """The handlers, for the duration of the block (only in the main thread, where Python
        delivers signals; elsewhere, e.g. a launcher's worker thread, nothing is installed)."""
        if threading.current_thread() is not threading.main_thread() or self._previous:
            yield self  # not the main thread, or installed already by an enclosing block
            return
        self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, handler in self._previous.items():
                signal.signal(s, handler)
            self._previous = {}

    def interrupted(self, progress: Any, epoch: int, path: Path) -> TrainingInterrupted:
        """The exception that ends a run saved to ``path`` at ``progress`` (in ``epoch``)."""
        signum = self.signum or signal.SIGTERM
        return TrainingInterrupted(
            signum,
            f"stopped by {signal.Signals(signum).name} at step {progress.global_step} (epoch "
            f"{epoch}, batch {progress.epoch_batches}); saved {path}: the same command with "
            "resume=auto continues the run",
        )

    def go_on(self) -> bool:
        """This rank's vote: True while it got no signal and its sweep was not told to stop."""
        if self.signum is None and self.stop_file is not None:
            self.signum = read_stop_file(self.stop_file)
        return self.signum is None

    def settle(self, go_on: bool) -> bool:
        """Take the vote agreed by all ranks (``go_on``: none got a signal); returns whether to
        stop after this step, also kept in ``stopping``. A rank that got no signal itself stops
        with SIGTERM's status."""
        if not go_on and self.signum is None:  # another rank's signal
            self.signum = signal.SIGTERM
        self.stopping = not go_on
        return self.stopping

    def agreed(self, dist: DistContext, device: torch.device) -> bool:
        """Whether to stop now, outside a step (between epochs): under DDP when any rank got a
        signal (one small collective). A step agrees on it with its finiteness check instead."""
        (go_on,) = dist.all_true([self.go_on()], device)
        return self.settle(go_on)


class SweepSignals(Callback):
    """Hydra callback of every multirun (``hydra/default.yaml``): SIGTERM or SIGINT to the
    process that runs the sweeper stops the whole sweep, cleanly.

    Its handler writes ``STOP_FILE`` into the sweep folder: running jobs save ``last.pth.tar``
    after their current step and end with :class:`TrainingInterrupted`, jobs that start later
    end at once with :class:`SweepStopped`; the launcher (joblib's worker processes included)
    thus runs out of work instead of being killed mid-save, and the command ends non-zero with
    one line. ``received`` is the signal this process got (the entrypoint's exit status); the
    process whose handlers these are is ``owner_pid``: only a job run there (the basic launcher)
    may end the whole process itself. A second Ctrl-C stops at once."""

    received: ClassVar[int | None] = None
    owner_pid: ClassVar[int | None] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.stop_file = Path(str(config.hydra.sweep.dir)) / STOP_FILE
        self.stop_file.unlink(missing_ok=True)  # a new command continues the sweep
        if threading.current_thread() is not threading.main_thread():
            return
        for s in SIGNALS:
            signal.signal(s, self._handle)
        type(self).received, type(self).owner_pid = None, os.getpid()

    def _handle(self, signum: int, frame: Any) -> None:
        if type(self).received is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
            return
        type(self).received = signum
        self.stop_file.parent.mkdir(parents=True, exist_ok=True)
        self.stop_file.write_text(signal.Signals(signum).name + "\n")
        log.warning(
            "received %s: stopping the sweep; running jobs save last.pth.tar, no new job starts "
            "(%s)",
            signal.Signals(signum).name,
            self.stop_file,
        )

    @classmethod
    def in_this_process(cls) -> bool:
        """Whether this process runs the sweeper with these handlers (the basic launcher's jobs
        do; a joblib worker's do not)."""
        return cls.owner_pid == os.getpid()
