"""``make paper-shaped``: the ``paper`` profile's code path at its real shapes, with tiny counts.

The ``paper`` profile (64^3 inputs cut from 65^3 crops, the full-width ResNet18 with 512
features, each method's own views, fine-tuning with Grad-CAM localisation at stage 3, the linear
and kNN probes, the residual method's autoencoder and residual maps) is what researchers run on
a GPU, and the other profiles shrink its shapes. Shape, dtype and memory-format bugs that only
appear at the paper size would therefore first show on a borrowed GPU, hours into a run. This
runs ``ssl3d run --profile paper`` in a fresh process with only the *counts* cut
(``PAPER_SHAPED_COUNTS``: a handful of volumes, one epoch, two folds (the fewest a split file
is made with), one seed, one label fraction) and then checks the run folder:

- the run used the paper's shapes (``run.yaml``: profile, ``data.size``, backbone widths);
- every planned cell of every method and protocol finished (none failed or missing), and every
  fine-tuning cell has its Grad-CAM localisation;
- every pretraining unit finished with optimiser steps taken, and its exported encoder loads
  into the full-width ResNet18 and gives 512 features for a 64^3 volume in channels_last_3d;
- the report was written.

It writes ``paper-shaped.md`` and ``paper-shaped.json`` (wall time, the run's peak resident
memory, each unit's seconds, each finding) next to the run folder and exits 1 on any finding.
``--device cuda`` runs the same with bf16 autocast on the GPU (``make gpu-check`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

# Only counts: the paper's shapes, views, protocols and code path stay. The two queues are
# counts too (keys kept per location), cut below the pool of 32 volumes so MoCo's and
# DrasCLR's checks of queue against pool accept it.
PAPER_SHAPED_COUNTS = [
    "phantom.labelled=16",
    "phantom.test_subjects=null",
    "phantom.unlabelled=16",
    "splits.folds=2",
    "splits.seeds=[0]",
    "splits.fractions=[1.0]",
    "pretrain.max_epochs=1",
    "pretrain.batch_size=8",
    "finetune.max_epochs=1",
    "finetune.batch_size=4",
    "method.residual.cae.epochs=1",
    "method.drasclr.queue_size=16",
    "method.moco.queue_size=16",
]
ON_CUDA = ["runtime.device=cuda", "runtime.precision=bf16-mixed"]
PAPER_SIZE, PAPER_FEATURES = 64, 512


@dataclass
class PaperShapedResult:
    """What one paper-shaped run did and what the checks found (empty ``findings``: passed)."""

    device: str
    out: str
    exit_status: int
    seconds: float
    peak_memory_gb: float
    units: dict[str, float] = field(default_factory=dict)
    cells: dict[str, int] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.exit_status == 0 and not self.findings


def run_paper_shaped(out: Path, device: str = "cpu", extra: list[str] | None = None):
    """``ssl3d run --profile paper`` with ``PAPER_SHAPED_COUNTS`` into ``out`` (a fresh
    process, as a user runs it), then ``check_run_folder``; writes the summary files."""
    overrides = [*PAPER_SHAPED_COUNTS, *(ON_CUDA if device == "cuda" else []), *(extra or [])]
    command = [sys.executable, "-m", "benchmark", "run", "--profile", "paper"]
    command += ["--out", str(out), *overrides]
    started = time.monotonic()
    log = out.parent / f"{out.name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak memory
    process.returncode = exit_status = os.waitstatus_to_exitcode(status)
    result = PaperShapedResult(
        device=device,
        out=str(out),
        exit_status=exit_status,
        seconds=round(time.monotonic() - started, 1),
        peak_memory_gb=round(usage.ru_maxrss * 1024 / 1e9, 2),  # Linux reports KiB
    )
    if exit_status != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        result.findings.append(
            f"ssl3d run exited with {exit_status}; {log} ends:\n" + "\n".join(tail)
        )
    result.findings += check_run_folder(out, result)
    write_summary(result, out.parent)
    return result


def check_run_folder(out: Path, result: PaperShapedResult | None = None) -> list[str]:
    """Every way ``out`` falls short of a finished paper-shaped run, one sentence each;
    ``result`` (when given) gets each unit's seconds and the cell counts."""
    from benchmark.nn.backbone import stage_widths
    from benchmark.reporting.collect import collect

    findings: list[str] = []
    settings_path = out / "run.yaml"
    if not settings_path.exists():
        return [f"{settings_path} is missing: the run did not start"]
    settings = OmegaConf.load(settings_path)
    shapes = {
        "profile": (settings.profile, "paper"),
        "data.size": (settings.data.size, PAPER_SIZE),
        "backbone.width_multiplier": (settings.backbone.width_multiplier, 1.0),
    }
    findings += [
        f"run.yaml has {key}={value}, not the paper's {paper}"
        for key, (value, paper) in shapes.items()
        if value != paper
    ]
    widths = stage_widths(float(settings.backbone.width_multiplier))

    run = collect(out)
    counts = run.cells.groupby("status").size().to_dict() if not run.cells.empty else {}
    if result is not None:
        result.cells = {str(status): int(count) for status, count in counts.items()}
    if run.cells.empty:
        findings.append(f"{out / 'cells'} holds no cell")
    for _, cell in run.cells[run.cells["status"] != "done"].iterrows():
        findings.append(
            f"cell {cell['method']} {cell['protocol']} fraction {cell['fraction']:g} fold "
            f"{cell['fold']} seed {cell['seed']} is {cell['status']}"
        )
    for record in run.records.values():
        if record["protocol"] == "finetune" and not record.get("localisation"):
            findings.append(f"{record['path']} has no Grad-CAM localisation")
    findings += [f"report: {note}" for note in run.notes if note.startswith("rejected")]

    records = sorted((out / "pretrain").glob("**/pretrain.json"))
    if not records:
        findings.append(f"{out / 'pretrain'} holds no pretraining unit")
    for path in records:
        findings += _check_unit(path, out, widths, result)
    if not (out / "report.md").exists():
        findings.append(f"{out / 'report.md'} is missing: the report was not written")
    return findings


