"""What ``distml submit`` shows while a job runs: a live bar per phase on a terminal, plain lines otherwise.

Only stderr is used, so ``--json`` output on stdout stays machine-readable.
"""
from __future__ import annotations

import sys
import time
from typing import IO

import click

LABELS = {"read": "reading", "stats": "statistics pass (partitions read)", "train": "training",
          "eval": "evaluating", "save": "saving"}
WIDTH = 28


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Console:
    """Receives the runner's ``progress`` and ``log`` callbacks and draws them."""

    def __init__(self, quiet: bool = False, stream: IO[str] | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.quiet = quiet
        self.started = time.perf_counter()
        self.phase: str | None = None
        self.phase_started = 0.0
        self.fraction = 0.0
        self.steps: dict[str, int] = {}

    def _clock(self) -> str:
        return f"{time.perf_counter() - self.started:7.1f}s"

    def bar(self) -> str:
        """``train  [#######-----]  58%  4.1%/s  ETA 10s``: the current phase's bar with rate and ETA."""
        filled = int(self.fraction * WIDTH)
        elapsed = time.perf_counter() - self.phase_started
        rate = self.fraction / elapsed if elapsed > 0 else 0.0
        eta = f"ETA {_duration((1 - self.fraction) / rate)}" if 0 < self.fraction < 1 and rate > 0 else \
            f"in {_duration(elapsed)}"
        return (f"{self.phase:<6} [{'#' * filled}{'-' * (WIDTH - filled)}] {self.fraction:5.0%}  "
                f"{rate * 100:5.1f}%/s  {eta}  {LABELS.get(self.phase or '', '')}")

    def progress(self, phase: str, fraction: float) -> None:
        if self.quiet:
            return
        if phase != self.phase:  # progress from a phase not announced by a log line
            self._end_bar()
            self.phase, self.phase_started, self.fraction = phase, time.perf_counter(), 0.0
        self.fraction = max(self.fraction, min(1.0, fraction))
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.bar())
            self.stream.flush()
            return
        step = int(self.fraction * 10)
        if self.steps.get(phase) != step:  # plain lines: one every 10%
            self.steps[phase] = step
            click.echo(f"{self._clock()}  {self.bar()}", file=self.stream)

    def _end_bar(self) -> None:
        if self.tty and self.phase is not None:
            self.stream.write("\n")
            self.phase = None

    def log(self, message: str) -> None:
        if self.quiet:
            return
        words = message.split()
        if len(words) == 3 and words[0] == "phase" and words[2] == "started":  # the runner's phase marks
            self._end_bar()
            self.phase, self.phase_started, self.fraction = words[1], time.perf_counter(), 0.0
            self.steps.pop(words[1], None)
        elif len(words) >= 3 and words[0] == "phase" and words[2] == "done" and words[1] == self.phase:
            self.fraction = 1.0
        if self.tty and self.phase is not None:
            self.stream.write("\r\x1b[2K")
        click.echo(f"{self._clock()}  {message}", file=self.stream)
        if self.tty and self.phase is not None:
            self.stream.write(self.bar())
            self.stream.flush()

    def close(self) -> None:
        self._end_bar()
