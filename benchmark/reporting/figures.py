"""Report figures: metric vs label fraction, PR curves, pretraining losses, a one-page summary.

Every method keeps one colour in every figure (``scratch``, the floor, is grey). A positive
control and a baseline (``SSLMethod.role``, recorded in the cell files) are drawn dashed or
hatched and named so in the legends (``legend_name``). Each drawing function draws into given
axes, so the one-page summary reuses them; the ``plot_*`` functions
write a figure file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import precision_recall_curve  # noqa: E402

from benchmark.reporting.summaries import FixedTestSet  # noqa: E402

LABELS = {"auprc": "AUPRC", "auroc": "AUROC", "f1": "F1"}
RECALL_GRID = np.linspace(0, 1, 201)
plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8})


def method_colours(methods: list[str]) -> dict[str, tuple]:
    """A fixed colour per method (alphabetical order into tab10/tab20; scratch grey)."""
    others = sorted(m for m in set(methods) if m != "scratch")
    palette = plt.get_cmap("tab10" if len(others) <= 10 else "tab20")
    colours = {m: palette(i % palette.N) for i, m in enumerate(others)}
    colours["scratch"] = (0.35, 0.35, 0.35, 1.0)
    return colours


def legend_name(method: str, role: str | None) -> str:
    """``supervised (positive control)``, ``intensity_features (baseline)``; a method's name."""
    marked = role is not None and role != "method"
    return f"{method} ({role.replace('_', ' ')})" if marked else method


def chance_level(metric: str, prevalence: float) -> tuple[float, str] | None:
    """The score of a classifier without skill, and its legend label."""
    if not np.isfinite(prevalence):
        return None
    if metric == "auprc":
        return prevalence, f"random ({prevalence:.2f})"
    if metric == "auroc":
        return 0.5, "random (0.50)"
    f1 = 2 * prevalence / (1 + prevalence)
    return f1, f"all anomalous ({f1:.2f})"


def draw_metric_vs_fraction(
    axis: Axes,
    entries: pd.DataFrame,
    metric: str,
    colours: dict[str, tuple],
    title: str,
) -> None:
    """One line per method (mean over cells) with its 95 % CI band (± std without one)."""
    finished = entries[entries["n"] > 0]
    for method, rows in finished.groupby("method"):
        rows = rows.sort_values("fraction")
        has_ci = rows["ci_low"].notna().all()
        low = rows["ci_low"] if has_ci else rows["mean"] - rows["std"].fillna(0)
        high = rows["ci_high"] if has_ci else rows["mean"] + rows["std"].fillna(0)
        colour = colours[method]
        role = rows["role"].iloc[0] if "role" in rows else None
        axis.plot(
            rows["fraction"],
            rows["mean"],
            marker="o",
            ms=4,
            color=colour,
            ls="-" if legend_name(method, role) == method else "--",
            label=legend_name(method, role),
        )
        axis.fill_between(rows["fraction"], low, high, color=colour, alpha=0.12, lw=0)
    chance = chance_level(metric, finished["prevalence"].mean())
    if chance:
        axis.axhline(chance[0], color="black", ls="--", lw=1, label=chance[1])
    fractions = sorted(entries["fraction"].unique())
    axis.set_xscale("log")
    axis.set_xticks(fractions, [f"{f:g}" for f in fractions])
    axis.minorticks_off()
    axis.set_xlabel("label fraction (of the training set)")
    axis.set_ylabel(LABELS[metric])
    axis.set_ylim(top=1.02)
    axis.grid(alpha=0.3)
    axis.set_title(title)


