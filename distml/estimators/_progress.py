"""An estimator's ``progress=True``: the runner's ``progress(phase, fraction)`` calls shown as ``tqdm.auto`` bars.

``tqdm.auto`` draws a widget in Jupyter (with ipywidgets; plain text otherwise) and a text bar in a
terminal. One bar is open at a time, at tqdm's position 0: a bar below another is drawn by moving the
cursor with terminal escape codes, which a notebook prints as text. Without tqdm there is no progress.
"""
from __future__ import annotations

from typing import Any, TextIO


class PhaseBars:
    """A ``progress(phase, fraction)`` callback: a bar per phase, the previous one closed when the next starts."""

    def __init__(self, tqdm: Any, file: TextIO | None = None) -> None:
        self._tqdm = tqdm
        self._file = file  # None: tqdm's own default (stderr; the notebook's output area in Jupyter)
        self._bar: Any = None
        self._phase: str | None = None

    def __call__(self, phase: str, fraction: float) -> None:
        if phase != self._phase:
            self.close()
            self._bar = self._tqdm(total=100, desc=phase, leave=False, file=self._file)
            self._phase = phase
        self._bar.n = min(100, int(100 * fraction))
        self._bar.refresh()
        if fraction >= 1:
            self.close()

    def close(self) -> None:
        """Close the open bar (a phase may end without reporting 1.0)."""
        if self._bar is not None:
            self._bar.close()
        self._bar, self._phase = None, None


def phase_bars(enabled: bool, file: TextIO | None = None) -> PhaseBars | None:
    """Bars for a fit when ``enabled`` and tqdm is installed, else None (no progress, quietly)."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return PhaseBars(tqdm, file)
