"""``make gpu-check``: what only a CUDA GPU can settle, in one call of at most about 10 minutes.

On a machine with a CUDA GPU it runs, in order, and writes ``gpu-check.md`` and
``gpu-check.json`` into ``--out``:

1. **sync**: a few training steps of every method (and of fine-tuning) at the ``smoke`` size on
   the GPU, every step after the first under ``torch.cuda.set_sync_debug_mode("error")``: any
   operation that makes the host wait for the GPU raises there. This covers what the CPU sync
   audit (``benchmark/tools/sync_audit.py``) cannot see, such as synchronisation inside CUDA
   libraries.
2. **perf**: ``ssl3d perf --device cuda --profile paper --estimate`` for a representative subset
   of methods (volumes/s, data-path overhead, TFLOP/s and MFU, one fine-tuning cell, the paper
   grid's estimated time), with few steps and small counts that keep the paper's shapes.
3. **paper-shaped**: ``make paper-shaped`` on the GPU with bf16 autocast: ``ssl3d run --profile
   paper`` for every method and protocol (Grad-CAM included) at the paper's shapes with a
   handful of volumes, and the checks of ``benchmark/tools/paper_shaped.py``.
4. **compile**: ``ssl3d perf --compare-compile`` for one method: its step eager and compiled.
5. **estimate**: ``ssl3d perf --audit --estimate`` for the same subset: FLOPs, memory and the
   FLOP-based lower bound of the paper grid on this GPU (counted on the CPU).

A check that fails is reported with its error and the others still run; a check that would
start after ``--budget`` seconds is skipped; the exit status is 1 when a check failed. Without
a CUDA GPU it says so and exits 0 having run nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch

PERF_METHODS = ["residual", "simclr", "spark", "byol"]
# The paper's shapes (64^3, full width, batch 128) with counts small enough for minutes: a pool
# of 256 volumes, a one-epoch autoencoder stage, a fine-tuning cell of at most 3 epochs.
PAPER_SHAPED = [
    "phantom.unlabelled=128",
    "finetune.max_epochs=3",
    "method.residual.cae.epochs=1",
]
NO_GPU = (
    "make gpu-check needs a CUDA GPU and this machine has none visible to torch "
    "(torch.cuda.is_available() is False): nothing was run."
)


@dataclass
class CheckResult:
    """One check's outcome: ``status`` is passed, failed or skipped."""

    check: str
    subject: str
    status: str
    seconds: float
    detail: str = ""
    data: dict | list | None = field(default=None)


class SyncDebugSteps(pl.Callback):
    """Every training step after the first (whose one-off work may synchronise) runs under
    ``torch.cuda.set_sync_debug_mode("error")``."""

    def on_train_batch_start(self, trainer, module, batch, batch_index) -> None:
        if batch_index > 0:
            torch.cuda.set_sync_debug_mode("error")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        torch.cuda.set_sync_debug_mode(0)

    def on_exception(self, trainer, module, exception) -> None:
        torch.cuda.set_sync_debug_mode(0)


def sync_checks(
    steps: int, cache: Path, device: str = "cuda"
) -> list[tuple[str, Callable[[], object]]]:
    """One check per pretrained method and one for fine-tuning, at the smoke size on
    ``device`` (cuda; the tests run the same steps on the CPU)."""
    from benchmark.config import load_config
    from benchmark.datasets.batches import TensorBatches
    from benchmark.registry import get_method
    from benchmark.tools.perf import perf_data
    from benchmark.tools.sync_audit import finetuning_classifier, fit_with, pretraining_module
    from benchmark.training.pretrain import pool_batches

    cfg = load_config("smoke", [f"runtime.device={device}"])
    perf = perf_data(cfg, cache, 32)
    batch_size = 4

    def pretraining(method: str):
        def run():
            cfg, module = pretraining_module(perf, method, batch_size)
            rows = pool_batches(perf.data, perf.rows[: steps * batch_size])
            fit_with(cfg, module, rows, batch_size, steps, [SyncDebugSteps()])

        return run

    def finetuning():
        rows = perf.data.training_rows(0, 0, 1.0)[: steps * batch_size]
        labels = perf.data.labels(rows)
        dataset = TensorBatches(image=perf.data.images(rows), label=labels)
        classifier = finetuning_classifier(perf.cfg, labels)
        fit_with(perf.cfg, classifier, dataset, batch_size, steps, [SyncDebugSteps()])

    methods = [m for m in cfg.methods if get_method(m).needs_pretraining]
    return [*((m, pretraining(m)) for m in methods), ("finetune", finetuning)]


