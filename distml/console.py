"""What ``distml submit`` shows while a job runs: a live bar per phase on a terminal, plain lines otherwise.

Only stderr is used, so ``--json`` output on stdout stays machine-readable.
"""
from __future__ import annotations

import sys
import time
from typing import IO

import click

from distml.jobs import phase_message

LABELS = {"read": "reading", "stats": "statistics pass (partitions read)", "train": "training",
          "eval": "evaluating", "save": "saving"}
WIDTH = 28


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Console:
    """Receives the runner's ``progress``, ``log`` and ``phase`` callbacks and draws them."""

    def __init__(self, quiet: bool = False, stream: IO[str] | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.quiet = quiet
        self.started = time.perf_counter()
        self.current: str | None = None
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
        return (f"{self.current:<6} [{'#' * filled}{'-' * (WIDTH - filled)}] {self.fraction:5.0%}  "
                f"{rate * 100:5.1f}%/s  {eta}  {LABELS.get(self.current or '', '')}")

    def progress(self, phase: str, fraction: float) -> None:
        if self.quiet:
            return
        if phase != self.current:  # progress from a phase not announced by a phase event
            self._end_bar()
            self.current, self.phase_started, self.fraction = phase, time.perf_counter(), 0.0
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
        if self.tty and self.current is not None:
            self.stream.write("\n")
            self.current = None

    def phase(self, name: str, state: str, seconds: float) -> None:
        """The runner's phase event: a started phase gets a fresh bar, a finished one a full bar."""
        if self.quiet or state == "failed":
            return
        if state == "started":
            self._end_bar()
            self.current, self.phase_started, self.fraction = name, time.perf_counter(), 0.0
            self.steps.pop(name, None)
        elif name == self.current:
            self.fraction = 1.0
        self.log(phase_message(name, state, seconds))

    def log(self, message: str) -> None:
        if self.quiet:
            return
        if self.tty and self.current is not None:
            self.stream.write("\r\x1b[2K")
        click.echo(f"{self._clock()}  {message}", file=self.stream)
        if self.tty and self.current is not None:
            self.stream.write(self.bar())
            self.stream.flush()

    def close(self) -> None:
        self._end_bar()
