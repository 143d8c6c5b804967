"""FLOPs and peak memory of one training step, counted on the CPU, and what they imply on a GPU.

* **FLOPs**: ``torch.utils.flop_counter.FlopCounterMode`` over one whole step (forward,
  backward; it counts convolutions and matrix products, the optimiser's element-wise work is
  not counted and is negligible).
* **Peak memory**: ``LiveTensorBytes``, a dispatch mode that adds up the bytes of every
  storage alive during the step: what exists when the step starts (parameters, gradients,
  optimiser state, buffers, the batch) plus every operation's output while something holds
  it (activations saved for the backward pass, temporaries). Measured in fp32 on the CPU: the
  GPU's bf16 autocast keeps many activations in half the bytes, so for the activations it is an
  upper bound; the CUDA caching allocator's rounding and cuDNN's workspaces are not in it.
* Both are measured at two small batches (the second step of a fit, after the optimiser's
  state exists) and extended to the profile's batch: FLOPs as ``a b + q b^2`` (convolutions
  grow with the batch, a contrastive loss's similarity matrix with its square), memory as
  ``fixed + per_volume b``; the largest batch that fits a GPU follows from the line.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import pytorch_lightning as pl
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from benchmark.tools.sync_audit import (
    AuditResult,
    StepAudit,
    fit_with,
    module_tensors,
    pretraining_module,
)
from benchmark.training.pretrain import pool_batches

# GPU memory in GB (10^9 bytes) by name, from the vendors' data sheets.
GPU_MEMORY_GB = {"A100": 80.0, "H100": 80.0, "H200": 141.0}


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages alive while the mode is on (see the module doc)."""

    def __init__(self, existing: list[torch.Tensor]):
        super().__init__()
        self.storages: dict[int, tuple[StorageWeakRef, int]] = {}
        self._track(existing)
        self.peak = self.current

    def _track(self, values) -> None:
        for value in tree_flatten(values)[0]:
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                storage = value.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.storages:
                    self.storages[key] = (StorageWeakRef(storage), storage.nbytes())

    @property
    def current(self) -> int:
        self.storages = {k: v for k, v in self.storages.items() if not v[0].expired()}
        return sum(nbytes for _, nbytes in self.storages.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        self._track(output)
        self.peak = max(self.peak, self.current)
        return output


class StepCost(pl.Callback):
    """FLOPs and peak live bytes of the training step with index ``step``."""

    def __init__(self, step: int = 1):
        self.step, self.flops, self.peak_bytes = step, 0.0, 0
        self._modes: list = []

    def on_train_batch_start(self, trainer, module, batch, batch_index) -> None:
        if batch_index != self.step:
            return
        existing = [*module_tensors(module), batch]
        existing += [p.grad for p in module.parameters() if p.grad is not None]
        existing += [optimizer.state for optimizer in trainer.optimizers]
        self._modes = [FlopCounterMode(display=False), LiveTensorBytes(existing)]
        for mode in self._modes:
            mode.__enter__()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        if batch_index != self.step:
            return
        for mode in reversed(self._modes):
            mode.__exit__(None, None, None)
        counter, memory = self._modes
        self.flops, self.peak_bytes = float(counter.get_total_flops()), memory.peak
        self._modes = []


def measure_step(perf, method: str, batch_size: int, audit: bool = False):
    """FLOPs and peak bytes of ``method``'s second step at ``batch_size`` (and, with ``audit``,
    the sync audit of the same fit)."""
    cfg, module = pretraining_module(perf, method, batch_size)
    cost, recorder = StepCost(step=1), StepAudit()
    callbacks = [recorder, cost] if audit else [cost]
    rows = perf.rows[: 3 * batch_size]
    fit_with(cfg, module, pool_batches(perf.data, rows), batch_size, 3, callbacks)
    return cost.flops, cost.peak_bytes, AuditResult(method, recorder.recorder.findings)


@dataclass
class MethodCost:
    """One method's step at ``batch`` (extended from two measured batches)."""

    method: str
    size: int
    batch: int
    gflops_per_step: float
    peak_memory_gb: float
    fixed_memory_gb: float
    memory_per_volume_gb: float
    measured_at: tuple[int, int]
    largest_batch: dict[str, int] = field(default_factory=dict)
    audit: str = ""
    findings_in_steps: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def extend(small: int, large: int, at_small: float, at_large: float, batch: int) -> float:
    """``a b + q b^2`` through (small, at_small) and (large, at_large), at ``batch``."""
    q = (at_large / large - at_small / small) / (large - small)
    a = at_small / small - q * small
    return a * batch + q * batch * batch


def largest_batch(fixed: float, per_volume: float, memory_gb: float) -> int:
    """The largest batch whose step fits ``memory_gb`` on the fitted memory line."""
    return max(0, math.floor((memory_gb * 1e9 - fixed) / per_volume)) if per_volume > 0 else 0


def method_cost(
    perf, method: str, batch: int, gpus: dict[str, float], small: tuple[int, int] = (2, 4)
) -> MethodCost:
    """FLOPs, memory, the largest batch per GPU and the sync audit of ``method``."""
    first, second = small
    flops_1, bytes_1, audit = measure_step(perf, method, first, audit=True)
    flops_2, bytes_2, _ = measure_step(perf, method, second)
    per_volume = (bytes_2 - bytes_1) / (second - first)
    fixed = bytes_1 - per_volume * first
    return MethodCost(
        method=method,
        size=int(perf.cfg.data.size),
        batch=batch,
        gflops_per_step=round(extend(first, second, flops_1, flops_2, batch) / 1e9, 1),
        peak_memory_gb=round((fixed + per_volume * batch) / 1e9, 2),
        fixed_memory_gb=round(fixed / 1e9, 3),
        memory_per_volume_gb=round(per_volume / 1e9, 4),
        measured_at=small,
        largest_batch={name: largest_batch(fixed, per_volume, gb) for name, gb in gpus.items()},
        audit=audit.summary(),
        findings_in_steps=sorted({str(finding) for finding in audit.in_steps}),
    )


def format_costs(costs: list[MethodCost]) -> str:
    """A Markdown table of the step costs, then each method's audit."""
    gpus = list(costs[0].largest_batch) if costs else []
    header = ["method", "size", "batch", "GFLOP/step", "peak GB", "fixed GB", "GB/volume"]
    header += [f"largest batch {gpu}" for gpu in gpus]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cost in costs:
        row = [cost.method, cost.size, cost.batch, cost.gflops_per_step, cost.peak_memory_gb]
        row += [cost.fixed_memory_gb, cost.memory_per_volume_gb]
        row += [cost.largest_batch[gpu] for gpu in gpus]
        lines.append("| " + " | ".join(map(str, row)) + " |")
    lines.append("")
    lines.append("Sync audit (findings that would stop the host for the GPU):")
    for cost in costs:
        lines.append(f"  {cost.method}: {cost.audit}")
        lines += [f"    {finding}" for finding in cost.findings_in_steps]
    return "\n".join(lines)
