"""Tables and figures of a run folder (``ssl3d report OUT``); results/README.md explains them.

Reads and checks the cells (``benchmark.reporting.collect``: missing and failed cells shown as such, one
configuration per report), resamples test subjects once for the whole report
(``benchmark.reporting.summaries``, ``benchmark.reporting.statistics``), then writes

- ``tables/{auprc,auroc,f1}.{csv,md,tex}``: every protocol, methods x label fractions, with
  95 % CIs and paired tests against the reference method;
- ``tables/pathology.{csv,md,tex}`` and ``tables/localisation.{csv,md,tex}`` when the cohort
  records pathologies and masks (otherwise a note says why they are absent);
- ``figures/{auprc,auroc,f1}_vs_fraction.png``, ``figures/pr_curves_f<F>.png``,
  ``figures/pretraining_losses.png``, ``figures/summary.{png,pdf}``;
- ``tables/ranks.{csv,md,tex}`` and ``figures/ranks_<protocol>.png``: the chosen metric's mean
  ranks of the competing methods over the label fractions, Friedman's test and Nemenyi's
  critical-difference diagram (``benchmark.reporting.ranks``);
- ``tables/pretraining_budget.md``: each method's pretraining units, optimiser steps and
  seconds, and the steps and seconds of the stages a method builds first (its extra cost);
- ``tables/tuning.md`` when the run took tuned settings (``ssl3d run --tuned``): each method's
  trials, hours and best settings, so that equal tuning effort is visible;
- ``report.md``: what the run can conclude (``benchmark.reporting.verdict``: the positive
  control, the MDD, the significant differences), then every table, the notes and the figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd

from benchmark.errors import UserError
from benchmark.evaluation.protocols import PROTOCOLS
from benchmark.files import write_atomic
from benchmark.reporting import figures, tables
from benchmark.reporting.collect import RunResults, cell_status, collect
from benchmark.reporting.pooling import evaluation_design, pooled_auprc, pooled_predictions
from benchmark.reporting.ranks import draw_critical_difference, rank_tests, ranks_frame
from benchmark.reporting.statistics import resamples_for_family
from benchmark.reporting.summaries import (
    METRICS,
    ROLE_LABELS,
    Bootstrap,
    FixedTestSet,
    comparisons,
    default_reference,
    entries,
    localisation_results,
    method_roles,
    pathology_results,
    tied_with_best,
)
from benchmark.reporting.theme import MethodStyle, method_styles, muted
from benchmark.reporting.verdict import positive_control, verdict_markdown
from benchmark.reporting.versions import mixed_versions_warning
from benchmark.results import read_json

HEADLINE_PROTOCOL = "finetune"
CHANCE = {
    "auprc": "{p:.2f} (the test prevalence) is the AUPRC of a random classifier",
    "auroc": "0.5 is the AUROC of a random classifier",
    "f1": "F1 of calling every volume anomalous: {f1:.2f}",
}
FORMATS = {"md": "md", "markdown": "md", "latex": "tex", "tex": "tex", "csv": "csv"}


class EmptyReportError(UserError):
    """A folder without any cell files."""


class ReportSettingError(UserError):
    """A report option that does not fit the run (unknown reference method, fraction...)."""


@dataclass
class Report:
    """What ``write_report`` produced: the chosen metric's entries and Markdown, every file."""

    summary: pd.DataFrame
    markdown: str
    files: list[Path]
    notes: list[str] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)  # the chosen metric's table per format
    warnings: list[str] = field(default_factory=list)  # shown first in report.md and printed
    failed: int = 0  # cells that ran and failed (``ssl3d run`` exits non-zero when any did)


@dataclass
class Context:
    """What every caption states about the run."""

    backbone: str
    profile: str
    test_subjects: int
    test_volumes: int
    design: str  # fixed | rotating | none (benchmark.reporting.pooling.evaluation_design)
    replicates: int
    reference: str | None
    level: float
    alpha: float
    labels: dict[str, str] = field(default_factory=dict)  # method -> name its cells record
    view_presets: dict[str, str] = field(default_factory=dict)  # method -> pretraining views
    roles: dict[str, str] = field(default_factory=dict)  # method -> SSLMethod.role
    evaluated_by: dict[str, list[str]] = field(default_factory=dict)  # only the restricted
    caveats: tuple[str, ...] = ()  # what the design cannot conclude; closes every caption

    @property
    def closing(self) -> str:
        return "".join(f" {caveat}" for caveat in self.caveats)


