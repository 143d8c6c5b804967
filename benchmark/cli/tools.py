"""``ssl3d perf`` (pretraining throughput of every method, docs/perf.md) and ``ssl3d export``
(a pretrained encoder as safetensors with a model card)."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.cli.arguments import add_settings_arguments, comma_list


def command_perf(args: argparse.Namespace) -> None:
    if args.audit:
        from benchmark.tools.audit import run_audit

        print(
            run_audit(
                args.profile,
                comma_list(args.methods) if args.methods else None,
                list(args.overrides),
                json_path=Path(args.json) if args.json else None,
                gpus=args.gpu_memory,
                estimate_gpu=args.gpu if args.estimate else None,
                mfu=args.mfu,
                cache=Path(args.cache),
            )
        )
        return
    from benchmark.tools.perf import run_perf

    print(
        run_perf(
            args.profile,
            comma_list(args.methods) if args.methods is not None else None,
            args.device,
            list(args.overrides),
            steps=args.steps,
            warmup=args.warmup,
            rounds=args.rounds,
            json_path=Path(args.json) if args.json else None,
            estimate=args.estimate,
            cache=Path(args.cache),
            compare_compile=args.compare_compile,
        )
    )


def command_export(args: argparse.Namespace) -> None:
    from benchmark.tools.export import export_encoder

    for path in export_encoder(
        args.run, args.method, args.out, args.seed, args.fold, args.fraction, args.license
    ):
        print(f"wrote {path}")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to ``ssl3d``."""
    perf = commands.add_parser("perf", help="measure pretraining throughput of every method")
    add_settings_arguments(perf)
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
    perf.add_argument(
        "--compare-compile",
        action="store_true",
        help="also measure with runtime.compile=true: step times, ratio, first-step compile cost",
    )
    perf.add_argument(
        "--audit",
        action="store_true",
        help="on the CPU: FLOPs, peak memory, largest batch per GPU and the sync audit per method",
    )
    perf.add_argument(
        "--gpu-memory", default="80,141", help="with --audit: GPU memories in GB or names (H100)"
    )
    perf.add_argument(
        "--gpu", default="H100", help="with --audit --estimate: a GPU name or its peak TFLOP/s"
    )
    perf.add_argument(
        "--mfu", type=float, default=0.35, help="with --audit --estimate: the assumed MFU"
    )
    perf.set_defaults(handler=command_perf)

    export = commands.add_parser(
        "export", help="a pretrained encoder as model.safetensors, config.json and a model card"
    )
    export.add_argument("run", help="a run folder")
    export.add_argument("--method", required=True, help="the method whose encoder is exported")
    export.add_argument("--out", required=True, help="the folder to write")
    export.add_argument("--seed", type=int, help="fold- or fraction-scoped methods: the seed")
    export.add_argument("--fold", type=int, help="fold- or fraction-scoped methods: the fold")
    export.add_argument("--fraction", type=float, help="fraction-scoped methods: the fraction")
    export.add_argument(
        "--license", default="unspecified", help="the licence the model card states"
    )
    export.set_defaults(handler=command_export)
