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
    ssl3d data import bids|medmnist|folder SOURCE --out DIR [options]
    ssl3d data splits MANIFEST --out splits.csv
    ssl3d data check MANIFEST [--profile P] [--keep-cache] [key=value ...]
    ssl3d data show MANIFEST --out FILE.png
    ssl3d export RUN --method M --out DIR [--seed S] [--fold K] [--fraction F] [--license L]
    ssl3d perf [--profile P] [--methods a,b] [--device cpu|cuda] [--json FILE] [--estimate]

Problems with the user's input print one clear ``error:`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from benchmark.cli import config, data, methods, run, studies, tools
from benchmark.errors import UserError

# The order of the command groups is the order ``ssl3d --help`` lists them in.
COMMAND_GROUPS = (run, tools, studies, methods, config, data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssl3d", description="Benchmark self-supervised pretraining on 3D volumes."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_commands(commands)
    return parser


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with ``key=value`` settings taken wherever they stand.

    argparse gives a command's ``key=value`` positional only the words before its first option
    when another positional precedes it (``ssl3d data check MANIFEST --profile P key=value``);
    the settings after the option come back unparsed, and are added here."""
    parser = build_parser()
    args, unparsed = parser.parse_known_args(argv)
    settings = [word for word in unparsed if "=" in word and not word.startswith("-")]
    if settings and hasattr(args, "overrides") and len(settings) == len(unparsed):
        args.overrides = [*args.overrides, *settings]
    elif unparsed:
        parser.error(f"unrecognized arguments: {' '.join(unparsed)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
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