def design_caveats(records: list[dict]) -> tuple[str, ...]:
    """Sentences every caption must carry about the cells' design: a single pretraining seed
    (pretraining variation was not sampled), and a residual method whose autoencoder saw the
    normals of the whole training fold (``cae.normals=training``: more labels than a cell of a
    smaller fraction may use)."""
    caveats = []
    seeds: dict[str, set] = {}
    wide = set()
    for record in records:
        pretraining = (record.get("config") or {}).get("pretraining")
        if not isinstance(pretraining, dict):
            continue
        seeds.setdefault(record["method"], set()).add(pretraining.get("seed"))
        cae = (pretraining.get("settings") or {}).get("cae")
        if isinstance(cae, dict) and cae.get("normals") == "training":
            wide.add(record["method"])
    if seeds and max(len(found) for found in seeds.values()) == 1:
        caveats.append(
            "One pretraining seed per method: pretraining variation was not sampled, so a "
            "difference between methods may be the luck of a single pretraining."
        )
    caveats += [
        f"{method}: autoencoder trained on the normals of the whole training fold (more "
        "labels than the cell)."
        for method in sorted(wide)
    ]
    return tuple(caveats)


def ordered_protocols(cells: pd.DataFrame) -> list[str]:
    """The protocols of a run, the registered ones in their order (finetune first)."""
    present = list(dict.fromkeys(cells["protocol"]))
    known = PROTOCOLS.names()
    return [p for p in known if p in present] + sorted(p for p in present if p not in known)


def _describe(values: pd.Series, unknown: str) -> str:
    return ", ".join(sorted(values.dropna().astype(str).unique())) or unknown


def test_size(context: Context) -> str:
    """The test set of the cells' predictions, in words (every caption states it)."""
    if context.design == "rotating":
        return (
            f"rotating test folds: each of the {context.test_subjects} labelled subjects "
            f"({context.test_volumes} volumes) is tested once per seed, by the fold that held "
            "it out"
        )
    if context.design == "fixed":
        return (
            f"fixed test set of {context.test_subjects} subjects ({context.test_volumes} volumes)"
        )
    return "no stored test predictions"


def metric_caption(
    metric: str,
    protocol: str,
    table: pd.DataFrame,
    tests: pd.DataFrame,
    ties: pd.DataFrame,
    context: Context,
) -> str:
    """States the protocol, n, the test size, the backbone, the profile, the chance level and
    the marks."""
    label = figures.LABELS[metric]
    described = PROTOCOLS.get(protocol).description if protocol in PROTOCOLS else protocol
    folds, seeds = table["folds"].max(), table["seeds"].max()
    text = (
        f"{label} of the {protocol} protocol ({described}) by label fraction: mean ± std "
        f"over up to {folds} fold(s) × {seeds} seed(s) (the training variation)"
    )
    if table["ci_low"].notna().any():
        text += (
            f", [{context.level:.0%} CI] of the mean by bootstrap over the test subjects "
            f"({context.replicates} resamples)"
        )
    text += f". Test: {test_size(context)}"
    if context.design == "rotating":
        text += (
            "; each cell scores only its fold's test part (pooled out-of-fold AUPRC over every "
            "subject: tables/pooled_auprc.md)"
        )
    text += f". Backbone {context.backbone}; profile {context.profile}"
    text += views_clause(context.view_presets)
    prevalence = table["prevalence"].mean()
    chance = CHANCE[metric].format(p=prevalence, f1=2 * prevalence / (1 + prevalence))
    text += f"; {chance}. {ties_caption(ties, context)}"
    marked = [
        m for m in dict.fromkeys(table["method"]) if context.roles.get(m, "method") != "method"
    ]
    if marked:
        text += (
            " Not ranked (listed after the methods, never bold): "
            + "; ".join(f"{m} ({ROLE_LABELS[context.roles[m]]})" for m in marked)
            + "."
        )
    skipped = {m: p for m, p in context.evaluated_by.items() if protocol not in p}
    if skipped:
        text += (
            " Not in this table: "
            + "; ".join(f"{m} (evaluated by {', '.join(p)} only)" for m, p in skipped.items())
            + "."
        )
    tested = tests[tests["pairs"] > 0]
    if context.reference and len(tested):
        text += " " + significance_caption(tested, context, metric)
    return text + context.closing


def ties_caption(ties: pd.DataFrame, context: Context) -> str:
    """What bold means in a table, from how its ties were decided (``tied_with_best``)."""
    how = set(ties["tie_test"]) - {"best"}
    if ties.empty:
        return "No competing method finished a cell: nothing is bold."
    if how <= {"untested"}:
        return (
            "Bold: best mean per fraction (no paired test against it was possible: "
            "it is not shown to beat the others)."
        )
    text = (
        "Bold: tied with the best, i.e. the best mean of its fraction and every method the "
        "paired t-test (training and test-subject variation) does not find worse than it "
        f"(Holm-adjusted p < {context.alpha:g} within the fraction's comparisons with the best)"
    )
    if "within MDD" in how:
        text += "; where a pair could not be tested, within the fraction's median MDD of the best"
    return text + ". Several bold entries: the run cannot tell them apart."


