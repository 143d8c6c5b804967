"""Tables and figures from the cell files of a run (``ssl3d report OUT``).

Writes ``OUT/tables/auprc.{csv,md,tex}`` (methods x label fractions, mean ± std over folds and
seeds, best per column in bold) and ``OUT/figures/auprc_vs_fraction.png`` (one line per method
with its spread, the test prevalence, i.e. a random classifier's AUPRC, dashed). Failed cells are
counted and shown as failures, never as zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from benchmark.errors import UserError  # noqa: E402
from benchmark.results import cells_table  # noqa: E402

HEADLINE_PROTOCOL = "finetune"


class EmptyReportError(UserError):
    """A folder without any cell files."""


@dataclass
class Report:
    """What ``write_report`` produced."""

    summary: pd.DataFrame
    markdown: str
    files: list[Path]


def summarize(cells: pd.DataFrame, metric: str = "auprc") -> pd.DataFrame:
    """Per method and fraction: mean, std and number of finished cells, and failures."""
    finished = cells[cells["status"] == "done"]
    grouped = finished.groupby(["method", "fraction"])[metric]
    summary = grouped.agg(mean="mean", std="std", n="count").reset_index()
    failed = (
        cells[cells["status"] == "failed"].groupby(["method", "fraction"]).size().rename("failed")
    )
    summary = summary.merge(failed.reset_index(), on=["method", "fraction"], how="outer")
    summary["n"] = summary["n"].fillna(0).astype(int)
    summary["failed"] = summary["failed"].fillna(0).astype(int)
    return summary.sort_values(["method", "fraction"]).reset_index(drop=True)


def _cell_text(row: pd.Series, bold: bool, latex: bool) -> str:
    if row["n"] == 0:
        return "failed" if row["failed"] else "–"
    std = 0.0 if pd.isna(row["std"]) else row["std"]
    text = f"{row['mean']:.3f} $\\pm$ {std:.3f}" if latex else f"{row['mean']:.3f} ± {std:.3f}"
    if bold:
        text = f"\\textbf{{{text}}}" if latex else f"**{text}**"
    if row["failed"]:
        text += f" ({row['failed']} failed)"
    return text


def _wide(summary: pd.DataFrame, latex: bool) -> pd.DataFrame:
    best = summary.loc[summary["n"] > 0].groupby("fraction")["mean"].max()
    cells = summary.apply(
        lambda row: _cell_text(
            row, row["n"] > 0 and row["mean"] == best.get(row["fraction"]), latex
        ),
        axis=1,
    )
    wide = summary.assign(text=cells).pivot(index="method", columns="fraction", values="text")
    wide.columns = [f"{fraction:g}" for fraction in wide.columns]
    return wide.fillna("–")


def caption(cells: pd.DataFrame, metric: str) -> str:
    """States the protocol, the number of test volumes, the backbone and the profile."""
    done = cells[cells["status"] == "done"]
    backbones = ", ".join(sorted(done["backbone"].dropna().unique())) or "unknown backbone"
    profiles = ", ".join(sorted(done["profile"].dropna().unique())) or "unknown profile"
    folds, seeds = done["fold"].nunique(), done["seed"].nunique()
    prevalence = done["prevalence"].mean()
    return (
        f"{metric.upper()} (mean ± std over {folds} fold(s) x {seeds} seed(s)) of the "
        f"'{HEADLINE_PROTOCOL}' protocol by label fraction; backbone {backbones}; profile "
        f"{profiles}; test prevalence {prevalence:.2f} (the AUPRC of a random classifier)."
    )


def markdown_table(summary: pd.DataFrame, caption_text: str) -> str:
    wide = _wide(summary, latex=False)
    header = "| method | " + " | ".join(wide.columns) + " |"
    rule = "|---|" + "---|" * len(wide.columns)
    rows = [f"| {method} | " + " | ".join(row) + " |" for method, row in wide.iterrows()]
    return "\n".join([header, rule, *rows, "", caption_text]) + "\n"


def _latex_escape(text: str) -> str:
    return text.replace("_", r"\_").replace("±", r"$\pm$").replace("%", r"\%")


def latex_table(summary: pd.DataFrame, caption_text: str) -> str:
    """A booktabs table (methods x fractions), best per column in bold."""
    wide = _wide(summary, latex=True)
    columns = "l" + "c" * len(wide.columns)
    body = [
        f"{_latex_escape(method)} & " + " & ".join(row) + r" \\" for method, row in wide.iterrows()
    ]
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + _latex_escape(caption_text) + "}",
        f"\\begin{{tabular}}{{{columns}}}",
        "\\toprule",
        "Method & " + " & ".join(f"{c}" for c in wide.columns) + " \\\\",
        "\\midrule",
        *body,
        "\\bottomrule",
        "\\end{tabular}",
        "\\end{table}",
    ]
    return "\n".join(lines) + "\n"


def plot_metric_vs_fraction(
    summary: pd.DataFrame, prevalence: float, metric: str, path: Path
) -> None:
    """One line per method (mean) with a ± std band, and the random-classifier line."""
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    finished = summary[summary["n"] > 0]
    for method, rows in finished.groupby("method"):
        rows = rows.sort_values("fraction")
        std = rows["std"].fillna(0)
        (line,) = axis.plot(rows["fraction"], rows["mean"], marker="o", label=method)
        axis.fill_between(
            rows["fraction"],
            rows["mean"] - std,
            rows["mean"] + std,
            color=line.get_color(),
            alpha=0.15,
        )
    if metric == "auprc":
        axis.axhline(prevalence, color="grey", linestyle="--", label=f"random ({prevalence:.2f})")
    axis.set_xlabel("fraction of the labelled training set")
    axis.set_ylabel(metric.upper())
    axis.set_xscale("log")
    fractions = sorted(finished["fraction"].unique())
    axis.set_xticks(fractions, [f"{f:g}" for f in fractions])
    axis.minorticks_off()
    axis.set_ylim(top=1.02)
    axis.legend(fontsize=8, ncol=2)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    plt.close(figure)


def write_report(out: Path, metric: str = "auprc") -> Report:
    """Write the tables and the figure of ``out``; returns the summary and the Markdown."""
    out = Path(out)
    cells = cells_table(out)
    if cells.empty:
        raise EmptyReportError(
            f"{out} holds no cell files under cells/; run `ssl3d run --out {out}` first"
        )
    cells = cells[cells["protocol"] == HEADLINE_PROTOCOL]
    summary = summarize(cells, metric)
    text = caption(cells, metric)
    tables, figures = out / "tables", out / "figures"
    tables.mkdir(parents=True, exist_ok=True)
    files = [
        tables / f"{metric}.csv",
        tables / f"{metric}.md",
        tables / f"{metric}.tex",
        figures / f"{metric}_vs_fraction.png",
    ]
    summary.to_csv(files[0], index=False, float_format="%.6g")
    markdown = markdown_table(summary, text)
    files[1].write_text(markdown)
    files[2].write_text(latex_table(summary, text))
    prevalence = float(cells.loc[cells["status"] == "done", "prevalence"].mean())
    plot_metric_vs_fraction(summary, prevalence, metric, files[3])
    return Report(summary, markdown, files)