def perf_check(methods: list[str], steps: int, cache: Path) -> dict:
    """``ssl3d perf --device cuda --profile paper --estimate`` on ``methods``."""
    from benchmark.tools.perf import run_perf

    with tempfile.TemporaryDirectory() as folder:
        json_path = Path(folder) / "perf.json"
        report = run_perf(
            "paper",
            methods,
            "cuda",
            PAPER_SHAPED,
            steps=steps,
            warmup=2,
            rounds=1,
            json_path=json_path,
            estimate=True,
            cache=cache,
        )
        return {"report": report, "measurements": json.loads(json_path.read_text())}


def compile_check(method: str, steps: int, cache: Path) -> dict:
    """``ssl3d perf --device cuda --profile paper --compare-compile`` on ``method``: step
    times eager and compiled, their ratio, and the first steps (compilation) apart."""
    from benchmark.tools.perf import run_perf

    with tempfile.TemporaryDirectory() as folder:
        json_path = Path(folder) / "perf.json"
        report = run_perf(
            "paper",
            [method],
            "cuda",
            PAPER_SHAPED,
            steps=steps,
            warmup=3,
            rounds=1,
            json_path=json_path,
            estimate=False,
            cache=cache,
            compare_compile=True,
        )
        return {"report": report, "measurements": json.loads(json_path.read_text())}


def paper_shaped_check() -> dict:
    """``benchmark/tools/paper_shaped.py`` on CUDA (bf16): every method and protocol at the
    paper's shapes; a finding fails the check."""
    from benchmark.tools.paper_shaped import run_paper_shaped

    with tempfile.TemporaryDirectory() as folder:
        result = run_paper_shaped(Path(folder) / "run", "cuda")
        summary = (Path(folder) / "paper-shaped.md").read_text()
    if not result.passed:
        raise RuntimeError(summary)
    return {"summary": summary}


def estimate_check(methods: list[str], gpu: str, cache: Path) -> dict:
    """``ssl3d perf --audit --estimate --gpu <this GPU>`` on ``methods`` (counted on the CPU)."""
    from benchmark.tools.audit import run_audit

    with tempfile.TemporaryDirectory() as folder:
        json_path = Path(folder) / "audit.json"
        report = run_audit(
            "paper",
            methods,
            PAPER_SHAPED,
            json_path,
            gpus="80,141",
            estimate_gpu=gpu,
            mfu=0.35,
            cache=cache,
        )
        return {"report": report, "costs": json.loads(json_path.read_text())}


def gpu_preset(device_name: str) -> str:
    """The bf16 peak preset whose name ``device_name`` contains (H100 when none does)."""
    from benchmark.tools.perf import BF16_PEAK_TFLOPS

    return next((name for name in BF16_PEAK_TFLOPS if name in device_name), "H100")