def views_clause(presets: dict[str, str]) -> str:
    """``; pretraining views: ...``: the preset every pretrained method used, or which each."""
    if not presets:
        return ""
    used = sorted(set(presets.values()))
    if used == ["own settings"]:
        return "; every pretrained method used its own views settings"
    if len(used) == 1:
        return f"; every pretrained method used the {used[0]} views preset"
    groups = (
        f"{preset} for {', '.join(sorted(m for m, p in presets.items() if p == preset))}"
        for preset in used
    )
    return f"; pretraining views: {' | '.join(groups)}"


def significance_caption(tests: pd.DataFrame, context: Context, metric: str) -> str:
    """What the marks test, the family, the resamples and the minimum detectable difference."""
    family = int(tests["family"].max())
    text = (
        f"*: differs from {context.reference} by the paired t-test over training (pretraining "
        f"seeds, cells) and test-subject variation; †: by the paired bootstrap over test "
        f"subjects alone ({context.replicates} resamples; conditional on the trained models); "
        f"both Holm-adjusted p < {context.alpha:g} within each fraction's family of "
        f"{family} comparison(s) vs {context.reference}."
    )
    mdd = tests["mdd"].dropna()
    if len(mdd):
        text += (
            f" Minimum detectable difference (80 % power, two-sided {context.alpha:g}/{family} "
            f"per test, Holm's first step): median {mdd.median():.3f} ({_span(mdd)}); effects, "
            f"CIs and p-values: tables/{metric}.csv."
        )
    else:
        text += " One cell per method: training variation cannot be estimated, no * test."
    return text  # a single pretraining seed: the caption's closing caveat says so


def _span(values: pd.Series) -> str:
    low, high = values.min(), values.max()
    return f"{low:.3f}" if round(low, 3) == round(high, 3) else f"{low:.3f}–{high:.3f}"


def largest_family(done: pd.DataFrame, reference: str | None) -> int:
    """The most methods compared with ``reference`` at one protocol and fraction."""
    others = done[done["method"] != reference]
    return (
        int(others.groupby(["protocol", "fraction"])["method"].nunique().max())
        if len(others)
        else 0
    )


def _csv(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, frame.to_csv(index=False, float_format="%.6g"))
    return path


def _write_metric(
    metric: str,
    results: RunResults,
    bootstrap: Bootstrap | None,
    protocols: list[str],
    context: Context,
    out: Path,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str], list[Path]]:
    """``tables/<metric>.{csv,md,tex}``: entries with CIs and tests, every protocol."""
    summary = entries(results.cells, metric, bootstrap, context.level)
    done = results.done
    shape = done.groupby("protocol").agg(folds=("fold", "nunique"), seeds=("seed", "nunique"))
    summary = summary.join(shape, on="protocol")
    reference = context.reference
    tests = comparisons(results.cells, metric, reference, bootstrap, context.alpha, context.level)
    merged = summary.merge(
        tests.drop(columns="reference"), on=["protocol", "method", "fraction"], how="left"
    )
    merged["reference"] = reference or ""
    ties = tied_with_best(results.cells, summary, metric, bootstrap, context.alpha, context.level)
    merged = merged.merge(
        ties.rename(columns={"tied": "tied_with_best"}),
        on=["protocol", "method", "fraction"],
        how="left",
    )
    merged["tied_with_best"] = merged["tied_with_best"].eq(True)
    columns = [
        "method", "fraction", "mean", "std", "n", "failed", "missing", "ci_low", "ci_high",
        "prevalence", "reference", "pairs", "paired_seeds", "diff", "diff_low", "diff_high", "p",
        "p_holm", "significant", "mdd", "p_test_only", "p_test_only_holm", "se", "df", "family",
        "tied_with_best", "tie_test", "role", "protocol",
    ]  # fmt: skip
    merged = merged[columns]
    texts = {"md": [], "tex": []}
    for protocol in protocols:
        rows = summary[summary["protocol"] == protocol]
        protocol_tests = tests[tests["protocol"] == protocol]
        protocol_ties = ties[ties["protocol"] == protocol]
        tied = {(r.method, r.fraction) for r in protocol_ties.itertuples() if r.tied}
        caption = metric_caption(metric, protocol, rows, protocol_tests, protocol_ties, context)
        label = f"tab:ssl3d-{metric}-{protocol}"
        rendered = _rendered(
            partial(
                tables.metric_table,
                rows,
                protocol_tests,
                reference,
                caption,
                label,
                alpha=context.alpha,
                tied=tied,
            ),
            context.labels,
        )
        for key in texts:
            texts[key].append(rendered[key])
    joined = {
        "md": "\n".join(
            f"### {metric.upper()}, protocol `{p}`\n\n{t}"
            for p, t in zip(protocols, texts["md"], strict=True)
        ),
        "tex": "\n".join(texts["tex"]),
    }
    files = [_csv(merged, out / "tables" / f"{metric}.csv")]
    files += _write_texts({key: [text] for key, text in joined.items()}, out, metric)
    joined["csv"] = files[0].read_text()
    return merged, tests, joined, files


