"""``ssl3d perf``: pretraining throughput of every method, measured, not assumed.

For each method, at the profile's volume size and batch size, on ``--device``:

* ``volumes_per_s``: the real path — the in-memory cohort tensor (resident on the GPU when it
  fits), batched gathers, views made on the device inside the step, the Lightning loop;
* ``volumes_per_s_compute_only``: the same steps on one ready-made batch whose views were
  computed once, so only the model's forward/backward/optimiser step remains;
* ``data_overhead`` = 1 - real / compute-only (target: at most 5 % on CUDA, 10 % on CPU);
* ``default_volumes_per_s``: the same model in default settings — channels-first fp32, a
  per-sample DataLoader and each volume's views made one at a time (as per-sample transform
  pipelines do), glibc's default allocator, torch's default (per-parameter loop) optimiser
  step — and ``speedup`` over it (target on the CPU: at
  least 2x);
* with ``--compare-compile``: the same fast path measured again with ``runtime.compile=true``
  (every ResNet18 compiled by inductor), its ``compiled_volumes_per_s`` and ``compile_speedup``
  (its step time against eager's); the first step of each process's first fit
  (``first_step_s``, ``compiled_first_step_s``) is reported apart, since it holds the one-off
  costs, compilation above all;
* ``peak_mem_mb``: on CUDA the peak allocated memory, on the CPU the peak resident memory of
  the process that measured this method (each method is measured in a fresh process);
* on CUDA ``tflops`` (counted with ``torch.utils.flop_counter``) and ``mfu`` as a fraction of
  the device's dense bf16 peak (target on an H100: at least 35 %).

A step is timed from the end of the step before (``StepTimer``), so the batch's loading and
transfer count. Every path runs ``rounds`` fits (the real and compute-only ones alternating);
a rate is the batch over the median step time after each fit's warm-up steps, and the
data-path overhead comes with a 95 % bootstrap interval. One whole fine-tuning cell is timed
as well, and ``--estimate`` turns the measured costs into a wall-time estimate of
the full ``paper`` grid on one device.
"""

from __future__ import annotations

import json
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from benchmark.config import load_config, method_hparams, pretraining_settings
from benchmark.context import PretrainingContext
from benchmark.datasets.batches import batch_loader
from benchmark.evaluation.finetune import run_finetune
from benchmark.method import SSLMethod
from benchmark.registry import get_method
from benchmark.results import Cell
from benchmark.rundata import RunData, prepare_data, test_set_size
from benchmark.training.pretrain import build_method, pool_batches, pretraining_context
from benchmark.training.runtime import (
    apply_host_settings,
    make_trainer,
    prepare_module,
    resolve_device,
)
from benchmark.training.units import pretraining_units

# Dense bf16 tensor-core peaks (TFLOP/s) by device name, from the vendors' data sheets.
BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10": 125.0,
}


@dataclass
class Throughput:
    """One method's measured pretraining throughput (the fields of ``--json``)."""

    method: str
    device: str
    size: int
    batch: int
    volumes_per_s: float
    volumes_per_s_compute_only: float
    data_overhead: float
    data_overhead_ci: tuple[float, float]
    peak_mem_mb: float
    tflops: float | None
    mfu: float | None
    default_volumes_per_s: float | None
    speedup: float | None
    seconds_per_step: float
    first_step_s: float | None = None  # the first step of a fresh process: one-off costs
    compiled_volumes_per_s: float | None = None
    compiled_first_step_s: float | None = None  # compilation included
    compile_speedup: float | None = None  # eager step time / compiled step time


