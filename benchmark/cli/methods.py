"""``ssl3d methods`` (the registered methods) and ``ssl3d new-method`` (a plugin scaffold)."""

from __future__ import annotations

import argparse
from pathlib import Path


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


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to ``ssl3d``."""
    methods = commands.add_parser("methods", help="list the registered SSL methods")
    methods.set_defaults(handler=command_methods)

    new_method = commands.add_parser(
        "new-method", help="write a working plugin template, its YAML and a test"
    )
    new_method.add_argument("name", help="the method's registry name (a Python identifier)")
    new_method.add_argument("--root", default=".", help="the repository root (default: .)")
    new_method.set_defaults(handler=command_new_method)
