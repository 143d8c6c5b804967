"""Report tables as Markdown and LaTeX (booktabs) text; the CSV files are the DataFrames.

A metric table has one row per method (the reference first) and one column per label
fraction. An entry reads ``mean ± std`` over the finished cells, significance marks against the
reference (``*`` the paired test over training and test-subject variation, ``†`` the paired
bootstrap over test subjects alone; both Holm-adjusted within the fraction's family, see
``benchmark.reporting.summaries.paired_comparisons``), the 95 % bootstrap CI in brackets, and
how many cells failed or are missing. An entry without finished cells reads ``failed`` or
``missing``, never a number. Bold marks the methods tied with the best of their column: every
competing method the paired test does not find worse than the column's best mean
(``summaries.tied_with_best``), or, for a table without tests, the best mean alone. A positive
control and a baseline (``SSLMethod.role``) follow the methods, their names say what they are
(``summaries.ROLE_LABELS``), and they are never bold.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.reporting.summaries import role_suffix

MARKS = {"p_holm": "*", "p_test_only_holm": "†"}
LATEX_MARKS = {"*": "*", "†": r"\dagger", "‡": r"\ddagger"}
LATEX_SYMBOLS = {
    "±": r"$\pm$",
    "†": r"$^\dagger$",
    "‡": r"$^\ddagger$",
    "×": r"$\times$",
    "<": r"$<$",
    "–": "--",
}


@dataclass
class Table:
    """One table in neutral form: header cells, rows of (Markdown) cell texts, caption."""

    header: list[str]
    rows: list[list[str]]
    caption: str
    label: str
    group: str = ""  # a heading spanning every column but the first


@dataclass(frozen=True)
class Notation:
    """How emphasis, marks, small print and method names are written in Markdown or LaTeX.

    ``labels`` maps a method to the name its cells record (``method_label``, e.g.
    ``spark (mask 8^3)``); methods without one keep their registered name."""

    latex: bool
    labels: dict[str, str] = field(default_factory=dict, compare=False)

    def bold(self, text: str) -> str:
        return f"\\textbf{{{text}}}" if self.latex else f"**{text}**"

    def plus_minus(self, mean: float, std: float, digits: int = 3) -> str:
        text = f"{mean:.{digits}f}"
        if math.isfinite(std):
            text += f" $\\pm$ {std:.{digits}f}" if self.latex else f" ± {std:.{digits}f}"
        return text

    def marks(self, marks: str) -> str:
        if not marks or not self.latex:
            return marks.replace("*", "\\*")  # a literal star, not emphasis
        return "$^{" + "".join(LATEX_MARKS[m] for m in marks) + "}$"

    def small(self, text: str) -> str:
        return f"{{\\scriptsize {text}}}" if self.latex else text

    def name(self, text: str) -> str:
        return latex_escape(text) if self.latex else text

    def method(self, method: str, roles: dict[str, str]) -> str:
        """A row's method name (as its cells label it), with what it is when it is no
        competing method."""
        suffix = role_suffix(roles.get(method))
        name = self.name(self.labels.get(method, method))
        return name + (f" {self.small(self.name(suffix.strip()))}" if suffix else "")


def latex_escape(text: str) -> str:
    """Text with LaTeX's special characters escaped and report symbols in math mode."""
    for plain, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%")):
        text = text.replace(plain, escaped)
    for plain, escaped in (("_", r"\_"), ("#", r"\#"), ("$", r"\$")):
        text = text.replace(plain, escaped)
    for plain, escaped in LATEX_SYMBOLS.items():
        text = text.replace(plain, escaped)
    return text


ROLE_ORDER = {"method": 0, "positive_control": 1, "baseline": 2}


def method_order(
    methods: list[str], reference: str | None, roles: dict[str, str] | None = None
) -> list[str]:
    """The reference first, then the other methods alphabetically, then positive controls,
    then baselines (``roles``: method -> ``SSLMethod.role``)."""
    roles = roles or {}
    rest = sorted(
        (m for m in set(methods) if m != reference),
        key=lambda m: (ROLE_ORDER.get(roles.get(m, "method"), 0), m),
    )
    return ([reference] if reference in methods else []) + rest


def entry_roles(table: pd.DataFrame) -> dict[str, str]:
    """Method -> role of a summary table's rows (all ``method`` without a ``role`` column)."""
    return dict(zip(table["method"], table["role"])) if "role" in table else {}


