"""Stopping on a signal: SIGINT / SIGTERM end training at a step boundary, after a save, and with
several processes at the same step on all of them."""

from __future__ import annotations

import os
import signal

import jax


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training after it saved; running the same command resumes."""

    def __init__(self, step: int, signum: int, directory: str):
        self.step, self.signum, self.directory = step, signum, directory
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name} at step {step}, saved to {directory}; run the same command "
                         f"to resume")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class StopRequested:
    """Turns SIGTERM / SIGINT into a stop that the loop checks at each step, so that it saves
    before exiting. With several processes, all must stop at the same step: there SIGTERM is
    JAX's preemption notice (passed to every process, which agree on the step to stop at), and
    SIGINT is turned into one."""

    def __init__(self):
        self.signal = None
        self._previous = {}
        self.multi_process = jax.process_count() > 1

    def __enter__(self):
        signals = (signal.SIGINT,) if self.multi_process else (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        self.signal = signum
        if self.multi_process:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption notifier

    def should_stop(self, step: int) -> bool:
        """Whether to save and stop after ``step`` (the same answer on every process)."""
        if not self.multi_process:
            return self.signal is not None
        from jax.experimental import multihost_utils

        if multihost_utils.reached_preemption_sync_point(step):
            self.signal = self.signal or signal.SIGTERM
            return True
        return False

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