def step_precision(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Precision on ``RECALL_GRID`` as the step curve whose area is the average precision."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    precision, recall = precision[::-1], recall[::-1]  # recall increasing
    index = np.searchsorted(recall, RECALL_GRID, side="left").clip(max=len(recall) - 1)
    return precision[index]


def draw_pr_curves(
    axis: Axes,
    records: dict[tuple, dict],
    test_set: FixedTestSet,
    protocol: str,
    fraction: float,
    colours: dict[str, tuple],
    title: str,
) -> None:
    """Per method: the mean over its cells of each cell's PR step curve (area = mean AP)."""
    labels = test_set.volumes["label"].to_numpy()
    curves: dict[str, list[np.ndarray]] = {}
    roles: dict[str, str | None] = {}
    for (method, cell_protocol, cell_fraction, _, _), record in sorted(records.items()):
        if cell_protocol != protocol or cell_fraction != fraction:
            continue
        roles[method] = record.get("role")
        scores, present = test_set.align(record)
        if present.any() and 0 < labels[present].sum() < present.sum():
            curves.setdefault(method, []).append(step_precision(labels[present], scores[present]))
    for method, method_curves in curves.items():
        mean = np.mean(method_curves, axis=0)
        area = float(np.sum(np.diff(RECALL_GRID) * mean[1:]))
        name = legend_name(method, roles[method])
        axis.plot(
            RECALL_GRID,
            mean,
            color=colours[method],
            lw=1.5,
            ls="-" if name == method else "--",
            label=f"{name} (AP {area:.2f}, {len(method_curves)} cells)",
        )
    prevalence = labels.mean()
    axis.axhline(prevalence, color="black", ls="--", lw=1, label=f"random ({prevalence:.2f})")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.grid(alpha=0.3)
    axis.set_title(title)


def loss_tables(out: Path) -> dict[str, list[pd.DataFrame]]:
    """Every ``pretrain/<method>[/seed<s>/fold<k>]/losses.csv`` of a run, by method."""
    tables: dict[str, list[pd.DataFrame]] = {}
    for path in sorted((Path(out) / "pretrain").glob("*/**/losses.csv")):
        table = pd.read_csv(path)
        if len(table) and "train_loss" in table:
            method = path.relative_to(Path(out) / "pretrain").parts[0]
            tables.setdefault(method, []).append(table)
    return tables


def draw_losses(axis: Axes, tables: list[pd.DataFrame], colour: tuple, title: str) -> None:
    """Training (solid) and validation (dashed) loss per epoch; one line pair per unit."""
    for index, table in enumerate(tables):
        first = index == 0
        axis.plot(
            table["epoch"] + 1,
            table["train_loss"],
            color=colour,
            marker=".",
            label="train" if first else None,
            alpha=0.9 if first else 0.5,
        )
        if "val_loss" in table and table["val_loss"].notna().any():
            axis.plot(
                table["epoch"] + 1,
                table["val_loss"],
                color=colour,
                ls="--",
                marker=".",
                label="validation" if first else None,
                alpha=0.9 if first else 0.5,
            )
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel("loss")
    axis.grid(alpha=0.3)
    axis.set_title(title)
    axis.legend()


def _legend_below(figure: Figure, axes: list[Axes]) -> None:
    handles, labels = {}, []
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    figure.tight_layout()
    figure.legend(
        [handles[label] for label in labels],
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(len(labels), 6),
        frameon=False,
    )


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(figure)
    return path


def _panels(count: int, width: float = 4.2, height: float = 3.6) -> tuple[Figure, list[Axes]]:
    figure, axes = plt.subplots(1, count, figsize=(width * count, height), squeeze=False)
    return figure, list(axes[0])


def plot_metric_vs_fraction(
    entries: pd.DataFrame,
    metric: str,
    protocols: list[str],
    colours: dict[str, tuple],
    path: Path,
) -> Path:
    """One panel per protocol, methods as lines with CI bands, the chance level dashed."""
    figure, axes = _panels(len(protocols))
    for axis, protocol in zip(axes, protocols, strict=True):
        rows = entries[entries["protocol"] == protocol]
        draw_metric_vs_fraction(axis, rows, metric, colours, f"{protocol}")
    for axis in axes[1:]:
        axis.sharey(axes[0])
    _legend_below(figure, axes)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(figure)
    return path


def plot_pr_curves(
    records: dict[tuple, dict],
    test_set: FixedTestSet,
    protocols: list[str],
    fraction: float,
    colours: dict[str, tuple],
    path: Path,
) -> Path:
    """One panel per protocol: PR curves of every method at one label fraction."""
    figure, axes = _panels(len(protocols), height=4.0)
    for axis, protocol in zip(axes, protocols, strict=True):
        draw_pr_curves(
            axis,
            records,
            test_set,
            protocol,
            fraction,
            colours,
            f"{protocol}, label fraction {fraction:g}",
        )
        axis.legend(loc="lower left")
    return _save(figure, path)


def plot_losses(
    tables: dict[str, list[pd.DataFrame]], colours: dict[str, tuple], path: Path
) -> Path:
    """One panel per pretrained method (the loss scales of methods differ)."""
    methods = sorted(tables)
    columns = min(len(methods), 4)
    rows = -(-len(methods) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), squeeze=False)
    for axis, method in zip(axes.flat, methods, strict=False):
        draw_losses(axis, tables[method], colours.get(method, "C0"), method)
    for axis in list(axes.flat)[len(methods) :]:
        axis.set_visible(False)
    return _save(figure, path)