def _status_text(row: pd.Series) -> str:
    if row["failed"] and row["missing"]:
        return "failed/missing"
    return "failed" if row["failed"] else "missing" if row["missing"] else "–"


def entry_text(row: pd.Series, bold: bool, marks: str, notation: Notation) -> str:
    """One entry of a metric table (see the module docstring)."""
    if row["n"] == 0:
        return _status_text(row)
    text = notation.plus_minus(row["mean"], row["std"])
    text = (notation.bold(text) if bold else text) + notation.marks(marks)
    if math.isfinite(row.get("ci_low", math.nan)):
        text += " " + notation.small(f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]")
    for status in ("failed", "missing"):
        if row[status]:
            text += f" ({row[status]} {status})"
    return text


def significance_marks(comparison: pd.Series | None, alpha: float) -> str:
    if comparison is None:
        return ""
    return "".join(mark for column, mark in MARKS.items() if comparison[column] < alpha)


def metric_table(
    entries: pd.DataFrame,
    comparisons: pd.DataFrame,
    reference: str | None,
    caption: str,
    label: str,
    notation: Notation,
    alpha: float = 0.05,
    tied: set[tuple[str, float]] | None = None,
) -> Table:
    """Methods x label fractions of one protocol and metric; only methods (role ``method``)
    compete for bold: the (method, fraction) entries in ``tied`` (``summaries.tied_with_best``),
    or, without it, the best mean of each column."""
    fractions = sorted(entries["fraction"].unique())
    roles = entry_roles(entries)
    competing = entries["method"].map(lambda m: roles.get(m, "method") == "method")
    finished = entries[(entries["n"] > 0) & competing]
    best = finished.groupby("fraction")["mean"].max()
    tests = {(r.method, r.fraction): r for _, r in comparisons.iterrows()}
    rows = []
    for method in method_order(list(entries["method"]), reference, roles):
        cells = [notation.method(method, roles)]
        for fraction in fractions:
            found = entries[(entries["method"] == method) & (entries["fraction"] == fraction)]
            if found.empty:
                cells.append("–")
                continue
            row = found.iloc[0]
            leading = (
                (method, fraction) in tied
                if tied is not None
                else row["mean"] == best.get(fraction)
            )
            bold = competing[found.index[0]] and row["n"] > 0 and leading
            marks = significance_marks(tests.get((method, fraction)), alpha)
            cells.append(entry_text(row, bold, marks, notation))
        rows.append(cells)
    return Table(
        ["Method" if notation.latex else "method", *[f"{f:g}" for f in fractions]],
        rows,
        caption,
        label,
        group="label fraction" if notation.latex else "",
    )


def pathology_table(
    table: pd.DataFrame,
    reference: str | None,
    caption: str,
    label: str,
    notation: Notation,
    roles: dict[str, str] | None = None,
) -> Table:
    """Methods x findings at one protocol and fraction: ``AUPRC / recall`` (normal: specificity)."""
    findings = list(dict.fromkeys(table["finding"]))
    findings = [f for f in findings if f != "normal"] + (["normal"] if "normal" in findings else [])
    counts = table.groupby("finding")["volumes"].max()
    header = ["Method" if notation.latex else "method"]
    header += [
        f"{notation.name(f.replace('_', ' '))} (n={counts[f]})"
        if f != "normal"
        else f"normal: specificity (n={counts[f]})"
        for f in findings
    ]

    def entry(finding: str, row: pd.Series) -> str:
        if finding == "normal":
            return f"{row['recall_mean']:.2f}"
        return f"{row['auprc_mean']:.2f} / {row['recall_mean']:.2f}"

    rows = _method_rows(table, "finding", findings, entry, reference, roles or {}, notation)
    return Table(header, rows, caption, label)


def _method_rows(
    table: pd.DataFrame,
    column: str,
    values: list,
    entry: Callable[[Any, pd.Series], str],
    reference: str | None,
    roles: dict[str, str],
    notation: Notation,
) -> list[list[str]]:
    """One row per method of ``table`` (in ``method_order``), one entry per value of ``column``:
    ``entry(value, row)`` of the method's first row with that value, an en dash without one."""
    rows = []
    for method in method_order(list(table["method"]), reference, roles):
        cells = [notation.method(method, roles)]
        for value in values:
            found = table[(table["method"] == method) & (table[column] == value)]
            cells.append("–" if found.empty else entry(value, found.iloc[0]))
        rows.append(cells)
    return rows


