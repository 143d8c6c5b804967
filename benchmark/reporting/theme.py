"""One look for every report figure: the seaborn theme and a style per method.

A method keeps its style in every figure. Each has a colour, a marker and a line style, so that
15 methods stay apart on screen and in greyscale print: colours come from seaborn's colour-blind
palette, then from its dark variant, and where two methods share a marker their greys differ
(``GREY_DELTA``). ``scratch``, the floor, is always dark grey. A positive control is dashed and
its bars hatched ``//``; a baseline is dotted and its bars hatched ``..``. Methods not
highlighted on a crowded panel are drawn light grey, thin and without a legend entry
(``muted``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import seaborn as sns

REFERENCE_FLOOR = "scratch"
SCRATCH_GREY = (0.3, 0.3, 0.3)
MUTED_GREY = (0.8, 0.8, 0.8)
MARKERS = ["s", "^", "D", "v", "P", "X", "<", ">", "p"]  # scratch alone has "o"
DASHES = {"method": (), "positive_control": (5, 2), "baseline": (1, 1.5)}
HATCHES = {"method": None, "positive_control": "//", "baseline": ".."}
ROLE_NAMES = {"positive_control": "positive control", "baseline": "baseline"}
GREY_DELTA = 0.1  # least luma difference between two methods with the same marker and dashes


def set_theme() -> None:
    """seaborn's paper context on a white grid, fonts readable at column width."""
    sns.set_theme(
        context="paper",
        style="whitegrid",
        font_scale=1.1,
        rc={
            "axes.titlesize": 10,
            "legend.fontsize": 7.5,
            "grid.alpha": 0.5,
            "hatch.linewidth": 0.6,
        },
    )


def luma(colour: tuple) -> float:
    """The grey a colour prints as (ITU-R BT.601 weights, as PIL's ``convert("L")``)."""
    red, green, blue = colour[:3]
    return 0.299 * red + 0.587 * green + 0.114 * blue


def _colours() -> list[tuple]:
    """The colour-blind palette, then its dark variant, without their greys (scratch's); the
    pale yellow, hard to see on white, comes last."""
    grey, yellow = 7, 8  # in seaborn's ten-colour palettes
    bright = sns.color_palette("colorblind", 10)
    dark = sns.color_palette("dark", 10)
    return [
        *(tuple(c) for i, c in enumerate(bright) if i not in (grey, yellow)),
        *(tuple(c) for i, c in enumerate(dark) if i != grey),
        tuple(bright[yellow]),
    ]


@dataclass(frozen=True)
class MethodStyle:
    """How one method is drawn; ``label`` names it in legends (``None``: no legend entry)."""

    colour: tuple
    marker: str | None
    dashes: tuple
    hatch: str | None
    label: str | None
    highlighted: bool = True


def legend_name(label: str, role: str | None) -> str:
    """``supervised (positive control)``, ``intensity_features (baseline)``; else the label."""
    return f"{label} ({ROLE_NAMES[role]})" if role in ROLE_NAMES else label


def method_styles(
    methods: list[str],
    roles: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, MethodStyle]:
    """A style per method: ``scratch`` grey, the others in alphabetical order through the
    colours, each colour cycle with the markers shifted so repeated markers print apart.
    ``roles``: method -> ``SSLMethod.role``; ``labels``: method -> the name its cells record."""
    roles, labels = roles or {}, labels or {}
    colours = _colours()
    styles = {}
    others = sorted(m for m in set(methods) if m != REFERENCE_FLOOR)
    for index, method in enumerate(others):
        cycle, position = divmod(index, len(MARKERS))
        role = roles.get(method, "method")
        styles[method] = MethodStyle(
            colour=colours[index % len(colours)],
            marker=MARKERS[(position + 3 * cycle) % len(MARKERS)],
            dashes=DASHES.get(role, ()),
            hatch=HATCHES.get(role),
            label=legend_name(labels.get(method, method), role),
        )
    if REFERENCE_FLOOR in methods:
        styles[REFERENCE_FLOOR] = MethodStyle(
            SCRATCH_GREY, "o", (), None, labels.get(REFERENCE_FLOOR, REFERENCE_FLOOR)
        )
    return styles


def muted(styles: dict[str, MethodStyle], keep: list[str]) -> dict[str, MethodStyle]:
    """The same styles with every method outside ``keep`` light grey, unmarked and unnamed."""
    return {
        method: style
        if method in keep
        else replace(style, colour=MUTED_GREY, marker=None, label=None, highlighted=False)
        for method, style in styles.items()
    }