def _chosen_fraction(cells: pd.DataFrame, requested: float | None) -> float:
    fractions = sorted(cells.loc[cells["status"] == "done", "fraction"].unique())
    if requested is None:
        return float(fractions[0])
    matches = [f for f in fractions if abs(f - requested) < 1e-9]
    if not matches:
        raise ReportSettingError(
            f"--fraction {requested:g}: no finished cells at that label fraction; the run has "
            f"{', '.join(f'{f:g}' for f in fractions)}"
        )
    return float(matches[0])


def _check_reference(cells: pd.DataFrame, requested: str | None) -> str | None:
    reference = default_reference(cells, requested)
    methods = sorted(set(cells.loc[cells["status"] == "done", "method"]))
    if requested is not None and requested not in methods:
        raise ReportSettingError(
            f"--reference {requested}: no finished cells of that method; the run has "
            f"{', '.join(methods)}"
        )
    return reference


def write_report(
    out: Path,
    metric: str = "auprc",
    reference: str | None = None,
    fraction: float | None = None,
    replicates: int | None = None,
    seed: int = 0,
    level: float = 0.95,
    alpha: float = 0.05,
) -> Report:
    """Write every table and figure of ``out``; returns the chosen metric's summary.

    ``replicates``: test-subject resamples; by default enough for Holm over the largest family
    (``resamples_for_family``)."""
    out = Path(out)
    if metric not in METRICS:
        raise ReportSettingError(f"--metric {metric}: choose one of {', '.join(METRICS)}")
    results = collect(out)
    if results.cells.empty:
        raise EmptyReportError(
            f"{out} holds no cell files under cells/; run `ssl3d run --out {out}` first"
        )
    status = cell_status(results.cells)
    if results.done.empty:
        errors = [e for e in status["first_error"] if e]
        first = f"; the first error: {errors[0]}" if errors else ""
        raise EmptyReportError(
            f"{out}: no cell has finished ({len(results.cells)} failed or missing){first}; "
            "see run.log"
        )
    notes = list(results.notes)
    warnings = [text for text in [mixed_versions_warning(results.records.values())] if text]
    for row in status.itertuples():
        if row.done == 0:
            what = (
                f"all {row.planned} cells failed"
                if row.failed == row.planned
                else (f"no cell finished ({row.failed} failed, {row.missing} missing)")
            )
            warnings.append(
                f"protocol {row.protocol}: {what}"
                + (f": {row.first_error}" if row.first_error else "")
            )
    reference = _check_reference(results.cells, reference)
    if reference is None:
        notes.append("no reference method (residual or scratch) finished: no paired tests")
    chosen = _chosen_fraction(results.cells, fraction)
    protocols = ordered_protocols(results.done)
    test_set = FixedTestSet.of(results.records)
    predictions = pooled_predictions(results.records.values())
    replicates = resamples_for_family(largest_family(results.done, reference), alpha, replicates)
    bootstrap = Bootstrap.run(results, test_set, replicates, seed) if test_set else None
    if bootstrap is None:
        notes.append("the cell files hold no predictions: no confidence intervals or PR curves")
    done = results.done
    context = Context(
        backbone=_describe(done["backbone"], "unknown backbone"),
        profile=_describe(done["profile"], "unknown profile"),
        test_subjects=test_set.n_subjects if test_set else 0,
        test_volumes=len(test_set.volumes) if test_set else 0,
        design=evaluation_design(predictions),
        replicates=replicates,
        reference=reference,
        level=level,
        alpha=alpha,
        labels=results.labels,
        view_presets=results.view_presets,
        roles=method_roles(results.cells),
        evaluated_by={
            record["method"]: list(record["evaluated_by"])
            for record in results.records.values()
            if record.get("evaluated_by")
        },
        caveats=design_caveats(list(results.records.values())),
    )
    styles = method_styles(list(results.cells["method"]), context.roles, context.labels)
    methods = tables.method_order(list(results.cells["method"]), reference, context.roles)
    files, markdown, headline = [], {}, {}
    if context.design == "rotating":
        files += _write_pooled(predictions, protocols, replicates, seed, context, out)
        markdown["pooled"] = (out / "tables" / "pooled_auprc.md").read_text()
    for name in METRICS:
        summary, tests, texts, written = _write_metric(
            name, results, bootstrap, protocols, context, out
        )
        files += written
        markdown[name] = texts["md"]
        headline[name] = (summary, tests, texts)
        files.append(
            figures.plot_metric_vs_fraction(
                summary,
                name,
                protocols,
                methods,
                reference,
                styles,
                out / "figures" / f"{name}_vs_fraction.png",
            )
        )
    if bootstrap is not None:
        files.append(
            figures.plot_pr_curves(
                results.records,
                test_set,
                protocols,
                chosen,
                styles,
                out / "figures" / f"pr_curves_f{chosen:g}.png",
            )
        )
    losses = figures.loss_tables(out)
    if losses:
        files.append(
            figures.plot_losses(losses, styles, out / "figures" / "pretraining_losses.png")
        )
    else:
        notes.append("no pretrain/*/losses.csv (no method was pretrained): no loss curves")

    pathology = pathology_results(results, bootstrap, level) if bootstrap else pd.DataFrame()
    if test_set is not None and not test_set.has_pathologies:
        notes.append(
            "the cohort records no pathologies (the predictions' `pathology` is empty): "
            "per-finding results skipped"
        )
    if len(pathology) and test_set.has_pathologies:
        files += _write_pathology(pathology, protocols, chosen, reference, context, out)
        markdown["pathology"] = (out / "tables" / "pathology.md").read_text()
    else:
        pathology = pd.DataFrame()
    localisation = localisation_results(results)
    if len(localisation):
        files += _write_localisation(localisation, reference, context, out)
        markdown["localisation"] = (out / "tables" / "localisation.md").read_text()
    else:
        notes.append(
            "no cell holds localisation results (the cohort has no masks, "
            "finetune.localisation.enabled is false, or no finetune cell finished): "
            "localisation skipped"
        )
    pretrainings = [
        record
        for path in sorted((out / "pretrain").glob("*/**/pretrain.json"))
        if (record := read_json(path)) and record.get("status") == "done"
    ]
    if pretrainings:
        markdown["pretraining"] = tables.pretraining_budget_markdown(pretrainings)
        files.append(out / "tables" / "pretraining_budget.md")
        write_atomic(files[-1], markdown["pretraining"])
    tuning = out / "tuning.json"
    if tuning.exists():
        markdown["tuning"] = tables.budget_markdown(tuning)
        files.append(out / "tables" / "tuning.md")
        write_atomic(files[-1], markdown["tuning"])
    else:
        notes.append(
            "no method was tuned (`ssl3d run --tuned`): every method ran with its YAML settings"
        )
    summary, tests, _ = headline[metric]
    files += _write_ranks(summary, metric, protocols, context, out, markdown)
    control = positive_control(results.cells, metric, bootstrap, alpha, level)
    verdict = verdict_markdown(
        results.cells, metric, control, tests, protocols, reference, alpha, level
    )
    files += _summary_page(
        headline[metric][0], headline[metric][1], results, test_set, pathology, localisation,
        losses, protocols, chosen, metric, reference, styles, context, out,
    )  # fmt: skip
    markdown["cells"] = _status_markdown(status)
    files.append(_write_overview(out, verdict, markdown, notes, files, warnings))
    failed = int(status["failed"].sum())
    texts = headline[metric][2]
    return Report(summary, texts["md"], files, notes, texts, warnings, failed)


