"""Report figures: metric vs label fraction, PR curves, pretraining losses, a one-page summary.

Every figure is drawn with seaborn in one theme, and every method keeps its style
(``theme.method_styles``: colour, marker, dashes; ``scratch`` grey; a positive control dashed,
a baseline dotted, their bars hatched) in every figure. Each drawing function draws into given
axes, so the one-page summary reuses them; the ``plot_*`` functions write a figure file. With
more than ``CROWDED`` methods, the metric-vs-fraction figures become small multiples (one row per
method, against the reference) and the summary highlights the reference, the best few methods
and the controls, with the others in light grey (``highlighted_methods``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import precision_recall_curve  # noqa: E402

from benchmark.reporting.summaries import FixedTestSet  # noqa: E402
from benchmark.reporting.theme import MethodStyle, muted, set_theme  # noqa: E402

LABELS = {"auprc": "AUPRC", "auroc": "AUROC", "f1": "F1"}
RECALL_GRID = np.linspace(0, 1, 201)
CROWDED = 6  # more methods than this on one panel: small multiples or highlights
BEST_FEW = 3  # methods highlighted beside the reference and the controls
PROTOCOL_MARKERS = ["o", "s", "^", "D"]
Styles = dict[str, MethodStyle]
set_theme()


def highlighted_methods(
    entries: pd.DataFrame, reference: str | None, roles: dict[str, str], count: int = BEST_FEW
) -> list[str]:
    """The reference, the ``count`` methods with the highest mean in ``entries`` (one protocol,
    one fraction) and every positive control and baseline; all methods when they are few."""
    methods = list(dict.fromkeys(entries["method"]))
    if len(methods) <= CROWDED:
        return methods
    finished = entries[entries["n"] > 0]
    competing = finished[
        (finished["method"] != reference)
        & (finished["method"].map(lambda m: roles.get(m, "method")) == "method")
    ]
    best = list(competing.sort_values("mean", ascending=False)["method"][:count])
    marked = [m for m in methods if roles.get(m, "method") != "method"]
    return [m for m in methods if m == reference or m in best or m in marked]


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


def _drop_seaborn_legend(axis: Axes) -> None:
    """seaborn puts a legend on each axis; the callers place one per figure or panel."""
    if axis.get_legend() is not None:
        axis.get_legend().remove()


def _draw_muted(axis: Axes, x: pd.Series, y: pd.Series, style: MethodStyle) -> None:
    axis.plot(x, y, color=style.colour, lw=0.8, zorder=1)


def _other_methods_entry(axis: Axes, styles: Styles) -> None:
    """One legend entry for the methods drawn light grey."""
    muted_style = next((s for s in styles.values() if not s.highlighted), None)
    if muted_style is not None:
        axis.plot([], [], color=muted_style.colour, lw=0.8, label="other methods")


def _lines(
    axis: Axes,
    frame: pd.DataFrame,
    x: str,
    y: str,
    styles: Styles,
    names: dict[str, str] | None = None,
    **line: object,
) -> None:
    """``frame``'s ``y`` against ``x``, one line per ``method`` in its style (``sns.lineplot``,
    legend entries ``names`` or the styles' labels); muted methods thin and grey, behind."""
    for method, rows in frame.groupby("method"):
        if not styles[method].highlighted:
            _draw_muted(axis, rows[x], rows[y], styles[method])
    shown = frame[frame["method"].map(lambda m: styles[m].highlighted)]
    if shown.empty:
        return
    names = {m: (names or {}).get(m, s.label) for m, s in styles.items() if s.highlighted}
    order = [names[m] for m in styles if m in set(shown["method"])]
    by_name = {names[m]: styles[m] for m in styles if m in set(shown["method"])}
    sns.lineplot(
        data=shown.assign(name=shown["method"].map(names)),
        x=x,
        y=y,
        hue="name",
        style="name",
        hue_order=order,
        style_order=order,
        palette={name: s.colour for name, s in by_name.items()},
        markers={name: s.marker for name, s in by_name.items()},
        dashes={name: s.dashes or "" for name, s in by_name.items()},
        errorbar=None,
        estimator=None,
        sort=False,
        ax=axis,
        **line,
    )
    _drop_seaborn_legend(axis)