def summary_page(
    title: str,
    subtitle: str,
    panels: list[tuple[str, Callable[[Axes], None]]],
    paths: list[Path],
) -> list[Path]:
    """A 16:9 page of up to six panels (title, drawing function) with a heading."""
    figure, axes = plt.subplots(2, 3, figsize=(13.33, 7.5))
    for axis, (panel_title, draw) in zip(axes.flat, panels, strict=False):
        draw(axis)
        axis.set_title(panel_title, loc="left", fontweight="bold")
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    figure.suptitle(title, x=0.01, ha="left", fontsize=13, fontweight="bold")
    figure.text(0.01, 0.935, subtitle, ha="left", fontsize=8.5, color="0.3")
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=150)
    plt.close(figure)
    return paths


def draw_note(axis: Axes, text: str) -> None:
    """A panel that says why its content is absent."""
    axis.axis("off")
    axis.text(
        0.5,
        0.5,
        text,
        ha="center",
        va="center",
        wrap=True,
        fontsize=9,
        color="0.3",
        transform=axis.transAxes,
    )


def _grouped_bars(
    axis: Axes,
    groups: list[str],
    series: list[str],
    value: Callable[[str, str], tuple[float, float, float] | None],
    colours: dict[str, tuple],
    roles: dict[str, str] | None = None,
) -> None:
    """Bars for every (group, series) with optional error bars; ``value`` -> (y, low, high).
    Series with a marked role (``roles``) are hatched and named so."""
    width = 0.8 / max(len(series), 1)
    roles = roles or {}
    for index, name in enumerate(series):
        label = legend_name(name, roles.get(name))
        for position, group in enumerate(groups):
            found = value(group, name)
            if found is None or not np.isfinite(found[0]):
                continue
            y, low, high = found
            x = position - 0.4 + width * (index + 0.5)
            axis.bar(
                x,
                y,
                width * 0.9,
                color=colours[name],
                hatch=None if label == name else "//",
                label=label if position == 0 else None,
            )
            if np.isfinite(low) and np.isfinite(high):
                axis.errorbar(x, y, yerr=[[y - low], [high - y]], color="black", lw=0.8, capsize=2)
    axis.set_xticks(range(len(groups)), groups)
    axis.grid(axis="y", alpha=0.3)


