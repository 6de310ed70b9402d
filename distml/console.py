"""What ``distml submit`` shows while a job runs: a live bar per phase on a terminal, plain lines otherwise;
and what it hears: SIGINT and SIGTERM end the job as cancelled, with one line and no traceback.

Only stderr is used, so ``--json`` output on stdout stays machine-readable.
"""
from __future__ import annotations

import _thread
import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import IO, Any, TypeVar

import click

from distml.errors import DistmlError, JobCancelled
from distml.jobs import phase_message

F = TypeVar("F", bound=Callable[..., Any])

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


def summary_lines(summary: dict[str, Any], top: int = 10) -> list[str]:
    """The job summary's extra lines (``distml submit``): where the evaluation report and model.onnx are,
    the positive class, where early stopping ended, and the top coefficients and importances, most
    important first."""
    lines = []
    if summary.get("evaluation_report"):
        lines.append(f"  evaluation {summary['evaluation_report']}")
    if summary.get("onnx"):
        lines.append(f"  onnx      {summary['onnx']}")
    if summary.get("positive_class") is not None:
        lines.append(f"  positive  {summary['positive_class']!r} (precision, recall, f1 and roc_auc are for it)")
    training = summary.get("training") or {}
    route = training.get("route")
    if route:  # the kernel svm's measured route (distml.models._svm_route)
        measured = "" if route.get("sv_fraction") is None else (
            f" ({route['sv_fraction']:.0%} of the probe's rows are support vectors; "
            f"switch_sv_fraction {route['threshold']})")
        lines.append(f"  route     {route['taken']}{measured}")
    if "stopped_at" in training:  # early stopping
        lines.append(f"  training  {_stopping_line(training)}")

    def table(title: str, values: dict[str, float]) -> None:
        items = list(values.items())
        if items:
            more = f"\n    ({len(items) - top} more in the manifest)" if len(items) > top else ""
            lines.append(f"  {title}" + "".join(f"\n    {name:<24} {value:+.4f}" for name, value in items[:top]) + more)

    table("importance", summary.get("feature_importances") or {})
    coefficients = summary.get("coefficients")
    if coefficients:
        table(f"coefficients (standardized, for {coefficients['row']!r})", coefficients["standardized"])
    permuted = summary.get("permutation_importance")
    if permuted:
        table(f"permutation importance ({permuted['score']} lost)", permuted["importances"])
    return lines


def _stopping_line(training: dict[str, Any]) -> str:
    """Where early stopping ended, in one line (the manifest's ``training`` section has the curve)."""
    best = training.get("best") or {}
    if "max_trees" in training:
        ran = (f"stopped at {training['stopped_at']} of {training['max_trees']} trees" if training["stopped_at"]
               else f"grew all {training['max_trees']} trees")
        return f"{ran}, kept {training['trees_kept']}; best {training['metric']} {best.get('oob_score', 0):.4f}"
    ran = (f"stopped after {training['stopped_at']} of {training['max_epochs']} epochs" if training["stopped_at"]
           else f"ran all {training['max_epochs']} epochs")
    if not best:
        return ran
    return f"{ran}; best {training['metric']} {best['validation_loss']:.5f} after {best['epoch']}"


def interruptible(command: F) -> F:
    """Run a command with SIGINT and SIGTERM turned into one ``Error:`` line and exit 130 or 143 (128 + signal).

    Either signal raises ``KeyboardInterrupt`` in the main thread, so the job takes the path Ctrl-C
    always took: ``run_job`` records ``cancelled`` ("interrupted by SIGTERM"), the embedded cluster is
    closed as the error leaves ``connect``, and the exit status tells the caller which signal ended
    it. Without a handler SIGTERM killed the process outright and left the record ``running``.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        caught: list[int] = []
        with _signals_raise(caught), quiet_cluster_logs():
            try:
                return command(*args, **kwargs)
            except KeyboardInterrupt:  # before the job started, or while the cluster was closing
                error = JobCancelled(f"distml submit was interrupted by {_name(caught)}")
                error.exit_code = 128 + (caught[0] if caught else signal.SIGINT)
                raise error from None
            except DistmlError as exc:
                if caught:  # the job's own one line, with the shell's status for the signal that ended it
                    exc.exit_code = 128 + caught[0]
                raise

    return wrapper  # type: ignore[return-value]


def _name(caught: list[int]) -> str:
    return signal.Signals(caught[0]).name if caught else "SIGINT"


@contextlib.contextmanager
def _signals_raise(caught: list[int]) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM raise ``KeyboardInterrupt("SIGTERM")`` once; repeats are ignored.

    A repeat while the job is being recorded and the cluster closed would only turn a clean shutdown
    into tracebacks; the shutdown is bounded by distributed's own timeouts, and SIGKILL still works.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handle(signum: int, frame: types.FrameType | None) -> None:
        if caught:
            return
        if _in_finalizer(frame):  # Python would print and drop the exception there: deliver it again just after
            threading.Thread(target=_interrupt_main_soon, args=(signum,), daemon=True).start()
            return
        caught.append(signum)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _in_finalizer(frame: types.FrameType | None) -> bool:
    """Whether the main thread is inside a ``__del__`` or a ``weakref.finalize`` callback.

    An exception raised there is only reported as "Exception ignored in ..." and the interrupted code
    goes on, so a SIGTERM that lands while, say, a dask Future is released would be lost.
    """
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or (code.co_name == "__call__" and code.co_filename.endswith("weakref.py")):
            return True
        frame = frame.f_back
    return False


def _interrupt_main_soon(signum: int) -> None:
    """Simulate ``signum`` to the main thread again, once it has had a moment to leave the finalizer."""
    time.sleep(0.01)
    _thread.interrupt_main(signum)


@contextlib.contextmanager
def quiet_cluster_logs() -> Iterator[None]:
    """Keep distributed's client-side log lines and asyncio's "Task exception was never retrieved"
    (an interrupted gather) off stderr, so a failing job prints only its one ``Error:`` line.

    The embedded cluster's own processes are silenced by ``LocalCluster(silence_logs=...)``; the handler
    distributed adds when it is imported (after this is entered) is held by ``cluster.connect`` until the
    client and cluster are closed; this covers the rest of the submitting process. ``DISTML_DEBUG=1``
    leaves them on.
    """
    if os.environ.get("DISTML_DEBUG"):
        yield
        return
    loggers = [logging.getLogger(name) for name in ("distributed", "asyncio", "tornado")]
    previous = [logger.level for logger in loggers]
    handlers = [(h, h.level) for logger in loggers for h in logger.handlers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    for handler, _ in handlers:
        handler.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, previous):
            logger.setLevel(level)
        for handler, level in handlers:
            handler.setLevel(level)
