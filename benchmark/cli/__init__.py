"""The ``ssl3d`` command (also ``python -m benchmark``).

    ssl3d run [--profile P] [--methods a,b] [--data MANIFEST] [--out DIR] [--force]
              [--tuned STORAGE] [--executor local|ray] [--ray-address ADDRESS] [key=value ...]
    ssl3d report OUT [--format md|latex|csv] [--metric auprc|auroc|f1] [--reference METHOD]
                     [--fraction F] [--bootstrap N]
    ssl3d tune --method M [--out DIR] [--trials N] [--storage URL] [--profile P] [key=value ...]
    ssl3d ablate METHOD --out DIR [--profile P] [--grids a,b] [key=value ...]
    ssl3d residual-figure OUT --out FILE.png [--seed S] [--fold K] [--examples N]
    ssl3d methods
    ssl3d new-method NAME
    ssl3d config show [--profile P] [key=value ...]
    ssl3d data phantom --out DIR --labelled N --unlabelled M --size S --seed K
    ssl3d data splits MANIFEST --out splits.csv
    ssl3d data check MANIFEST
    ssl3d data show MANIFEST --out FILE.png
    ssl3d perf [--profile P] [--methods a,b] [--device cpu|cuda] [--json FILE] [--estimate]

Problems with the user's input print one clear ``error:`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.errors import UserError


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile", help="smoke, quick or paper (default: paper with a GPU, else quick)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="settings, e.g. finetune.lr=3e-4"
    )


def _load(args: argparse.Namespace, methods: list[str] | None = None):
    from benchmark.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "data", None):
        overrides.append(f"data.manifest={Path(args.data).resolve()}")
    return load_config(args.profile, overrides, methods)


def command_run(args: argparse.Namespace) -> None:
    from benchmark.orchestration.grid import run_grid
    from benchmark.reporting.report import write_report
    from benchmark.studies.tuning import record_budgets, tuned_overrides
    from benchmark.training.runtime import process_ranks

    if args.data and not Path(args.data).exists():
        raise UserError(f"--data {args.data}: no such manifest file")
    if args.executor:
        args.overrides.append(f"executor.name={args.executor}")
    if args.ray_address:
        args.overrides.append(f"executor.address={args.ray_address}")
    methods = _comma_list(args.methods) if args.methods else None
    cfg = _load(args, methods)
    out = Path(args.out)
    budgets = []
    if args.tuned:
        tuned, budgets = tuned_overrides(cfg, args.tuned)
        args.overrides = [*tuned, *args.overrides]  # settings given by hand win
        cfg = _load(args, methods)
    main_rank = process_ranks(cfg.runtime).is_main  # data-parallel ranks > 0 only pretrain
    if main_rank:
        record_budgets(out, budgets, cfg.methods)
    run_grid(cfg, out, force=args.force)
    if not main_rank:
        return
    report = write_report(out)
    print("\nResults:")
    for path in report.files:
        print(f"  {path}")
    print()
    print(report.markdown)
    for note in report.notes:
        print(f"note: {note}")


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

    grids = _comma_list(args.grids) if args.grids else None
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


def command_methods(args: argparse.Namespace) -> None:
    from benchmark.registry import available_methods

    methods = available_methods()
    width = max(map(len, methods))
    for name, cls in sorted(methods.items()):
        print(f"{name:<{width}}  {cls.summary()}")
        if cls.reference:
            print(f"{'':<{width}}  reference: {cls.reference}")


def command_new_method(args: argparse.Namespace) -> None:
    from benchmark.tools.scaffold import write_method_template

    for path in write_method_template(args.name, Path(args.root)):
        print(f"wrote {path}")


def command_config_show(args: argparse.Namespace) -> None:
    from omegaconf import OmegaConf

    cfg = _load(args, _comma_list(args.methods) if args.methods else None)
    print(f"# profile {cfg.profile}: {cfg.profile_reason}")
    print(OmegaConf.to_yaml(cfg), end="")


def command_data_phantom(args: argparse.Namespace) -> None:
    from benchmark.datasets.phantom import generate_phantom

    manifest = generate_phantom(
        args.out,
        labelled=args.labelled,
        unlabelled=args.unlabelled,
        size=args.size,
        seed=args.seed,
        prevalence=args.prevalence,
        difficulty=args.difficulty,
        layout=args.layout,
        workers=args.workers,
    )
    print(f"wrote {manifest}")


def command_data_splits(args: argparse.Namespace) -> None:
    from benchmark.datasets.manifest import read_manifest
    from benchmark.datasets.splits import make_splits, write_splits

    manifest = read_manifest(args.manifest)
    splits = make_splits(
        manifest.table[manifest.table["label"].notna()],
        test=args.test,
        folds=args.folds,
        seeds=tuple(int(s) for s in _comma_list(args.seeds)),
        fractions=tuple(float(f) for f in _comma_list(args.fractions)),
        test_seed=args.test_seed,
    )
    write_splits(splits, args.out)
    print(f"wrote {args.out}: {splits['subject_id'].nunique()} subjects, {len(splits)} rows")


def command_data_check(args: argparse.Namespace) -> None:
    from benchmark.datasets.check import check_manifest

    report = check_manifest(args.manifest)
    print(report.text)
    if not report.ok:
        for problem in report.problems:
            print(f"problem: {problem}", file=sys.stderr)
        raise SystemExit(1)


def command_data_show(args: argparse.Namespace) -> None:
    from benchmark.datasets.cohort import load_cohort
    from benchmark.datasets.show import draw_examples
    from benchmark.datasets.volumes import Preprocessing

    cohort = load_cohort(args.manifest, Preprocessing(size=args.size, crop=args.crop))
    draw_examples(cohort, args.out, n_per_class=args.examples)
    print(f"wrote {args.out}")


def command_perf(args: argparse.Namespace) -> None:
    from benchmark.tools.perf import run_perf

    print(
        run_perf(
            args.profile,
            _comma_list(args.methods) if args.methods else None,
            args.device,
            list(args.overrides),
            steps=args.steps,
            warmup=args.warmup,
            rounds=args.rounds,
            json_path=Path(args.json) if args.json else None,
            estimate=args.estimate,
            cache=Path(args.cache),
        )
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssl3d", description="Benchmark self-supervised pretraining on 3D volumes."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run", help="pretrain every method and evaluate every cell of the grid"
    )
    _add_settings_arguments(run)
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
        type=_positive_int,
        default=1000,
        help="test-subject resamples for CIs and paired tests (default: 1000)",
    )
    report.set_defaults(handler=command_report)

    perf = commands.add_parser("perf", help="measure pretraining throughput of every method")
    _add_settings_arguments(perf)
    perf.add_argument("--methods", help="comma-separated method names (default: all)")
    perf.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    perf.add_argument("--steps", type=int, default=6, help="timed steps per fit")
    perf.add_argument("--warmup", type=int, default=2, help="untimed steps first in every fit")
    perf.add_argument(
        "--rounds", type=int, default=3, help="fits per path, real and compute-only alternating"
    )
    perf.add_argument("--json", help="also write the measurements to this JSON file")
    perf.add_argument("--estimate", action="store_true", help="estimate the paper grid's wall time")
    perf.add_argument("--cache", default="results/perf", help="where the perf phantom is kept")
    perf.set_defaults(handler=command_perf)

    tune = commands.add_parser(
        "tune", help="tune a method's search space with optuna on validation partitions only"
    )
    tune.add_argument("--method", required=True, help="a method with a search_space in its YAML")
    _add_settings_arguments(tune)
    tune.add_argument("--protocol", help="the protocol judged (default: the tune.protocol setting)")
    tune.add_argument("--trials", type=_positive_int, help="finished trials (default: tune.trials)")
    tune.add_argument("--storage", help="optuna storage URL (default: sqlite:///OUT/tuning.db)")
    tune.add_argument("--out", default="results/tune", help="tuning folder (default: results/tune)")
    tune.set_defaults(handler=command_tune)

    ablate = commands.add_parser(
        "ablate", help="run a method's ablation grids (configs/ablations/METHOD.yaml)"
    )
    ablate.add_argument("method", help="a method with an ablation file, e.g. residual")
    _add_settings_arguments(ablate)
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

    methods = commands.add_parser("methods", help="list the registered SSL methods")
    methods.set_defaults(handler=command_methods)

    new_method = commands.add_parser(
        "new-method", help="write a working plugin template, its YAML and a test"
    )
    new_method.add_argument("name", help="the method's registry name (a Python identifier)")
    new_method.add_argument("--root", default=".", help="the repository root (default: .)")
    new_method.set_defaults(handler=command_new_method)

    config = commands.add_parser("config", help="inspect settings")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print the resolved settings")
    _add_settings_arguments(show)
    show.add_argument("--methods", help="comma-separated method names")
    show.set_defaults(handler=command_config_show)

    data = commands.add_parser("data", help="cohorts: phantom, splits, checks, pictures")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    phantom = data_commands.add_parser("phantom", help="generate the built-in phantom cohort")
    phantom.add_argument("--out", required=True)
    phantom.add_argument(
        "--labelled", type=int, default=150, help="labelled subjects (2 sinuses each)"
    )
    phantom.add_argument("--unlabelled", type=int, default=300, help="unlabelled subjects")
    phantom.add_argument("--size", type=int, default=65, help="voxels per side of a sinus volume")
    phantom.add_argument("--seed", type=int, default=0)
    phantom.add_argument(
        "--prevalence", type=float, default=0.55, help="fraction of anomalous sinuses"
    )
    phantom.add_argument("--difficulty", type=float, default=0.5, help="0 (easy) to 1 (hard)")
    phantom.add_argument("--layout", choices=["sinus", "head"], default="sinus")
    phantom.add_argument("--workers", type=int, default=None)
    phantom.set_defaults(handler=command_data_phantom)

    splits = data_commands.add_parser(
        "splits", help="make the subject-grouped split file of a manifest"
    )
    splits.add_argument("manifest")
    splits.add_argument("--out", required=True)
    splits.add_argument("--test", type=float, default=0.3)
    splits.add_argument("--folds", type=int, default=5)
    splits.add_argument("--seeds", default="0,1,2")
    splits.add_argument("--fractions", default="0.1,0.2,0.4,0.6,0.8,1.0")
    splits.add_argument("--test-seed", type=int, default=0)
    splits.set_defaults(handler=command_data_splits)

    check = data_commands.add_parser(
        "check", help="validate a manifest and every file; print a summary"
    )
    check.add_argument("manifest")
    check.set_defaults(handler=command_data_check)

    show_data = data_commands.add_parser(
        "show", help="draw slices of normal and anomalous examples"
    )
    show_data.add_argument("manifest")
    show_data.add_argument("--out", required=True)
    show_data.add_argument("--size", type=int, default=64)
    show_data.add_argument("--crop", type=int, default=65)
    show_data.add_argument("--examples", type=int, default=3, help="examples per class")
    show_data.set_defaults(handler=command_data_show)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(
            "\ninterrupted: finished units are saved; run the same command again to resume",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