def _write_ranks(
    summary: pd.DataFrame,
    metric: str,
    protocols: list[str],
    context: Context,
    out: Path,
    markdown: dict[str, str],
) -> list[Path]:
    """``tables/ranks.{csv,md,tex}`` and ``figures/ranks_<protocol>.png`` (``ranks``): the
    competing methods' mean ranks over the label fractions, or why a protocol has none."""
    tests, reasons = rank_tests(summary, protocols, context.alpha)
    files = [_csv(ranks_frame(tests), out / "tables" / "ranks.csv")]
    texts = {"md": [], "tex": []}
    label = figures.LABELS[metric]
    for protocol in protocols:
        if protocol not in tests:
            texts["md"].append(
                f"### Ranks, protocol `{protocol}`\n\nNo ranks: {reasons[protocol]}.\n"
            )
            continue
        test = tests[protocol]
        path = out / "figures" / f"ranks_{protocol}.png"
        title = (
            f"Mean rank by {label}, {protocol} protocol, over {len(test.blocks)} label fractions"
            f" (Nemenyi CD, alpha {context.alpha:g})"
        )
        files.append(draw_critical_difference(test, title, path))
        best = test.mean_ranks.iloc[0]
        caption = (
            f"Mean rank of the {test.methods} competing methods over the label fractions "
            f"{', '.join(f'{b:g}' for b in test.blocks)} of the {protocol} protocol (1 = best; "
            f"ranked by mean {label} per fraction; controls and baselines not ranked). Friedman "
            f"chi-squared {test.friedman:.2f} ({test.methods - 1} df), p = {test.friedman_p:.3g}; "
            f"Iman-Davenport F {test.iman_davenport:.2f}, p = {test.iman_davenport_p:.3g}. "
            f"Nemenyi critical difference at {context.alpha:g}: {test.critical_difference:.2f}; "
            f"methods whose mean ranks differ by less are not told apart (Demšar 2006; diagram: "
            f"figures/ranks_{protocol}.png). The fractions are nested label subsets, not "
            "independent data sets: the ranks describe this grid, the per-fraction paired tests "
            f"are the inference. Backbone {context.backbone}; profile {context.profile}."
        )
        if protocol in reasons:
            caption += f" Note: {reasons[protocol]}."
        rows = [
            [name, f"{rank:.2f}", "yes" if rank - best < test.critical_difference else "no"]
            for name, rank in test.mean_ranks.items()
        ]
        rendered = _rendered(
            partial(_ranks_table, rows, caption + context.closing, f"tab:ssl3d-ranks-{protocol}"),
        )
        texts["tex"].append(rendered["tex"])
        texts["md"].append(
            f"### Ranks, protocol `{protocol}`\n\n{rendered['md']}\n"
            f"![ranks_{protocol}](figures/ranks_{protocol}.png)\n"
        )
    files += _write_texts(texts, out, "ranks")
    markdown["ranks"] = (out / "tables" / "ranks.md").read_text()
    return files