def draw_metric_vs_fraction(
    axis: Axes, entries: pd.DataFrame, metric: str, styles: Styles, title: str
) -> None:
    """One line per method (mean over cells) with its 95 % CI band (± std without one);
    methods not highlighted (``theme.muted``) as thin grey lines without a band."""
    finished = entries[entries["n"] > 0].sort_values("fraction")
    _lines(axis, finished, "fraction", "mean", styles, markersize=5)
    for method, rows in finished.groupby("method"):
        if not styles[method].highlighted:
            continue
        has_ci = rows["ci_low"].notna().all()
        low = rows["ci_low"] if has_ci else rows["mean"] - rows["std"].fillna(0)
        high = rows["ci_high"] if has_ci else rows["mean"] + rows["std"].fillna(0)
        axis.fill_between(
            rows["fraction"], low, high, color=styles[method].colour, alpha=0.15, lw=0
        )
    _other_methods_entry(axis, styles)
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
    styles: Styles,
    title: str,
) -> None:
    """Per method: the mean over its cells of each cell's PR step curve (area = mean AP)."""
    labels = test_set.volumes["label"].to_numpy()
    curves: dict[str, list[np.ndarray]] = {}
    for (method, cell_protocol, cell_fraction, _, _), record in sorted(records.items()):
        if cell_protocol != protocol or cell_fraction != fraction:
            continue
        scores, present = test_set.align(record)
        if present.any() and 0 < labels[present].sum() < present.sum():
            curves.setdefault(method, []).append(step_precision(labels[present], scores[present]))
    frames, names = [], {}
    for method, method_curves in curves.items():
        mean = np.mean(method_curves, axis=0)
        area = float(np.sum(np.diff(RECALL_GRID) * mean[1:]))
        names[method] = f"{styles[method].label} (AP {area:.2f}, {len(method_curves)} cells)"
        frames.append(pd.DataFrame({"method": method, "recall": RECALL_GRID, "precision": mean}))
    if frames:
        frame = pd.concat(frames, ignore_index=True)
        _lines(axis, frame, "recall", "precision", styles, names, markevery=40, markersize=4)
    _other_methods_entry(axis, styles)
    prevalence = labels.mean()
    axis.axhline(prevalence, color="black", ls="--", lw=1, label=f"random ({prevalence:.2f})")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_title(title)


def loss_tables(out: Path) -> dict[str, list[pd.DataFrame]]:
    """Every ``pretrain/<method>[/seed<s>/fold<k>]/losses.csv`` of a run, by method."""
    tables: dict[str, list[pd.DataFrame]] = {}
    for path in sorted((Path(out) / "pretrain").glob("*/**/losses.csv")):
        table = pd.read_csv(path)
        if len(table) and "train_loss" in table and table["train_loss"].notna().any():
            method = path.relative_to(Path(out) / "pretrain").parts[0]
            tables.setdefault(method, []).append(table)
    return tables


def _long_losses(tables: dict[str, list[pd.DataFrame]]) -> pd.DataFrame:
    """method, unit, epoch (from 1), split (train / validation), loss: one row per logged loss."""
    frames = []
    for method, method_tables in tables.items():
        for unit, table in enumerate(method_tables):
            for split, column in (("train", "train_loss"), ("validation", "val_loss")):
                if column in table and table[column].notna().any():
                    frames.append(
                        pd.DataFrame(
                            {
                                "method": method,
                                "unit": unit,
                                "epoch": table["epoch"] + 1,
                                "split": split,
                                "loss": table[column],
                            }
                        )
                    )
    return pd.concat(frames, ignore_index=True)


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
        ncol=min(len(labels), 5),
        frameon=False,
    )


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
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
    methods: list[str],
    reference: str | None,
    styles: Styles,
    path: Path,
) -> Path:
    """One panel per protocol with every method's line and CI band; with more than ``CROWDED``
    methods, small multiples: a row per method (``methods`` order), each panel that method and
    the reference with their bands over the other methods in light grey."""
    if len(methods) <= CROWDED:
        figure, axes = _panels(len(protocols))
        for axis, protocol in zip(axes, protocols, strict=True):
            rows = entries[entries["protocol"] == protocol]
            draw_metric_vs_fraction(axis, rows, metric, styles, protocol)
        for axis in axes[1:]:
            axis.sharey(axes[0])
        _legend_below(figure, axes)
        return _save(figure, path)
    rows = [m for m in methods if m != reference]
    grid = sns.FacetGrid(
        pd.DataFrame({"method": rows}).merge(pd.DataFrame({"protocol": protocols}), how="cross"),
        row="method",
        col="protocol",
        row_order=rows,
        col_order=protocols,
        height=1.8,
        aspect=1.5,
        sharey=True,
        margin_titles=True,
    )
    for (method, protocol), axis in grid.axes_dict.items():
        shown = muted(styles, [method, reference])
        draw_metric_vs_fraction(axis, entries[entries["protocol"] == protocol], metric, shown, "")
        axis.set_ylabel(styles[method].label if protocol == protocols[0] else "", fontsize=7.5)
    grid.set_titles(col_template="{col_name}", row_template="")
    grid.set_xlabels("label fraction")
    grid.figure.suptitle(
        f"{LABELS[metric]} vs label fraction: each method against {reference or 'the others'}",
        y=1.0,
    )
    _legend_below(grid.figure, list(grid.axes.flat))
    return _save(grid.figure, path)


