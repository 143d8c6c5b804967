"""What several commands share: list and number arguments, the settings arguments
(``--profile`` and ``key=value`` overrides) and loading the settings they give."""

from __future__ import annotations

import argparse
from pathlib import Path


def comma_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [item.strip() for item in text.split(",") if item.strip()]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile", help="smoke, quick or paper (default: paper with a GPU, else quick)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="settings, e.g. finetune.lr=3e-4"
    )


def load_settings(args: argparse.Namespace, methods: list[str] | None = None):
    """The resolved configuration of a command's ``--profile``, ``--data`` and overrides."""
    from benchmark.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "data", None):
        overrides.append(f"data.manifest={Path(args.data).resolve()}")
    return load_config(args.profile, overrides, methods)
