"""``ssl3d perf --audit``: FLOPs, peak memory, the largest batch per GPU and the sync audit of
every method's step at the profile's size, on the CPU, and a FLOP-based lower bound of the
``paper`` grid's time on a named GPU (``--estimate``). Nothing here is a GPU measurement."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmark.config import load_config, pretraining_settings
from benchmark.errors import UserError
from benchmark.nn.backbone import ResNet18, stage_widths
from benchmark.registry import get_method
from benchmark.tools.perf import (
    BF16_PEAK_TFLOPS,
    Throughput,
    estimate_paper_grid,
    paper_fold_size,
    perf_data,
)
from benchmark.tools.step_cost import GPU_MEMORY_GB, MethodCost, format_costs, method_cost
from benchmark.tools.sync_audit import audit_finetuning


class GpuNameError(UserError):
    """A GPU named on the command line that has no preset."""


def gpu_memory(spec: str) -> dict[str, float]:
    """``--gpu-memory``: names (``H100``) or sizes in GB (``80``), comma-separated."""
    sizes = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        if item in GPU_MEMORY_GB:
            sizes[item] = GPU_MEMORY_GB[item]
        else:
            try:
                sizes[f"{float(item):g} GB"] = float(item)
            except ValueError:
                raise GpuNameError(
                    f"--gpu-memory: {item!r} is neither a size in GB nor one of "
                    f"{', '.join(GPU_MEMORY_GB)}"
                ) from None
    return sizes


def peak_tflops(gpu: str) -> float:
    """``--gpu``: a preset's dense bf16 peak (H100, H200, A100, ...) or a number in TFLOP/s."""
    if gpu in BF16_PEAK_TFLOPS:
        return BF16_PEAK_TFLOPS[gpu]
    try:
        return float(gpu)
    except ValueError:
        raise GpuNameError(
            f"--gpu: {gpu!r} is neither a peak in TFLOP/s nor one of {', '.join(BF16_PEAK_TFLOPS)}"
        ) from None


def finetune_flops_per_volume(cfg) -> float:
    """FLOPs of one volume's forward and backward through the fine-tuned ResNet18 (its small
    head is left out)."""
    size = int(cfg.data.size)
    backbone = ResNet18(stage_widths(float(cfg.backbone.width_multiplier)))
    with FlopCounterMode(display=False) as counter:  # two volumes: BatchNorm needs a batch
        backbone(torch.zeros(2, 1, size, size, size)).sum().backward()
    return float(counter.get_total_flops()) / 2


def flop_lower_bound(costs: list[MethodCost], cfg, gpu: str, mfu: float) -> str:
    """The ``paper`` grid's time if every step ran at ``mfu`` of ``gpu``'s bf16 peak."""
    flops_per_s = peak_tflops(gpu) * 1e12 * mfu
    rates = [
        Throughput(c.method, gpu, c.size, c.batch, 0, 0, 0, (0, 0), 0, None, None, None, None, 0)
        for c in costs
    ]
    for rate, cost in zip(rates, costs):
        rate.volumes_per_s = flops_per_s / (cost.gflops_per_step * 1e9 / cost.batch)
    epoch_seconds = paper_fold_size() * finetune_flops_per_volume(cfg) / flops_per_s
    return (
        f"A lower bound, not a measurement: FLOPs counted on the CPU at {cfg.profile}'s size, "
        f"every step at {mfu:.0%} of {gpu}'s bf16 peak ({peak_tflops(gpu):g} TFLOP/s), no data "
        "path, no validation.\n" + estimate_paper_grid(rates, epoch_seconds)
    )


def run_audit(
    profile: str | None,
    methods: list[str] | None,
    overrides: list[str],
    json_path: Path | None,
    gpus: str,
    estimate_gpu: str | None,
    mfu: float,
    cache: Path,
) -> str:
    """Every selected method's step cost and sync audit on the CPU; returns the report."""
    cfg = load_config(profile, [*overrides, "runtime.device=cpu"], methods)
    perf = perf_data(cfg, cache, max(32, int(cfg.finetune.batch_size) * 3))
    sizes = gpu_memory(gpus)
    costs = [
        method_cost(perf, method, int(pretraining_settings(cfg, method).batch_size), sizes)
        for method in cfg.methods
        if get_method(method).needs_pretraining
    ]
    finetune = audit_finetuning(perf)
    report = [
        f"profile {cfg.profile} on the CPU: one step's FLOPs (forward + backward) and peak live "
        "tensor memory (fp32), measured at batches 2 and 4, extended to the profile's batch",
        format_costs(costs),
        f"  finetune: {finetune.summary()}",
        *[f"    {finding}" for finding in finetune.in_steps],
    ]
    if estimate_gpu:
        report.append(flop_lower_bound(costs, cfg, estimate_gpu, mfu))
    if json_path:
        entries = [cost.as_dict() for cost in costs]
        entries.append({"method": "finetune", "audit": finetune.summary()})
        json_path.write_text(json.dumps(entries, indent=1))
    return "\n\n".join(report)