def plot_pr_curves(
    records: dict[tuple, dict],
    test_set: FixedTestSet,
    protocols: list[str],
    fraction: float,
    styles: Styles,
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
            styles,
            f"{protocol}, label fraction {fraction:g}",
        )
        axis.legend(loc="lower left", fontsize=6 if len(styles) > CROWDED else 7.5)
    figure.tight_layout()
    return _save(figure, path)


def plot_losses(tables: dict[str, list[pd.DataFrame]], styles: Styles, path: Path) -> Path:
    """Small multiples, one panel per pretrained method (the loss scales of methods differ):
    training (solid) and validation (dashed) loss per epoch, one line pair per unit."""
    losses = _long_losses(tables)
    losses["name"] = losses["method"].map(lambda m: styles[m].label if m in styles else m)
    order = [styles[m].label if m in styles else m for m in sorted(tables)]
    grid = sns.relplot(
        data=losses,
        kind="line",
        x="epoch",
        y="loss",
        col="name",
        col_order=order,
        col_wrap=min(len(order), 4),
        hue="name",
        hue_order=order,
        palette={
            name: styles[m].colour if m in styles else "C0"
            for m, name in zip(sorted(tables), order, strict=True)
        },
        style="split",
        style_order=["train", "validation"],
        units="unit",
        estimator=None,
        marker=".",
        height=2.8,
        aspect=1.25,
        facet_kws={"sharey": False, "sharex": False},
        legend=False,
    )
    grid.set_titles("{col_name}")
    for axis in grid.axes.flat:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    grid.axes.flat[0].legend(
        handles=[
            Line2D([], [], color="0.3", marker=".", label="train"),
            Line2D([], [], color="0.3", marker=".", ls="--", label="validation"),
        ]
    )
    return _save(grid.figure, path)


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
    methods: list[str],
    value: Callable[[str, str], tuple[float, float, float] | None],
    styles: Styles,
) -> None:
    """Bars for every (group, method) with optional error bars (``sns.barplot``); ``value`` ->
    (y, low, high). Methods with a marked role are hatched and named so."""
    rows = [
        (group, styles[method].label, *found)
        for method in methods
        for group in groups
        if (found := value(group, method)) is not None and np.isfinite(found[0])
    ]
    if not rows:
        return
    bars = pd.DataFrame(rows, columns=["group", "name", "y", "low", "high"])
    shown = [m for m in methods if styles[m].label in set(bars["name"])]
    sns.barplot(
        data=bars,
        x="group",
        y="y",
        hue="name",
        order=groups,
        hue_order=[styles[m].label for m in shown],
        palette={styles[m].label: styles[m].colour for m in shown},
        errorbar=None,
        width=0.8,
        ax=axis,
    )
    _drop_seaborn_legend(axis)
    bar_containers = list(axis.containers)  # before the error bars add theirs
    for method, container in zip(shown, bar_containers, strict=True):
        for patch in container.patches:
            patch.set_hatch(styles[method].hatch)
            patch.set_edgecolor("white" if styles[method].hatch is None else "0.2")
            x = patch.get_x() + patch.get_width() / 2
            group = groups[int(round(x))]
            row = bars[(bars["group"] == group) & (bars["name"] == styles[method].label)].iloc[0]
            if np.isfinite(row["low"]) and np.isfinite(row["high"]):
                axis.errorbar(
                    x,
                    row["y"],
                    yerr=[[row["y"] - row["low"]], [row["high"] - row["y"]]],
                    color="black",
                    lw=0.8,
                    capsize=2,
                )
    axis.set_xlabel("")