def localisation_table(
    table: pd.DataFrame,
    reference: str | None,
    caption: str,
    label: str,
    notation: Notation,
    roles: dict[str, str] | None = None,
) -> Table:
    """Methods x fractions: ``voxel AUPRC / pointing-game hit rate`` (means over cells)."""
    overall = table[table["finding"] == "all"]
    fractions = sorted(overall["fraction"].unique())

    def entry(fraction: float, row: pd.Series) -> str:
        return f"{row['voxel_auprc_mean']:.3f} / {row['pointing_game_mean']:.2f}"

    rows = _method_rows(overall, "fraction", fractions, entry, reference, roles or {}, notation)
    return Table(
        ["Method" if notation.latex else "method", *[f"{f:g}" for f in fractions]],
        rows,
        caption,
        label,
        group="label fraction" if notation.latex else "",
    )


def markdown(table: Table) -> str:
    """A Markdown table followed by its caption."""
    lines = [
        "| " + " | ".join(table.header) + " |",
        "|---|" + "---|" * (len(table.header) - 1),
        *("| " + " | ".join(row) + " |" for row in table.rows),
        "",
        table.caption,
    ]
    return "\n".join(lines) + "\n"


def latex(table: Table) -> str:
    """A booktabs ``table`` environment with caption and label."""
    columns = len(table.header)
    heading = []
    if table.group:
        heading = [
            f" & \\multicolumn{{{columns - 1}}}{{c}}{{{table.group}}} \\\\",
            f"\\cmidrule(lr){{2-{columns}}}",
        ]
    return (
        "\n".join(
            [
                r"\begin{table}[t]",
                r"\centering",
                r"\caption{" + latex_escape(table.caption) + "}",
                r"\label{" + table.label + "}",
                f"\\begin{{tabular}}{{l{'c' * (columns - 1)}}}",
                r"\toprule",
                *heading,
                " & ".join(table.header) + r" \\",
                r"\midrule",
                *(" & ".join(row) + r" \\" for row in table.rows),
                r"\bottomrule",
                r"\end{tabular}",
                r"\end{table}",
            ]
        )
        + "\n"
    )


def budget_markdown(path: Path) -> str:
    """The Markdown table of ``OUT/tuning.json`` (written by ``ssl3d tune``) for the report."""
    records = json.loads(Path(path).read_text())["methods"]
    lines = [
        "| method | study | trials (complete / pruned / failed) | hours | device | "
        "best validation AUPRC | best settings |",
        "|---|---|---|---|---|---|---|",
    ]
    for record in records:
        if record.get("study") is None:
            lines.append(f"| {record['method']} | not tuned (defaults) | 0 | 0 | - | - | - |")
            continue
        settings = ", ".join(
            f"`{k.rsplit('.', 1)[-1]}`={_short(v)}" for k, v in record["best_params"].items()
        )
        best = record["best_value"]
        lines.append(
            f"| {record['method']} | {record['study']} | {record['complete']} / "
            f"{record['pruned']} / {record['failed']} | {record['hours']:.3f} | "
            f"{record['device']} | {'-' if best is None else f'{best:.3f}'} | {settings} |"
        )
    return "\n".join(lines) + "\n"


def pretraining_budget_markdown(records: list[dict[str, Any]]) -> str:
    """The Markdown table of the finished pretraining units' ``pretrain.json`` records: per
    method the units, the optimiser steps of one unit's training (the common budget: equal for
    every method) and the steps and seconds of each stage it built first (its extra cost)."""
    methods: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        methods.setdefault(str(record["config"]["method"]), []).append(record)
    lines = [
        "| method | units | optimiser steps per unit | seconds per unit | extra stages per unit |",
        "|---|---|---|---|---|",
    ]
    for method, units in sorted(methods.items()):
        steps = sorted({int(u["steps"]) for u in units if u.get("steps") is not None})
        seconds = sum(float(u.get("seconds", 0.0)) for u in units) / len(units)
        stages: dict[str, list[dict[str, Any]]] = {}
        for unit in units:
            for name, cost in (unit.get("stage_costs") or {}).items():
                stages.setdefault(name, []).append(cost)
        extra = "; ".join(
            f"{name}: {sum(c['optimiser_steps'] for c in costs) / len(costs):.0f} steps, "
            f"{sum(c['seconds'] for c in costs) / len(costs):.1f} s"
            for name, costs in stages.items()
        )
        shown = "-".join(map(str, (steps[0], steps[-1]) if len(steps) > 1 else steps)) or "?"
        lines.append(f"| {method} | {len(units)} | {shown} | {seconds:.1f} | {extra or 'none'} |")
    return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