def draw_protocol_bars(
    axis: Axes,
    entries: pd.DataFrame,
    marks: dict[tuple[str, str], str],
    protocols: list[str],
    methods: list[str],
    metric: str,
    colours: dict[str, tuple],
) -> None:
    """A metric at one fraction: protocols as groups, methods as bars with 95 % CIs and the
    significance marks against the reference above them."""

    def value(protocol: str, method: str):
        found = entries[(entries["protocol"] == protocol) & (entries["method"] == method)]
        if found.empty or found.iloc[0]["n"] == 0:
            return None
        row = found.iloc[0]
        return row["mean"], row["ci_low"], row["ci_high"]

    roles = dict(zip(entries["method"], entries["role"])) if "role" in entries else {}
    _grouped_bars(axis, protocols, methods, value, colours, roles)
    width = 0.8 / max(len(methods), 1)
    for (protocol, method), mark in marks.items():
        found = value(protocol, method)
        if mark and found and protocol in protocols and method in methods:
            x = protocols.index(protocol) - 0.4 + width * (methods.index(method) + 0.5)
            top = found[2] if np.isfinite(found[2]) else found[0]
            axis.text(x, top + 0.01, mark, ha="center", va="bottom", fontsize=8)
    chance = chance_level(metric, entries["prevalence"].mean())
    if chance:
        axis.axhline(chance[0], color="black", ls="--", lw=1)
    axis.set_ylim(0, 1.08)
    axis.set_ylabel(LABELS[metric])


def draw_finding_recall(
    axis: Axes,
    table: pd.DataFrame,
    methods: list[str],
    colours: dict[str, tuple],
    roles: dict[str, str] | None = None,
) -> None:
    """Share of each finding's volumes called anomalous (normal: called normal), per method."""
    findings = [f for f in dict.fromkeys(table["finding"]) if f != "normal"]
    findings += ["normal"] if "normal" in set(table["finding"]) else []

    def value(finding: str, method: str):
        found = table[(table["finding"] == finding) & (table["method"] == method)]
        if found.empty:
            return None
        row = found.iloc[0]
        return row["recall_mean"], row["recall_ci_low"], row["recall_ci_high"]

    _grouped_bars(axis, findings, methods, value, colours, roles)
    counts = table.groupby("finding")["volumes"].max()
    labels = [f"{f.replace('_', ' ')}\n(n={counts[f]})" for f in findings]
    labels = [label.replace("normal\n(", "normal\n(specificity, ") for label in labels]
    axis.set_xticks(range(len(findings)), labels, fontsize=7.5)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("recall at the validation threshold")


def draw_localisation(
    axis: Axes,
    table: pd.DataFrame,
    methods: list[str],
    colours: dict[str, tuple],
    roles: dict[str, str] | None = None,
) -> None:
    """Voxel AUPRC and pointing-game hit rate per method, with the chance level."""
    measures = {"voxel AUPRC": "voxel_auprc", "pointing game": "pointing_game"}

    def value(measure: str, method: str):
        found = table[table["method"] == method]
        if found.empty:
            return None
        row = found.iloc[0]
        column = measures[measure]
        mean, std = row[f"{column}_mean"], row[f"{column}_std"]
        std = std if np.isfinite(std) else 0.0
        return mean, mean - std, mean + std

    _grouped_bars(axis, list(measures), methods, value, colours, roles)
    chance = table["chance"].mean()
    axis.axhline(chance, color="black", ls="--", lw=1, label=f"chance ({chance:.3f})")
    axis.set_ylabel("score (mean ± std over cells)")
    axis.legend(loc="upper right", fontsize=7)


def _first_to_lowest(losses: np.ndarray) -> np.ndarray:
    span = losses[0] - losses.min()
    return (losses - losses.min()) / span if span > 0 else np.ones_like(losses)


def draw_relative_losses(
    axis: Axes, tables: dict[str, list[pd.DataFrame]], colours: dict[str, tuple]
) -> None:
    """Each method's training loss rescaled so its first epoch is 1 and its lowest epoch 0
    (mean over its units): losses of different methods, some negative (a negative cosine),
    share one axis and show how far and how fast each fell."""
    for method, method_tables in sorted(tables.items()):
        curves = [_first_to_lowest(t["train_loss"].to_numpy()) for t in method_tables]
        length = min(map(len, curves))
        mean = np.mean([c[:length] for c in curves], axis=0)
        axis.plot(
            np.arange(1, length + 1),
            mean,
            marker=".",
            color=colours.get(method, "C0"),
            label=method,
        )
    axis.axhline(0.0, color="black", lw=0.8, ls=":")
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel("training loss (first epoch 1, lowest 0)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
