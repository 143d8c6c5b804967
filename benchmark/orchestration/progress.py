"""One progress line for the whole grid: cells done / total, the current step, time left.

``GridProgress`` is fed by ``GridRun`` (``benchmark/orchestration/tasks.py``): a unit starts
or ends, a cell ends. Time left is estimated from the work that ran in this process: the mean
seconds of the pretraining units that ran times the units left, plus the mean seconds of the
cells that ran times the cells left (skipped, already finished work counts as done and takes
no time). On a terminal the line is redrawn in place (``\\r``); elsewhere nothing is drawn and
the run log's lines carry the same estimate.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3 h 05 min``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


class GridProgress:
    """Counts and timings of a grid's units and cells, drawn as one line on a terminal."""

    def __init__(
        self,
        units: int,
        cells: int,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        draw: bool | None = None,
    ):
        self.units_total, self.cells_total = units, cells
        self.units_done = self.cells_done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.draw = self.stream.isatty() if draw is None else draw
        self.clock = clock
        self.current = "starting"
        self.unit_seconds: list[float] = []
        self.cell_seconds: list[float] = []
        self._since = clock()
        self._unit_started: float | None = None
        self._width = 0

    def unit_started(self, title: str) -> None:
        self._unit_started = self.clock()
        self.current = f"pretraining {title}"
        self.redraw()

    def unit_finished(self, title: str, ran: bool) -> None:
        """A unit ended; ``ran`` is False for one finished before (it took no time here)."""
        now = self.clock()
        if ran and self._unit_started is not None:
            self.unit_seconds.append(now - self._unit_started)
        self._unit_started, self._since = None, now
        self.units_done += 1
        self.current = f"pretrained {title}"
        self.redraw()

    def cell_finished(self, title: str, ran: bool) -> None:
        """A cell ended; its time is the time since the previous unit or cell ended."""
        now = self.clock()
        if ran:
            self.cell_seconds.append(now - self._since)
        self._since = now
        self.cells_done += 1
        self.current = f"evaluated {title}"
        self.redraw()

    def seconds_left(self) -> float | None:
        """The estimate of the time left; ``None`` before any work that ran could be timed."""
        units_left = self.units_total - self.units_done
        cells_left = self.cells_total - self.cells_done
        needed = [(units_left, self.unit_seconds), (cells_left, self.cell_seconds)]
        if any(left and not timed for left, timed in needed):
            return None
        return sum(left * sum(timed) / len(timed) for left, timed in needed if left)

    def estimate(self) -> str:
        left = self.seconds_left()
        return "time left unknown" if left is None else f"about {format_duration(left)} left"

    def line(self) -> str:
        return (
            f"cells {self.cells_done}/{self.cells_total}, units "
            f"{self.units_done}/{self.units_total} | {self.current} | {self.estimate()}"
        )

    def redraw(self) -> None:
        """Draw the line in place (terminals only)."""
        if self.draw:
            text = self.line()
            self.stream.write("\r" + text.ljust(self._width))
            self.stream.flush()
            self._width = len(text)

    def clear(self) -> None:
        """Wipe the line, so that a log line can be printed in its place."""
        if self.draw and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
