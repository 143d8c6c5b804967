"""``ssl3d run`` (the whole grid, then its report) and ``ssl3d report`` (tables, statistics
and figures of a run folder)."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from benchmark.cli.arguments import add_settings_arguments, comma_list, load_settings, positive_int
from benchmark.errors import UserError


def command_run(args: argparse.Namespace) -> None:
    from benchmark.orchestration.grid import run_grid
    from benchmark.orchestration.lock import run_folder_lock
    from benchmark.reporting.report import write_report
    from benchmark.studies.tuning import record_budgets, tuned_overrides
    from benchmark.training.runtime import process_ranks

    if args.data and not Path(args.data).exists():
        raise UserError(f"--data {args.data}: no such manifest file")
    if args.executor:
        args.overrides.append(f"executor.name={args.executor}")
    if args.ray_address:
        args.overrides.append(f"executor.address={args.ray_address}")
    methods = comma_list(args.methods) if args.methods is not None else None
    cfg = load_settings(args, methods)
    out = Path(args.out)
    budgets = []
    if args.tuned:
        tuned, budgets = tuned_overrides(cfg, args.tuned)
        args.overrides = [*tuned, *args.overrides]  # settings given by hand win
        cfg = load_settings(args, methods)
    main_rank = process_ranks(cfg.runtime).is_main  # data-parallel ranks > 0 only pretrain
    if not main_rank:
        run_grid(cfg, out, force=args.force)
        return
    with run_folder_lock(out, "ssl3d run", print):  # held through the report too
        run_grid(
            cfg, out, force=args.force, on_accept=partial(record_budgets, out, budgets, cfg.methods)
        )
        report = write_report(out)
    print("\nResults:")
    for path in report.files:
        print(f"  {path}")
    print()
    print(report.markdown)
    for note in report.notes:
        print(f"note: {note}")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if report.failed:
        print(
            f"error: {report.failed} cell(s) failed (report.md, section Cells, names the first "
            f"error of each protocol; run.log has every one); `ssl3d run --out {out}` again "
            "retries them",
            file=sys.stderr,
        )
        raise SystemExit(1)


def command_report(args: argparse.Namespace) -> None:
    from benchmark.reporting.report import FORMATS, write_report

    if not Path(args.out).is_dir():
        raise UserError(f"{args.out}: no such run folder")
    report = write_report(
        Path(args.out),
        metric=args.metric,
        reference=args.reference,
        fraction=args.fraction,
        replicates=args.bootstrap,
    )
    for path in report.files:
        print(path)
    print()
    print(report.texts[FORMATS[args.format]])
    for note in report.notes:
        print(f"note: {note}")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to ``ssl3d``."""
    run = commands.add_parser(
        "run", help="pretrain every method and evaluate every cell of the grid"
    )
    add_settings_arguments(run)
    run.add_argument("--methods", help="comma-separated method names (default: all)")
    run.add_argument("--data", help="a cohort manifest CSV (default: the built-in phantom)")
    run.add_argument(
        "--out", default="results/benchmark", help="run folder (default: results/benchmark)"
    )
    run.add_argument(
        "--force", action="store_true", help="recompute results made with other settings"
    )
    run.add_argument(
        "--tuned",
        metavar="STORAGE",
        help="take each method's best settings from the `ssl3d tune` studies in this storage",
    )
    run.add_argument(
        "--executor",
        choices=["local", "ray"],
        help="local: this process; ray: Ray tasks, see the executor settings (default: local)",
    )
    run.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="with --executor ray: the Ray cluster to use (default: a local Ray instance)",
    )
    run.set_defaults(handler=command_run)

    report = commands.add_parser(
        "report", help="tables, statistics and figures of a run folder (results/README.md)"
    )
    report.add_argument("out", help="a run folder")
    report.add_argument(
        "--format",
        default="md",
        choices=["md", "latex", "csv"],
        help="how the chosen metric's table is printed (every format is written to tables/)",
    )
    report.add_argument(
        "--metric",
        default="auprc",
        choices=["auprc", "auroc", "f1"],
        help="the metric printed and drawn in the summary figure (default: auprc)",
    )
    report.add_argument(
        "--reference",
        help="the method every other is tested against (default: residual, else scratch)",
    )
    report.add_argument(
        "--fraction",
        type=float,
        help="label fraction of the PR curves and per-finding tables (default: the smallest)",
    )
    report.add_argument(
        "--bootstrap",
        type=positive_int,
        help="test-subject resamples for CIs and paired tests (default: enough for Holm over "
        "the largest family to reach alpha/20, at least 1000; docs/statistics.md)",
    )
    report.set_defaults(handler=command_report)
