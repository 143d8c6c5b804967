"""What a run can conclude, in words: the section ``report.md`` opens with.

A benchmark that cannot detect a difference it knows is there cannot rank methods either. The
known difference is the positive control: ``supervised`` (pretrained on the labels, role
``positive_control``) against ``scratch`` (no pretraining) at the smallest label fraction, where
pretraining matters most. Per protocol the verdict gives

- the positive control's effect, its CI and whether the paired test detects it (a family of
  one pre-specified comparison per protocol, ``summaries.paired_comparisons``); a run without
  ``supervised`` or ``scratch`` says the control is absent, and one that does not detect it says
  plainly that it cannot rank methods;
- the median minimum detectable difference of the comparisons with the reference;
- every significant difference from the reference (method, fraction, effect with its CI);
- for a run with one pretraining seed, that pretraining variation was not sampled.
"""

from __future__ import annotations

import pandas as pd

from benchmark.reporting.summaries import (
    Bootstrap,
    method_roles,
    paired_comparisons,
    pretraining_seeds,
)

POSITIVE_CONTROL = ("supervised", "scratch")


def positive_control(
    cells: pd.DataFrame,
    metric: str,
    bootstrap: Bootstrap | None,
    alpha: float = 0.05,
    level: float = 0.95,
) -> pd.DataFrame:
    """``supervised`` vs ``scratch`` at the smallest fraction both finished, per protocol
    (``paired_comparisons`` rows; empty when either is absent)."""
    done = cells[(cells["status"] == "done") & cells["method"].isin(POSITIVE_CONTROL)]
    rows = []
    for _, group in done.groupby("protocol", sort=False):
        both = group.groupby("fraction")["method"].nunique()
        shared = both[both == len(POSITIVE_CONTROL)].index
        if len(shared):
            smallest = group[group["fraction"] == shared.min()]
            rows.append(
                paired_comparisons(smallest, metric, [POSITIVE_CONTROL], bootstrap, alpha, level)
            )
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def _effect(row: pd.Series, level: float) -> str:
    return f"{row['diff']:+.3f} [{level:.0%} CI {row['diff_low']:+.3f}, {row['diff_high']:+.3f}]"


def verdict_markdown(
    cells: pd.DataFrame,
    metric: str,
    control: pd.DataFrame,
    tests: pd.DataFrame,
    protocols: list[str],
    reference: str | None,
    alpha: float = 0.05,
    level: float = 0.95,
) -> str:
    """The "What this run can conclude" section (see the module docstring); ``control``:
    ``positive_control``'s rows, ``tests``: ``comparisons`` against ``reference``."""
    name = metric.upper()
    roles = method_roles(cells)
    lines = ["## What this run can conclude", ""]
    detected_anywhere = False
    for protocol in protocols:
        found = control[control["protocol"] == protocol] if len(control) else control
        if found.empty:
            absent = [m for m in POSITIVE_CONTROL if m not in set(_finished(cells, protocol))]
            lines.append(
                f"- {protocol}: **positive control absent** ("
                + (f"no finished {' or '.join(absent)} cells" if absent else "no shared fraction")
                + "): nothing shows that this run could detect a known difference."
            )
            continue
        row = found.iloc[0]
        detected = bool(row["significant"])
        detected_anywhere |= detected
        where = f"{protocol}, fraction {row['fraction']:g}"
        if pd.isna(row["p"]):
            outcome = "**not testable** (training variation cannot be estimated)"
        else:
            outcome = f"**{'detected' if detected else 'not detected'}** (p = {row['p']:.3g})"
        text = (
            f"- {where}: positive control {outcome}: supervised − scratch {name} "
            f"{_effect(row, level)}"
        )
        if not detected:
            text += (
                f". This run cannot rank methods in the {protocol} protocol: it did not detect "
                "a difference known to exist"
            )
        lines.append(text + ".")
    tested = tests[tests["pairs"] > 0] if len(tests) else tests
    for protocol in protocols:
        mdd = tested.loc[tested["protocol"] == protocol, "mdd"].dropna() if len(tested) else []
        if len(mdd):
            lines.append(
                f"- {protocol}: the smallest {name} difference from {reference} this run could "
                f"detect (80 % power, median over the comparisons) is {mdd.median():.3f}."
            )
    significant = tested[tested["significant"]] if len(tested) else tested
    if reference is None:
        lines.append("- No reference method finished: no differences were tested.")
    elif significant.empty:
        lines.append(
            f"- No method differs significantly from {reference} (Holm-adjusted p < {alpha:g} "
            "per protocol and fraction); differences below the MDD were not detectable."
        )
    else:
        lines.append(f"- Significant differences from {reference} (Holm p < {alpha:g}):")
        for _, row in significant.iterrows():
            role = roles.get(row["method"], "method")
            what = f" ({role.replace('_', ' ')})" if role != "method" else ""
            lines.append(
                f"  - {row['method']}{what}, {row['protocol']}, fraction {row['fraction']:g}: "
                f"{_effect(row, level)}"
            )
        if not detected_anywhere:
            lines.append(
                "  These are not rankings: the positive control was not detected in any protocol."
            )
    done = cells[cells["status"] == "done"]
    if len(done) and pretraining_seeds(done).nunique() == 1:
        lines.append(
            "- One pretraining seed: pretraining variation was not sampled, so every difference "
            "above may be the luck of a single pretraining run."
        )
    return "\n".join(lines) + "\n"


def _finished(cells: pd.DataFrame, protocol: str) -> list[str]:
    done = cells[(cells["status"] == "done") & (cells["protocol"] == protocol)]
    return list(done["method"].unique())