def _write_pooled(
    predictions: pd.DataFrame,
    protocols: list[str],
    replicates: int,
    seed: int,
    context: Context,
    out: Path,
) -> list[Path]:
    """``tables/pooled_auprc.{csv,md,tex}``: rotating test folds' pooled out-of-fold AUPRC."""
    pooled = pooled_auprc(predictions, replicates, seed, context.level)
    files = [_csv(pooled, out / "tables" / "pooled_auprc.csv")]
    texts = {"md": [], "tex": []}
    no_tests = pd.DataFrame(columns=["method", "fraction"])
    for protocol in protocols:
        rows = pooled[pooled["protocol"] == protocol]
        caption = (
            f"AUPRC of the {protocol} protocol, pooled out-of-fold: per seed, the test "
            f"predictions of the folds are pooled into one AUPRC over every labelled subject "
            f"({test_size(context)}); mean ± std over {int(rows['n'].max())} seed(s), "
            f"[{context.level:.0%} CI] of the mean by bootstrap over the subjects "
            f"({replicates} resamples). A cross-validated estimate: no subject was held out of "
            f"every fold's model selection. Backbone {context.backbone}; profile "
            f"{context.profile}; {rows['prevalence'].mean():.2f} (the prevalence) is the AUPRC "
            "of a random classifier. Bold: best mean per fraction."
        )
        label = f"tab:ssl3d-pooled-auprc-{protocol}"
        rendered = _rendered(
            partial(tables.metric_table, rows, no_tests, None, caption, label),
            context.labels,
        )
        texts["md"].append(f"### Protocol `{protocol}`\n\n{rendered['md']}")
        texts["tex"].append(rendered["tex"])
    return files + _write_texts(texts, out, "pooled_auprc")


def _write_pathology(
    pathology: pd.DataFrame,
    protocols: list[str],
    fraction: float,
    reference: str | None,
    context: Context,
    out: Path,
) -> list[Path]:
    pathology = pathology.assign(role=pathology["method"].map(context.roles).fillna("method"))
    files = [_csv(pathology, out / "tables" / "pathology.csv")]
    texts = {"md": [], "tex": []}
    for protocol in protocols:
        rows = pathology[(pathology["protocol"] == protocol) & (pathology["fraction"] == fraction)]
        if rows.empty:
            continue
        caption = (
            f"Per finding, {protocol} protocol, label fraction {fraction:g}: AUPRC of normal "
            f"vs that finding (normal volumes and those with the finding; chance = the "
            f"finding's share of them) / recall at the validation threshold; 'normal': "
            f"specificity. Means over the cells; n = test volumes with the finding. Test: "
            f"{test_size(context)}. Backbone {context.backbone}; profile {context.profile}. "
            f"Every fraction and 95 % CIs: tables/pathology.csv.{context.closing}"
        )
        label = f"tab:ssl3d-pathology-{protocol}"
        rendered = _rendered(
            partial(tables.pathology_table, rows, reference, caption, label, roles=context.roles),
            context.labels,
        )
        texts["md"].append(f"### Protocol `{protocol}`\n\n{rendered['md']}")
        texts["tex"].append(rendered["tex"])
    return files + _write_texts(texts, out, "pathology")


