"""Stopping a run cleanly on SIGTERM or SIGINT.

SLURM (``scancel``, a time limit with ``--signal``, preemption) and Kubernetes send SIGTERM
some time before SIGKILL; Ctrl-C sends SIGINT. While :meth:`StopRequest.installed` is active,
either signal only sets a flag: the trainer finishes the current step, writes ``last.pth.tar``
(mid-epoch; the resumed run continues from that batch) and raises :class:`TrainingInterrupted`,
which the entrypoint turns into exit status ``128 + signal`` (143, 130): non-zero, so a
scheduler sees the job as interrupted and may requeue it. A second Ctrl-C stops at once.

The flag is read at the step's one sync, its finiteness check (under DDP the ranks agree on both
in one collective, so that every rank stops after the same step): a signal that comes after it,
later in the step (optimizer step, balancer update), stops the run after the next step. Between
epochs, after the validation and the checkpoint, :meth:`StopRequest.agreed` reads it once more.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from hpcm.train.distributed import DistContext

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(Exception):
    """The run stopped on a signal after saving its state; ``exit_code`` is ``128 + signal``."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopRequest:
    """The flag the signal handlers set (``signum``, this process's signal) and the decision to
    stop (``stopping``), which all DDP ranks take together: :meth:`go_on` is this rank's vote
    in a :meth:`DistContext.all_true`, :meth:`settle` takes the agreed result."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stopping = False

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
        self.signum = signum
        log.warning(
            "received %s: finishing the current step, then saving last.pth.tar (Ctrl-C again "
            "to stop without saving)",
            signal.Signals(signum).name,
        )

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """The handlers, for the duration of the block (only in the main thread, where Python
        delivers signals; elsewhere, e.g. a launcher's worker thread, nothing is installed)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

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
        """This rank's vote: True while it got no signal."""
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
