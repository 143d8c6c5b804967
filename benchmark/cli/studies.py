"""Studies of methods beyond the grid: ``ssl3d tune`` (optuna on validation partitions),
``ssl3d ablate`` (a method's ablation grids) and ``ssl3d residual-figure`` (what the residual
method learns)."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.cli.arguments import add_settings_arguments, comma_list, positive_int


def command_tune(args: argparse.Namespace) -> None:
    from benchmark.studies.tuning import run_tuning

    if args.protocol:
        args.overrides.append(f"tune.protocol={args.protocol}")
    budget, files = run_tuning(
        args.method, Path(args.out), args.profile, args.overrides, args.trials, args.storage
    )
    print("\nResults:")
    for path in files:
        print(f"  {path}")
    if budget.best_value is not None:
        print(f"\nbest mean validation AUPRC {budget.best_value:.3f} with:")
        for setting, value in budget.best_params.items():
            print(f"  {setting}={value}")


def command_ablate(args: argparse.Namespace) -> None:
    from benchmark.studies.ablation import run_ablation

    grids = comma_list(args.grids) if args.grids else None
    out = Path(args.out)
    run_ablation(args.method, out, args.profile, args.overrides, grids)
    markdown = out / "tables" / f"ablation_{args.method}.md"
    print(f"\nResults:\n  {markdown.with_suffix('.csv')}\n  {markdown}\n")
    print(markdown.read_text())


def command_residual_figure(args: argparse.Namespace) -> None:
    from benchmark.methods.residual.figure import draw_residual_figure
    from benchmark.training.pretrain import open_pretrained

    method, context = open_pretrained(Path(args.run), "residual", args.seed, args.fold)
    checks = draw_residual_figure(method, context, Path(args.out), args.examples)
    print(f"wrote {args.out}")
    for name, check in checks.items():
        print(
            f"residual {name}: voxel AUPRC {check['auprc']:.3f} against the anomaly masks "
            f"(chance {check['chance']:.3f}); mean {check['inside']:.3f} inside the masks, "
            f"{check['outside']:.3f} outside"
        )


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to ``ssl3d``."""
    tune = commands.add_parser(
        "tune", help="tune a method's search space with optuna on validation partitions only"
    )
    tune.add_argument("--method", required=True, help="a method with a search_space in its YAML")
    add_settings_arguments(tune)
    tune.add_argument("--protocol", help="the protocol judged (default: the tune.protocol setting)")
    tune.add_argument("--trials", type=positive_int, help="finished trials (default: tune.trials)")
    tune.add_argument("--storage", help="optuna storage URL (default: sqlite:///OUT/tuning.db)")
    tune.add_argument("--out", default="results/tune", help="tuning folder (default: results/tune)")
    tune.set_defaults(handler=command_tune)

    ablate = commands.add_parser(
        "ablate", help="run a method's ablation grids (configs/ablations/METHOD.yaml)"
    )
    ablate.add_argument("method", help="a method with an ablation file, e.g. residual")
    add_settings_arguments(ablate)
    ablate.add_argument("--out", required=True, help="ablation folder (one run per variant)")
    ablate.add_argument("--grids", help="comma-separated grid names (default: all)")
    ablate.set_defaults(handler=command_ablate)

    figure = commands.add_parser(
        "residual-figure",
        help="image / CAE reconstruction / residual / prediction / mask of a residual run",
    )
    figure.add_argument("run", help="a run folder with finished residual pretraining")
    figure.add_argument("--out", required=True, help="the PNG to write")
    figure.add_argument("--seed", type=int, default=0)
    figure.add_argument("--fold", type=int, default=0)
    figure.add_argument("--examples", type=int, default=4, help="sinuses (rows) to show")
    figure.set_defaults(handler=command_residual_figure)