def _write_localisation(
    localisation: pd.DataFrame, reference: str | None, context: Context, out: Path
) -> list[Path]:
    localisation = localisation.assign(
        role=localisation["method"].map(context.roles).fillna("method")
    )
    files = [_csv(localisation, out / "tables" / "localisation.csv")]
    overall = localisation[localisation["finding"] == "all"]
    caption = (
        f"Localisation of the fine-tuned classifiers (Grad-CAM at {_describe(overall['stage'], '?')}"
        f" against the ground-truth masks of the {int(overall['volumes'].max())} anomalous test "
        f"volumes with a mask): voxel AUPRC / pointing-game hit rate, means over the cells, by "
        f"label fraction. Chance level of both: {overall['chance'].mean():.3f} (the mean share "
        f"of the volume a mask covers). Test: {test_size(context)}. Backbone {context.backbone}; "
        f"profile {context.profile}. "
        f"Per finding and std: tables/localisation.csv.{context.closing}"
    )
    rendered = _rendered(
        partial(
            tables.localisation_table,
            localisation,
            reference,
            caption,
            "tab:ssl3d-localisation",
            roles=context.roles,
        ),
        context.labels,
    )
    return files + _write_texts(
        {key: [text] for key, text in rendered.items()}, out, "localisation"
    )


def _rendered(
    make: Callable[[tables.Notation], tables.Table], labels: dict[str, str] | None = None
) -> dict[str, str]:
    """The table ``make(notation=...)`` builds, as Markdown (``md``) and booktabs LaTeX
    (``tex``); ``labels`` names the methods as their cells do."""
    return {
        key: render(make(notation=tables.Notation(latex, labels or {})))
        for key, latex, render in (("md", False, tables.markdown), ("tex", True, tables.latex))
    }


def _ranks_table(
    rows: list[list[str]], caption: str, label: str, notation: tables.Notation
) -> tables.Table:
    """Methods by mean rank, and whether each lies within the critical difference of the best."""
    header = ["Method", "mean rank", "within CD of the best"]
    return tables.Table(
        header, [[notation.name(cell) for cell in row] for row in rows], caption, label
    )


def _write_texts(texts: dict[str, list[str]], out: Path, stem: str) -> list[Path]:
    """Each notation's texts, one after another, as ``out/tables/<stem>.md`` and ``.tex``."""
    paths = []
    for key in ("md", "tex"):
        paths.append(out / "tables" / f"{stem}.{key}")
        write_atomic(paths[-1], "\n".join(texts[key]))
    return paths