def run_checks(
    checks: list[tuple[str, str, Callable[[], object]]], budget: float
) -> list[CheckResult]:
    """Each ``(check, subject, run)`` in turn; an error fails that check only, and a check
    that would start after ``budget`` seconds is skipped."""
    started, results = time.monotonic(), []
    for check, subject, run in checks:
        begin = time.monotonic()
        if begin - started > budget:
            results.append(CheckResult(check, subject, "skipped", 0.0, "over the time budget"))
            continue
        try:
            data = run()
            status, detail = "passed", ""
        except Exception as error:  # a failed check is a finding to report, not the end
            data, status = None, "failed"
            detail = "".join(traceback.format_exception_only(error)).strip()
            detail += "\n" + "".join(traceback.format_tb(error.__traceback__)[-3:])
        seconds = round(time.monotonic() - begin, 1)
        results.append(CheckResult(check, subject, status, seconds, detail, data or None))
        print(f"gpu-check: {check} {subject}: {status} ({seconds} s)", flush=True)
    return results


def format_report(results: list[CheckResult], machine: dict) -> str:
    """The Markdown report: the machine, a table of every check, then each check's output."""
    lines = ["# ssl3d GPU check", ""]
    lines += [f"- {key}: {value}" for key, value in machine.items()]
    lines += ["", "| check | subject | status | seconds |", "|---|---|---|---:|"]
    lines += [f"| {r.check} | {r.subject} | {r.status} | {r.seconds:g} |" for r in results]
    for result in results:
        if result.status == "passed" and not isinstance(result.data, dict):
            continue
        lines += ["", f"## {result.check}: {result.subject} ({result.status})", ""]
        if result.detail:
            lines += ["```", result.detail, "```"]
        for key, value in (result.data or {}).items():
            text = value if isinstance(value, str) else json.dumps(value, indent=1)
            lines += [f"{key}:", "", "```", text, "```"]
    return "\n".join(lines) + "\n"


def write_report(results: list[CheckResult], machine: dict, out: Path) -> list[Path]:
    """``out/gpu-check.md`` and ``out/gpu-check.json``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    markdown, data = out / "gpu-check.md", out / "gpu-check.json"
    markdown.write_text(format_report(results, machine))
    record = {"machine": machine, "checks": [asdict(result) for result in results]}
    data.write_text(json.dumps(record, indent=1))
    return [markdown, data]


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gpu-check", help="folder of the report")
    parser.add_argument("--cache", default="results/perf", help="where perf phantoms are kept")
    parser.add_argument(
        "--perf-methods", default=",".join(PERF_METHODS), help="methods of the perf checks"
    )
    parser.add_argument("--steps", type=int, default=4, help="steps per sync check (>= 2)")
    parser.add_argument("--perf-steps", type=int, default=8, help="timed steps per perf fit")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds before skipping")
    parser.add_argument("--compile-method", default="simclr", help="method of compile vs eager")
    parser.add_argument("--no-compile", action="store_true", help="skip compile vs eager")
    parser.add_argument(
        "--no-paper-shaped", action="store_true", help="skip the paper-shaped mini-run"
    )
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is not checked")
    if args.perf_steps < 1:
        parser.error("--perf-steps must be at least 1")
    args.perf_methods = [name.strip() for name in args.perf_methods.split(",") if name.strip()]
    if not args.perf_methods:
        parser.error("--perf-methods names no method")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    if not torch.cuda.is_available():
        print(NO_GPU)
        return 0
    cache, methods = Path(args.cache), args.perf_methods
    name = torch.cuda.get_device_name()
    machine = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda}
    checks = [("sync", subject, run) for subject, run in sync_checks(args.steps, cache)]
    checks.append(("perf", ",".join(methods), lambda: perf_check(methods, args.perf_steps, cache)))
    if not args.no_paper_shaped:
        checks.append(("paper-shaped", "every method, bf16", paper_shaped_check))
    if not args.no_compile:
        method = args.compile_method
        checks.append(("compile", method, lambda: compile_check(method, args.perf_steps, cache)))
    preset = gpu_preset(name)
    checks.append(("estimate", preset, lambda: estimate_check(methods, preset, cache)))
    results = run_checks(checks, args.budget)
    for path in write_report(results, machine, Path(args.out)):
        print(f"wrote {path}")
    return int(any(result.status == "failed" for result in results))


if __name__ == "__main__":
    sys.exit(main())