def _check_unit(
    path: Path, out: Path, widths: tuple[int, ...], result: PaperShapedResult | None
) -> list[str]:
    """A pretraining unit's findings: not done, no step taken, or an encoder that does not give
    the paper's features for a 64^3 volume."""
    from benchmark.nn.backbone import load_encoder

    unit = path.parent
    record = json.loads(path.read_text())
    name = str(unit.relative_to(out / "pretrain"))
    if result is not None:
        result.units[name] = float(record.get("seconds", 0.0))
    if record.get("status") != "done":
        return [f"{path}: status {record.get('status')}, not done"]
    if not record.get("steps"):
        return [f"{path}: no optimiser step was taken"]
    try:
        encoder = load_encoder(unit / "encoder.pt", widths).eval()
    except Exception as error:  # noqa: BLE001 - any way it fails to load is the finding
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return [f"{unit / 'encoder.pt'} does not load into the full-width ResNet18: {first}"]
    volume = torch.zeros(1, 1, PAPER_SIZE, PAPER_SIZE, PAPER_SIZE)
    with torch.no_grad():
        features = encoder(volume.to(memory_format=torch.channels_last_3d))
    if tuple(features.shape) != (1, PAPER_FEATURES):
        return [f"{unit / 'encoder.pt'} gives features of shape {tuple(features.shape)}"]
    return []


def write_summary(result: PaperShapedResult, folder: Path) -> list[Path]:
    """``folder/paper-shaped.md`` and ``paper-shaped.json``."""
    from benchmark.files import write_atomic

    verdict = "passed" if result.passed else f"FAILED ({len(result.findings)} findings)"
    lines = [
        f"# Paper-shaped run on {result.device}: {verdict}",
        "",
        f"- run folder: {result.out}",
        f"- wall time: {result.seconds:g} s; peak resident memory of the run: "
        f"{result.peak_memory_gb:g} GB",
        f"- cells: {', '.join(f'{n} {s}' for s, n in sorted(result.cells.items())) or 'none'}",
        f"- counts cut (shapes kept): {' '.join(PAPER_SHAPED_COUNTS)}",
        "",
        "| pretraining unit | seconds |",
        "|---|---:|",
        *(f"| {unit} | {seconds:g} |" for unit, seconds in sorted(result.units.items())),
    ]
    if result.findings:
        lines += ["", "## Findings", "", *(f"- {finding}" for finding in result.findings)]
    markdown, data = folder / "paper-shaped.md", folder / "paper-shaped.json"
    write_atomic(markdown, "\n".join(lines) + "\n")
    write_atomic(data, json.dumps({**asdict(result), "passed": result.passed}, indent=1))
    return [markdown, data]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="paper-shaped", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/paper-shaped", help="folder of run and summary")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("settings", nargs="*", help="more key=value settings (counts only)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU on this machine")
    folder = Path(args.out)
    if (folder / "run").exists():
        parser.error(f"{folder / 'run'} exists: remove it, or give another --out")
    result = run_paper_shaped(folder / "run", args.device, args.settings)
    print((folder / "paper-shaped.md").read_text())
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
