"""The grid's progress line: counts, the current step and the time-left estimate."""

import io

from benchmark.orchestration.progress import GridProgress, format_duration


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_time_left_comes_from_the_units_and_cells_that_ran():
    clock = Clock()
    progress = GridProgress(units=3, cells=10, stream=io.StringIO(), clock=clock)
    assert progress.line() == "cells 0/10, units 0/3 | starting | time left unknown"
    progress.unit_finished("simclr", ran=False)  # finished before: done, takes no time
    progress.unit_started("byol")
    clock.now = 100.0
    progress.unit_finished("byol", ran=True)
    assert progress.seconds_left() is None  # no cell has been timed yet
    clock.now = 110.0
    progress.cell_finished("byol finetune f0.5 fold0 seed0", ran=True)
    progress.cell_finished("byol finetune f1 fold0 seed0", ran=False)
    clock.now = 140.0
    progress.cell_finished("byol linear f0.5 fold0 seed0", ran=True)
    # one unit left at 100 s, seven cells left at (10 + 30) / 2 = 20 s each
    assert progress.seconds_left() == 100 + 7 * 20
    assert progress.line() == (
        "cells 3/10, units 2/3 | evaluated byol linear f0.5 fold0 seed0 | about 4 min left"
    )
    progress.unit_started("moco")
    assert "| pretraining moco |" in progress.line()


def test_a_terminal_gets_one_line_redrawn_in_place_and_other_streams_nothing():
    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        progress = GridProgress(units=0, cells=2, stream=stream, clock=Clock())
        progress.cell_finished("scratch linear f1 fold0 seed0", ran=True)
        progress.clear()
    assert log.getvalue() == ""
    drawn = terminal.getvalue()
    assert drawn.startswith("\rcells 1/2, units 0/0 |") and "\n" not in drawn
    assert drawn.endswith("\r")  # cleared, so a log line can take its place


def test_durations_read_naturally():
    assert [format_duration(s) for s in (42, 720, 3 * 3600 + 300)] == [
        "42 s",
        "12 min",
        "3 h 05 min",
    ]