def _summary_page(
    summary: pd.DataFrame,
    tests: pd.DataFrame,
    results: RunResults,
    test_set: FixedTestSet | None,
    pathology: pd.DataFrame,
    localisation: pd.DataFrame,
    losses: dict,
    protocols: list[str],
    fraction: float,
    metric: str,
    reference: str | None,
    styles: dict[str, MethodStyle],
    context: Context,
    out: Path,
) -> list[Path]:
    """``figures/summary.{png,pdf}``: six panels a user can put on one slide. With many
    methods, the reference, the best few and the controls are highlighted (the others light
    grey, or left to the tables in the bar panels) and a ranking panel lists every method."""
    label = figures.LABELS[metric]
    headline = HEADLINE_PROTOCOL if HEADLINE_PROTOCOL in protocols else protocols[0]
    methods = tables.method_order(list(results.done["method"]), reference, context.roles)
    at_fraction = summary[summary["fraction"] == fraction]
    highlighted = figures.highlighted_methods(
        at_fraction[at_fraction["protocol"] == headline], reference, context.roles
    )
    shown = muted(styles, highlighted)
    bar_methods = [m for m in methods if m in highlighted]
    only = "" if bar_methods == methods else ", highlighted"
    marks = {
        (row.protocol, row.method): tables.significance_marks(row, context.alpha)
        for _, row in tests[tests["fraction"] == fraction].iterrows()
    }
    panels = [
        (
            f"{label} vs label fraction ({headline})",
            lambda axis: (
                figures.draw_metric_vs_fraction(
                    axis, summary[summary["protocol"] == headline], metric, shown, ""
                ),
                axis.legend(fontsize=6.5),
            ),
        ),
        (
            f"{label} at fraction {fraction:g}, ranked by {headline}",
            lambda axis: figures.draw_ranking(
                axis, at_fraction, marks, protocols, headline, metric, styles, highlighted
            ),
        ),
    ]
    if test_set is not None:
        panels.append(
            (
                f"PR curves at fraction {fraction:g} ({headline})",
                lambda axis: (
                    figures.draw_pr_curves(
                        axis, results.records, test_set, headline, fraction, shown, ""
                    ),
                    axis.legend(fontsize=6.5, loc="lower left"),
                ),
            )
        )
    else:
        panels.append(("PR curves", lambda axis: figures.draw_note(axis, "no predictions")))
    rows = _at(pathology, headline, fraction)
    panels.append(
        (
            f"Recall per finding, {headline} at {fraction:g}{only}",
            (lambda axis: figures.draw_finding_recall(axis, rows, bar_methods, styles))
            if len(rows)
            else (
                lambda axis: figures.draw_note(axis, "skipped: the cohort records no pathologies")
            ),
        )
    )
    located = _at(localisation, HEADLINE_PROTOCOL, fraction)
    located = located[located["finding"] == "all"] if len(located) else located
    panels.append(
        (
            f"Grad-CAM localisation at {fraction:g}{only}",
            (lambda axis: figures.draw_localisation(axis, located, bar_methods, styles))
            if len(located)
            else (lambda axis: figures.draw_note(axis, "skipped: no masks (or no finetune cells)")),
        )
    )
    panels.append(
        (
            "Pretraining loss (relative)",
            (lambda axis: figures.draw_relative_losses(axis, losses, shown))
            if losses
            else (lambda axis: figures.draw_note(axis, "no method was pretrained")),
        )
    )
    reference_text = f"; * / † vs {reference} (Holm p < {context.alpha:g})" if reference else ""
    subtitle = (
        f"{context.backbone}; profile {context.profile}; {test_size(context)}; bands and bars: {context.level:.0%} bootstrap CI over "
        f"test subjects{reference_text}"
    )
    return figures.summary_page(
        f"ssl3d benchmark: {', '.join(methods) if len(methods) <= 6 else f'{len(methods)} methods'}",
        subtitle,
        panels,
        [out / "figures" / "summary.png", out / "figures" / "summary.pdf"],
    )


def _at(table: pd.DataFrame, protocol: str, fraction: float) -> pd.DataFrame:
    """The rows of one protocol and fraction (an empty table stays empty)."""
    if table.empty:
        return table
    return table[(table["protocol"] == protocol) & (table["fraction"] == fraction)]


def _status_markdown(status: pd.DataFrame) -> str:
    """Every planned cell per protocol: done, failed (with the first error) or missing (not run,
    still running, or a file the report set aside: see the notes)."""
    lines = [
        "| protocol | planned | done | failed | missing | first error |",
        "|---|---|---|---|---|---|",
    ]
    for row in status.itertuples():
        error = row.first_error.replace("|", "\\|")
        lines.append(
            f"| {row.protocol} | {row.planned} | {row.done} | {row.failed} | {row.missing} | "
            f"{error} |"
        )
    return "\n".join(lines)


def _write_overview(
    out: Path,
    verdict: str,
    markdown: dict[str, str],
    notes: list[str],
    files: list[Path],
    warnings: list[str],
) -> Path:
    """``report.md``: what the run can conclude, the warnings, every Markdown table, the notes
    and links to the figures."""
    sections = ["# ssl3d report", "", verdict]
    if warnings:
        sections += ["## Warnings", "", *(f"- **{warning}**" for warning in warnings), ""]
    if notes:
        sections += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    titles = {
        "pathology": "Per finding",
        "localisation": "Localisation",
        "tuning": "Tuning budget (ssl3d tune)",
        "ranks": "Ranks across the label fractions",
        "cells": "Cells: every planned cell, done, failed or missing",
        "pretraining": "Pretraining budget (equal steps; extra stages are a method's extra cost)",
    }
    for name, text in markdown.items():
        sections += [f"## {titles.get(name, name.upper())}", "", text]
    sections += ["## Figures", ""]
    for path in files:
        if path.suffix == ".png":
            relative = path.relative_to(out)
            sections.append(f"![{relative.stem}]({relative})")
    path = out / "report.md"
    write_atomic(path, "\n".join(sections) + "\n")
    return path