class StepTimer(pl.Callback):
    """Wall time of every training step, from the end of the step before to its own end.

    That interval holds the whole data path: Lightning fetches a batch (a gather from the
    cohort tensor, or a per-sample loader's items and collate) and moves it to the device
    *before* ``on_train_batch_start``, so timing from there would leave both out. It also holds
    the step and Lightning's work between steps. The GPU is synchronised here only, to measure.
    """

    def __init__(self):
        self.times: list[float] = []
        self._previous_end = 0.0

    def _now(self, module: pl.LightningModule) -> float:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        return time.perf_counter()

    def on_train_start(self, trainer, module) -> None:
        self._previous_end = self._now(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        now = self._now(module)
        self.times.append(now - self._previous_end)
        self._previous_end = now


class ReplayedViews:
    """Stands in for a method's views: the first calls are computed, later calls replay them,
    so a compute-only measurement contains no view generation."""

    def __init__(self, views):
        self.views, self.outputs, self.calls = views, [], 0
        self.recording = True

    def __call__(self, images: Tensor, targets: Tensor | None = None, generator=None):
        if self.recording:
            self.outputs.append(self.views(images, targets, generator))
            return self.outputs[-1]
        output = self.outputs[self.calls % len(self.outputs)]
        self.calls += 1
        return output


class RepeatedBatch:
    """One ready-made batch, ``steps`` times: a loader with nothing left to load."""

    def __init__(self, batch: dict[str, Tensor], steps: int):
        self.batch, self.steps = batch, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return iter([self.batch] * self.steps)


class PerSampleVolumes(Dataset):
    """The default-settings loader: one volume per item, stacked by the default collate."""

    def __init__(self, images: Tensor, rows: Tensor):
        self.images, self.rows = images, rows

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": self.images[index], "index": torch.tensor(index), "row": self.rows[index]}


class OneVolumeAtATime:
    """Stands in for a method's views in the default-settings baseline: each volume's view is
    made alone, as a per-sample transform pipeline makes it (same operations and laws)."""

    def __init__(self, views):
        self.views = views

    def __call__(self, images: Tensor, targets: Tensor | None = None, generator=None):
        pairs = [
            self.views(
                images[i : i + 1], None if targets is None else targets[i : i + 1], generator
            )
            for i in range(len(images))
        ]
        views = torch.cat([view for view, _ in pairs])
        return views, None if targets is None else torch.cat([target for _, target in pairs])


@dataclass
class PerfData:
    """A small phantom at the profile's volume size: ``rows`` of its pool are measured on, and
    its labelled subjects feed stages that need labels (the residual method's autoencoder)."""

    cfg: DictConfig
    data: RunData
    rows: np.ndarray
    folder: Path
    recipe: tuple[DictConfig, Path, int]  # perf_data's arguments: how a fresh process reloads it

    @property
    def images(self) -> Tensor:
        return self.data.images(self.rows)

    def context(self, method: str) -> PretrainingContext:
        unit = pretraining_units(self.cfg, method, self.folder)[0]
        device = resolve_device(self.cfg.runtime)
        return pretraining_context(
            self.cfg, unit, self.data, device, lambda m: None, rows=self.rows
        )


def perf_data(cfg: DictConfig, cache: Path, count: int) -> PerfData:
    """``count`` pool volumes and 24 labelled subjects at the profile's size (made once).

    ``run_perf`` asks for the profile's own pool size: methods check their settings against
    the pool they are given (DrasCLR's queues must stay below it), as in a real run."""
    small = OmegaConf.merge(
        cfg,
        {
            "data": {"manifest": None, "splits": None},
            # 24 labelled subjects: the profile's sized test set is not perf's concern.
            "phantom": {
                "labelled": 24,
                "unlabelled": (count + 1) // 2,
                "seed": 0,
                "test_subjects": None,
            },
            "splits": {"folds": 2, "seeds": [0], "fractions": [1.0]},
        },
    )
    folder = cache / f"phantom-{cfg.phantom.size}-{count}"
    data = prepare_data(small, folder, log=lambda message: None)
    rows, _ = data.pretraining_pool("unlabelled")
    return PerfData(small, data, rows[:count], folder, (cfg, cache, count))


# The baseline's settings: what a plain PyTorch/MONAI pipeline runs with.
DEFAULT_RUNTIME = {
    "channels_last": False,
    "precision": "32",
    "compile": False,
    "keep_host_memory": False,
    "fused_optimizer": False,
    "cohort_on_device": "never",
}


def _fit_steps(
    perf: PerfData, method: str, loader, steps: int, views=None, runtime=None
) -> tuple[SSLMethod, list[float]]:
    """``steps`` training steps of ``method`` (after its real ``prepare``), timed per step."""
    cfg = perf.cfg
    runtime = runtime or cfg.runtime
    pl.seed_everything(0, verbose=False)
    module = build_method(cfg, method)
    module.prepare(perf.context(method))
    if views is not None:
        module.views = views
    prepare_module(module, runtime)
    timer = StepTimer()
    trainer = make_trainer(
        runtime,
        Path("/tmp/ssl3d-perf"),
        max_epochs=-1,
        callbacks=[timer],
        max_steps=steps,
        validate=False,
    )
    trainer.fit(module, loader)
    return module, timer.times


def data_overhead(real_times: np.ndarray, compute_times: np.ndarray) -> float:
    """1 - real / compute-only rate, rates being the batch over the median step time."""
    return max(0.0, 1 - float(np.median(compute_times) / np.median(real_times)))


def data_overhead_interval(
    real_times: np.ndarray, compute_times: np.ndarray, resamples: int = 2000
) -> tuple[float, float]:
    """95 % bootstrap interval of ``data_overhead`` (the steps of each path resampled)."""
    generator = np.random.default_rng(0)
    overheads = [
        data_overhead(
            generator.choice(real_times, len(real_times)),
            generator.choice(compute_times, len(compute_times)),
        )
        for _ in range(resamples)
    ]
    low, high = np.quantile(overheads, [0.025, 0.975])
    return float(low), float(high)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _step_flops(module, batch: dict[str, Tensor]) -> float:
    """FLOPs of one training step's forward and backward (the optimiser step is negligible).

    Lightning moves a module back to the CPU when a fit ends: it goes to the batch's device."""
    module.to(batch["image"].device)
    module.train()
    with FlopCounterMode(display=False) as counter:
        module.pretraining_loss(batch)["loss"].backward()
    module.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def _bf16_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in BF16_PEAK_TFLOPS.items():
        if key in name:
            return peak
    return None


def measure_fast_path(
    perf: PerfData, method: str, steps: int, warmup: int, rounds: int
) -> Throughput:
    """Real path and compute-only path in this process's settings (``runtime``): ``rounds``
    fits of each, alternating, so that a drift of the machine's speed falls on both.

    Each path's rate is the batch over the median of its step times (after each fit's warm-up
    steps), and the data-path overhead 1 - real / compute-only comes with a 95 % bootstrap
    interval: on the 2-core build machine one step in a run of the same code takes 0.85-1.2x
    the median, so an overhead of a few per cent needs dozens of steps, and the interval says
    whether there were enough.
    """
    cfg = perf.cfg
    device = resolve_device(cfg.runtime)
    batch = int(pretraining_settings(cfg, method).batch_size)
    real_loader = batch_loader(
        pool_batches(perf.data, perf.rows),
        batch,
        seed=0,
        device=device,
        placement=str(cfg.runtime.cohort_on_device),
    )
    # A fresh process's first fit pays one-off costs (heap growth, oneDNN kernel creation)
    # that the per-fit warm-up steps do not cover: one untimed fit first.
    first, first_times = _fit_steps(perf, method, real_loader, warmup + 1)

    rows = torch.as_tensor(perf.rows[:batch], dtype=torch.long)
    fixed = {
        "image": perf.data.images(rows).to(device),
        "index": torch.arange(batch, device=device),
        "row": rows.to(device),
    }
    replay = ReplayedViews(first.views)
    recorder, _ = _fit_steps(perf, method, RepeatedBatch(fixed, 2), 2, views=replay)
    replay.recording = False

    real, compute = [], []  # step times after each fit's warm-up
    for _ in range(rounds):
        _, times = _fit_steps(perf, method, real_loader, warmup + steps)
        real += times[warmup:]
        ready_made = RepeatedBatch(fixed, warmup + steps)
        _, times = _fit_steps(perf, method, ready_made, warmup + steps, views=replay)
        compute += times[warmup:]
    real, compute = np.array(real), np.array(compute)
    rate = batch / float(np.median(real))

    tflops = mfu = None
    if device.type == "cuda":
        flops = _step_flops(recorder, fixed)
        tflops = flops * rate / batch / 1e12
        peak_tflops = _bf16_peak(device)
        mfu = tflops / peak_tflops if peak_tflops else None
    return Throughput(
        method=method,
        device=str(device),
        size=int(cfg.data.size),
        batch=batch,
        volumes_per_s=round(rate, 2),
        volumes_per_s_compute_only=round(batch / float(np.median(compute)), 2),
        data_overhead=round(data_overhead(real, compute), 4),
        data_overhead_ci=tuple(round(bound, 4) for bound in data_overhead_interval(real, compute)),
        peak_mem_mb=round(_peak_memory_mb(device), 1),
        tflops=None if tflops is None else round(tflops, 2),
        mfu=None if mfu is None else round(mfu, 4),
        default_volumes_per_s=None,
        speedup=None,
        seconds_per_step=round(batch / rate, 4),
        first_step_s=round(first_times[0], 2),
    )


def measure_default_settings(
    perf: PerfData, method: str, steps: int, warmup: int, rounds: int
) -> float:
    """Volumes/s of the same model in default settings (``DEFAULT_RUNTIME``, a per-sample
    DataLoader, views made one volume at a time): the batch over the median step time of
    ``rounds`` fits."""
    runtime = OmegaConf.merge(perf.cfg.runtime, DEFAULT_RUNTIME)
    batch = int(pretraining_settings(perf.cfg, method).batch_size)
    per_sample = DataLoader(
        PerSampleVolumes(perf.images, torch.as_tensor(perf.rows, dtype=torch.long)),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
    )
    views = OneVolumeAtATime(build_method(perf.cfg, method).views)
    _fit_steps(perf, method, per_sample, warmup + 1, views, runtime)  # as the fast path's
    times = []
    for _ in range(rounds):
        times += _fit_steps(perf, method, per_sample, warmup + steps, views, runtime)[1][warmup:]
    return batch / statistics.median(times)


def _measured_in_this_process(
    recipe: tuple[DictConfig, Path, int],
    what: str,
    method: str,
    steps: int,
    warmup: int,
    rounds: int,
):
    """Runs in a fresh process: host settings first (the baseline keeps glibc's defaults),
    then the perf phantom from its cache, then one measurement, so peak memory and allocator
    state belong to it alone."""
    cfg = recipe[0]
    default = what == "default"
    apply_host_settings(OmegaConf.merge(cfg.runtime, DEFAULT_RUNTIME) if default else cfg.runtime)
    if what == "compiled":
        recipe = (OmegaConf.merge(cfg, {"runtime": {"compile": True}}), *recipe[1:])
    perf = perf_data(*recipe)
    if what in ("fast", "compiled"):
        return measure_fast_path(perf, method, steps, warmup, rounds)
    if what == "default":
        return measure_default_settings(perf, method, steps, warmup, rounds)
    return time_finetune_cell(perf)


def in_fresh_process(perf: PerfData, what: str, method: str = "", steps=0, warmup=0, rounds=1):
    """``_measured_in_this_process`` in a new (spawned) Python process, which reads the perf
    phantom from its cache rather than receiving the cohort's tensor through a pipe."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        job = pool.submit(
            _measured_in_this_process, perf.recipe, what, method, steps, warmup, rounds
        )
        return job.result()


@dataclass
class FinetuneCellTime:
    """One whole ``finetune`` cell (training with validation and early stopping, scoring,
    localisation), timed on the perf phantom."""

    seconds: float
    epochs: int
    n_train: int

    @property
    def seconds_per_volume_epoch(self) -> float:
        return self.seconds / max(1, self.epochs) / self.n_train


def time_finetune_cell(perf: PerfData) -> FinetuneCellTime:
    """Fine-tune a randomly initialised encoder on fold 0 of the perf phantom, as a grid cell."""
    cell = Cell("scratch", "finetune", 1.0, 0, 0)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        result = run_finetune(cell, perf.cfg, perf.data, None, Path(workdir))
    seconds = time.perf_counter() - started
    return FinetuneCellTime(round(seconds, 2), int(result["epochs"]), int(result["n_train"]))


def with_compiled(result: Throughput, compiled: Throughput) -> Throughput:
    """``result`` (eager) with the compiled measurement of the same method added."""
    result.compiled_volumes_per_s = compiled.volumes_per_s
    result.compiled_first_step_s = compiled.first_step_s
    result.compile_speedup = round(compiled.volumes_per_s / result.volumes_per_s, 2)
    return result


def format_compile_lines(results: list[Throughput]) -> str:
    """One line per method: eager against compiled step time, and each first step."""
    lines = [
        "torch.compile (runtime.compile=true against false; real-path median step time; the "
        "first step of a fresh process holds the one-off costs, the compiled one compilation):"
    ]
    for r in results:
        compiled_step = r.batch / r.compiled_volumes_per_s
        lines.append(
            f"  {r.method}: eager {1000 * r.seconds_per_step:.0f} ms per step, compiled "
            f"{1000 * compiled_step:.0f} ms: {r.compile_speedup:.2f}x; first step "
            f"{r.first_step_s:.1f} s eager, {r.compiled_first_step_s:.1f} s compiled"
        )
    return "\n".join(lines)


def format_table(results: list[Throughput]) -> str:
    """A Markdown table of the measurements."""
    columns = [
        "method",
        "device",
        "size",
        "batch",
        "volumes_per_s",
        "volumes_per_s_compute_only",
        "data_overhead",
        "data_overhead_ci",
        "default_volumes_per_s",
        "speedup",
        "peak_mem_mb",
        "tflops",
        "mfu",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for result in results:
        values = asdict(result)
        values["data_overhead_ci"] = "-".join(map(str, result.data_overhead_ci))
        lines.append(
            "| " + " | ".join("–" if values[c] is None else str(values[c]) for c in columns) + " |"
        )
    return "\n".join(lines)


def estimate_paper_grid(results: list[Throughput], finetune_epoch_seconds: float) -> str:
    """Wall time of the full ``paper`` grid on this device from the measured step costs.

    Every pretraining unit runs its fixed ``max_epochs`` over the paper pool (one unit per
    seed; a fold-scoped method, such as ``residual``, one per seed and fold) and every
    ``finetune`` cell of every method (``scratch`` included; not a probes-only baseline) at most
    its ``max_epochs`` over its label fraction's training set, one at a time; early stopping
    only shortens cells. Not counted: methods' prepare stages
    (the residual method's autoencoder), pretraining's validation passes and the cheap probe
    cells; ``finetune_epoch_seconds`` comes from a whole timed cell, its validation included.
    """
    paper = load_config("paper")
    pool = 2 * int(paper.phantom.unlabelled) * (1 - float(paper.pretrain.val_fraction))
    seeds = len(paper.splits.seeds)
    runs = seeds * int(paper.splits.folds)
    lines, total = [], 0.0
    for result in results:
        settings = pretraining_settings(paper, result.method)
        scope = get_method(result.method).scope(method_hparams(paper, result.method))
        units = {"run": seeds, "fold": runs, "fraction": runs * len(paper.splits.fractions)}[scope]
        hours = units * int(settings.max_epochs) * pool / result.volumes_per_s / 3600
        total += hours
        per = "seed" if scope == "run" else f"seed and fold{', fraction' * (scope == 'fraction')}"
        lines.append(
            f"  {result.method}: pretraining {hours:.1f} h ({units} units, one per {per}, "
            f"{settings.max_epochs} epochs each)"
        )
    # A method evaluated by probes only (``SSLMethod.protocols``) has no fine-tuning cells.
    methods = sum(
        get_method(m).protocols is None or "finetune" in get_method(m).protocols
        for m in paper.methods
    )
    cells = methods * len(paper.splits.fractions) * runs
    epochs = methods * runs * sum(float(f) for f in paper.splits.fractions)  # full-set epochs
    cell_hours = epochs * int(paper.finetune.max_epochs) * finetune_epoch_seconds / 3600
    total += cell_hours
    lines.append(
        f"  {cells} fine-tuning cells of {methods} methods: {cell_hours:.1f} h (at most "
        f"{paper.finetune.max_epochs} epochs each over its label fraction)"
    )
    return (
        "Estimated paper-profile grid on this device (epochs at their maximum; not counted: "
        "prepare stages, pretraining validation passes, probe cells):\n"
        + "\n".join(lines)
        + (f"\n  total: {total:.1f} h")
    )


def paper_fold_size() -> int:
    """Labelled training volumes of one fold of the ``paper`` profile at fraction 1.0."""
    paper = load_config("paper")
    labelled, test = paper.phantom.labelled, test_set_size(paper)
    development = labelled * (1 - paper.splits.test) if test is None else labelled - test
    return int(2 * development * (1 - 1 / paper.splits.folds))


def run_perf(
    profile: str | None,
    methods: list[str] | None,
    device: str,
    overrides: list[str],
    steps: int,
    warmup: int,
    rounds: int,
    json_path: Path | None,
    estimate: bool,
    cache: Path,
    compare_compile: bool = False,
) -> str:
    """Measure every selected method, each in fresh processes; returns the printed report.

    ``compare_compile``: the fast path eager (``runtime.compile=false``) and again compiled."""
    eager = ["runtime.compile=false"] if compare_compile else []
    cfg = load_config(profile, [*overrides, *eager, f"runtime.device={device}"], methods)
    largest_batch = max(int(pretraining_settings(cfg, m).batch_size) for m in cfg.methods)
    perf = perf_data(cfg, cache, max(2 * largest_batch, 2 * int(cfg.phantom.unlabelled)))
    baseline = resolve_device(cfg.runtime).type == "cpu"
    results = []
    for method in cfg.methods:
        if not get_method(method).needs_pretraining:
            continue
        result = in_fresh_process(perf, "fast", method, steps, warmup, rounds)
        if baseline:
            default_rate = in_fresh_process(perf, "default", method, steps, warmup, rounds)
            result.default_volumes_per_s = round(default_rate, 2)
            result.speedup = round(result.volumes_per_s / default_rate, 2)
        if compare_compile:
            compiled = in_fresh_process(perf, "compiled", method, steps, warmup, rounds)
            result = with_compiled(result, compiled)
        results.append(result)
    report = [
        f"profile {cfg.profile}, device {device}: {rounds} fits of {steps} timed steps (after "
        f"{warmup} warm-up) per path; rates from median step times, data overhead with its "
        "95 % bootstrap interval",
        format_table(results),
    ]
    if compare_compile:
        report.append(format_compile_lines(results))
    cell = in_fresh_process(perf, "finetune")
    epoch_seconds = cell.seconds_per_volume_epoch * paper_fold_size()
    report.append(
        f"fine-tuning: one cell (random init, fold 0, {cell.n_train} training volumes) took "
        f"{cell.seconds:.1f} s for {cell.epochs} epochs with validation, scoring and "
        f"localisation: {epoch_seconds:.2f} s per epoch of a paper-sized training fold "
        f"({paper_fold_size()} volumes)"
    )
    if estimate:
        caveat = (
            ""
            if cfg.profile == "paper"
            else (
                f"(measured with the {cfg.profile} profile's model and volumes: run with "
                "--profile paper for an estimate that means something)\n"
            )
        )
        report.append(caveat + estimate_paper_grid(results, epoch_seconds))
    if json_path:
        json_path.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return "\n\n".join(report)
