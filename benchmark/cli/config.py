"""``ssl3d config show``: the resolved settings of a profile and overrides."""

from __future__ import annotations

import argparse

from benchmark.cli.arguments import add_settings_arguments, comma_list, load_settings


def command_config_show(args: argparse.Namespace) -> None:
    from omegaconf import OmegaConf

    cfg = load_settings(args, comma_list(args.methods) if args.methods is not None else None)
    print(f"# profile {cfg.profile}: {cfg.profile_reason}")
    print(OmegaConf.to_yaml(cfg), end="")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to ``ssl3d``."""
    config = commands.add_parser("config", help="inspect settings")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print the resolved settings")
    add_settings_arguments(show)
    show.add_argument("--methods", help="comma-separated method names")
    show.set_defaults(handler=command_config_show)