def draw_ranking(
    axis: Axes,
    entries: pd.DataFrame,
    marks: dict[tuple[str, str], str],
    protocols: list[str],
    headline: str,
    metric: str,
    styles: Styles,
    highlighted: list[str],
) -> None:
    """Every method ranked by its mean in the ``headline`` protocol (best on top), one point
    with its 95 % CI per protocol (a marker each) and the significance marks against the
    reference beside it; the highlighted methods' names in their colour."""
    top = entries[entries["protocol"] == headline].sort_values("mean", ascending=False)
    order = list(dict.fromkeys([*top["method"], *entries["method"]]))
    offsets = np.linspace(-0.25, 0.25, len(protocols)) if len(protocols) > 1 else [0.0]
    shades = sns.color_palette("dark:0.7", len(protocols) + 1)[: len(protocols)]
    for index, protocol in enumerate(protocols):
        rows = entries[(entries["protocol"] == protocol) & (entries["n"] > 0)]
        y = rows["method"].map(order.index).to_numpy() + offsets[index]
        low = (rows["mean"] - rows["ci_low"]).fillna(0).to_numpy()
        high = (rows["ci_high"] - rows["mean"]).fillna(0).to_numpy()
        axis.errorbar(
            rows["mean"],
            y,
            xerr=[low, high],
            fmt=PROTOCOL_MARKERS[index % len(PROTOCOL_MARKERS)],
            color=shades[index],
            ms=4,
            lw=0.8,
            capsize=1.5,
            label=protocol,
        )
        for (method, mean, ci_high), position in zip(
            rows[["method", "mean", "ci_high"]].itertuples(index=False), y, strict=True
        ):
            mark = marks.get((protocol, method))
            if mark:
                right = ci_high if np.isfinite(ci_high) else mean
                axis.text(right + 0.01, position, mark, va="center", fontsize=7)
    chance = chance_level(metric, entries["prevalence"].mean())
    if chance:
        axis.axvline(chance[0], color="black", ls="--", lw=1, label=chance[1])
    axis.set_yticks(range(len(order)), [styles[m].label for m in order], fontsize=7)
    for tick, method in zip(axis.get_yticklabels(), order, strict=True):
        if method in highlighted and len(order) > CROWDED:
            tick.set_fontweight("bold")
    axis.set_ylim(len(order) - 0.5, -0.5)
    axis.set_xlim(0, 1.08)
    axis.set_xlabel(LABELS[metric])
    axis.grid(axis="y", visible=False)
    axis.legend(loc="lower left", fontsize=7)


def draw_finding_recall(
    axis: Axes, table: pd.DataFrame, methods: list[str], styles: Styles
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

    _grouped_bars(axis, findings, methods, value, styles)
    counts = table.groupby("finding")["volumes"].max()
    labels = [f"{f.replace('_', ' ')}\n(n={counts[f]})" for f in findings]
    labels = [label.replace("normal\n(", "normal\n(specificity, ") for label in labels]
    axis.set_xticks(range(len(findings)), labels, fontsize=7.5)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("recall at the validation threshold")


def draw_localisation(axis: Axes, table: pd.DataFrame, methods: list[str], styles: Styles) -> None:
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

    _grouped_bars(axis, list(measures), methods, value, styles)
    chance = table["chance"].mean()
    axis.axhline(chance, color="black", ls="--", lw=1, label=f"chance ({chance:.3f})")
    axis.set_ylabel("score (mean ± std over cells)")
    axis.legend(loc="upper right", fontsize=7)


def _first_to_lowest(losses: np.ndarray) -> np.ndarray:
    span = losses[0] - losses.min()
    return (losses - losses.min()) / span if span > 0 else np.ones_like(losses)


def draw_relative_losses(axis: Axes, tables: dict[str, list[pd.DataFrame]], styles: Styles) -> None:
    """Each method's training loss rescaled so its first epoch is 1 and its lowest epoch 0
    (mean over its units): losses of different methods, some negative (a negative cosine),
    share one axis and show how far and how fast each fell."""
    frames = []
    for method, method_tables in sorted(tables.items()):
        if method not in styles:
            continue
        curves = [_first_to_lowest(t["train_loss"].to_numpy()) for t in method_tables]
        length = min(map(len, curves))
        mean = np.mean([c[:length] for c in curves], axis=0)
        frames.append(
            pd.DataFrame({"method": method, "epoch": np.arange(1, length + 1), "loss": mean})
        )
    if frames:
        _lines(axis, pd.concat(frames, ignore_index=True), "epoch", "loss", styles, markersize=4)
    _other_methods_entry(axis, styles)
    axis.axhline(0.0, color="black", lw=0.8, ls=":")
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel("training loss (first epoch 1, lowest 0)")
    axis.legend(fontsize=7)
