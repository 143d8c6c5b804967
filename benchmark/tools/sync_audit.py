"""The sync audit: which operations of a training step would stop the host for the GPU.

On CUDA the host queues kernels and runs ahead; an operation whose result the host needs now
(a scalar read back, an output whose shape depends on the data, a copy to host memory, a
blocking copy from pageable host memory) makes it wait for everything queued. The audit finds
them on the CPU, where nothing is on a GPU, by following which tensors *would* be on it:

* **Device tensors** are tracked by identity: the batch, the module's parameters and buffers
  (what ``Module.to`` moves), and everything an operation computes from them (a
  ``TorchDispatchMode`` sees every aten operation, the backward pass and the optimiser's kernels
  included). A tensor made by a factory whose ``device=`` is a device object read from a device
  tensor (or the module's ``self.device``), or moved with ``.to`` onto one, is one too: a
  ``TorchFunctionMode`` marks those ``torch.device`` objects as they are read. Tracking starts
  at ``on_fit_start``, so a tensor attribute that a method moves there (a label table, a
  target table) is a device tensor, and one it never moves stays a host tensor, as on CUDA,
  where ``Module.to`` leaves plain attributes where they are: moving it in every step is a
  ``host to device`` finding. Host tensors (view parameters drawn from the CPU generator,
  optimiser step counters) stay host tensors, so reading them is no finding, as on CUDA.
* **Findings**, each with the innermost line of this repository on the stack:
  ``scalar read`` (``aten._local_scalar_dense``: ``.item()``, ``float(t)``, ``bool(t)``,
  ``if t``) of a device tensor; ``data-dependent shape`` (``nonzero``, ``masked_select``,
  ``unique``, boolean-mask indexing, ``repeat_interleave`` without ``output_size``,
  ``bincount``...) of a device tensor; ``device to host`` (``.cpu()``, ``.numpy()``,
  ``.tolist()``, ``.to("cpu")``, ``copy_`` into a host tensor); ``host to device`` (a blocking
  ``.to(device)`` of a host tensor, ``torch.tensor(data, device=...)``; with
  ``non_blocking=True`` torch does not wait, so it is no finding).

The audit runs real steps through Lightning (``StepAudit``, a callback): everything between
``on_train_batch_start`` and ``on_train_batch_end`` (forward, backward, optimiser step,
``self.log``) is phase ``step``, Lightning's work between steps ``between steps``; these two
must be free of findings. Reported separately, as they happen once: ``fit start`` (what the
method moves to the device before training), ``first step`` (the first step's one-off work:
the optimiser's state, Lightning's logged-metric states moved to the device) and, from ``on_train_epoch_end`` on, ``epoch end`` (logging once per epoch, the
non-finite check). What the audit cannot see: tensors that reach the
step through neither the batch nor the module (it would count them as host tensors), and
synchronisation inside CUDA libraries (cuDNN benchmark runs); ``make gpu-check`` runs the step
under ``torch.cuda.set_sync_debug_mode("error")`` for that.
"""

from __future__ import annotations

import linecache
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

import benchmark
from benchmark.config import pretraining_settings
from benchmark.datasets.batches import TensorBatches, batch_loader
from benchmark.evaluation.finetune import Classifier, class_weights
from benchmark.nn.backbone import ResNet18, stage_widths
from benchmark.training.pretrain import build_method, pool_batches
from benchmark.training.runtime import make_trainer, prepare_module, resolve_device

aten = torch.ops.aten

# Operations whose output shape depends on the values of their (first) input.
DATA_DEPENDENT_SHAPES = {
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.bincount.default,
    aten.histc.default,
    aten.equal.default,
}
MASK_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}
FACTORIES_FROM_DATA = {torch.tensor, torch.as_tensor}
HOST_READS = {Tensor.numpy, Tensor.tolist, Tensor.__array__}

# The audit's own modules (this one and the step-cost tracker that runs inside it).
_TOOL_FILES = {
    str(Path(__file__).resolve().with_name(name)) for name in ("sync_audit.py", "step_cost.py")
}
_REPOSITORY = Path(benchmark.__file__).resolve().parent.parent


def _in_project(filename: str) -> bool:
    """A file of this repository (benchmark/, methods/, tests/...), not an installed package."""
    path = Path(filename).resolve()
    return path.is_relative_to(_REPOSITORY) and "site-packages" not in path.parts


@dataclass(frozen=True)
class Finding:
    """One operation that would make the host wait for the GPU."""

    phase: str  # first step | step | between steps | epoch end
    kind: str  # scalar read | data-dependent shape | device to host | host to device
    operation: str
    where: str  # path:line of the first project frame (or the framework's, if none)
    code: str

    def __str__(self) -> str:
        return f"[{self.phase}] {self.kind} ({self.operation}) at {self.where}: {self.code}"


def _caller() -> tuple[str, str]:
    """``path:line`` and source of the innermost frame of this repository; without one below
    the audit's own call of the fit, the innermost frame outside torch (Lightning's, say)."""
    frame, fallback = sys._getframe(2), None
    while frame is not None:
        filename = frame.f_code.co_filename
        if str(Path(filename).resolve()) in _TOOL_FILES:
            if fallback is not None:  # the audit's trainer.fit: the rest is its caller
                frame = None
                break
        elif _in_project(filename):
            break
        elif fallback is None and "/torch/" not in filename:
            fallback = frame
        frame = frame.f_back
    frame = frame or fallback
    if frame is None:
        return "?", ""
    code = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
    path = Path(frame.f_code.co_filename)
    where = str(path.relative_to(_REPOSITORY)) if _in_project(str(path)) else str(path)
    return f"{where}:{frame.f_lineno}", code


class DeviceTensors:
    """Which tensors would live on the GPU, by identity (weakly held), and which
    ``torch.device`` objects were read from them (those name the GPU, not the host)."""

    def __init__(self):
        self.tensors = WeakIdKeyDictionary()
        self.devices: dict[int, torch.device] = {}  # id -> the object itself (kept alive)

    def add(self, values: Iterable) -> None:
        for value in tree_flatten(list(values))[0]:
            if isinstance(value, Tensor):
                self.tensors[value] = True

    def holds(self, value) -> bool:
        return isinstance(value, Tensor) and value in self.tensors

    def any_in(self, values) -> bool:
        return any(self.holds(value) for value in tree_flatten(values)[0])

    def discard(self, value: Tensor) -> None:
        self.tensors.pop(value, None)

    def names_device(self, value) -> bool:
        return isinstance(value, torch.device) and id(value) in self.devices


class _Dispatch(TorchDispatchMode):
    """Propagates device tensors through every aten operation and records scalar reads,
    data-dependent shapes and copies into host tensors."""

    def __init__(self, audit: SyncRecorder):
        super().__init__()
        self.audit = audit

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = self.audit.device_tensors
        from_device = devices.any_in((args, kwargs))
        if from_device:
            self.audit.check_operation(func, args, kwargs)
        output = func(*args, **kwargs)
        if from_device and func not in (aten.copy_.default, aten._local_scalar_dense.default):
            devices.add([output])
        return output


class _Functions(TorchFunctionMode):
    """Marks device objects read from device tensors, tensors made on them, and records copies
    between host and device that never reach the dispatcher on the CPU (there they are
    no-ops)."""

    def __init__(self, audit: SyncRecorder):
        super().__init__()
        self.audit = audit

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = self.audit.device_tensors
        if func == Tensor.device.__get__:
            device = func(*args, **kwargs)
            if devices.holds(args[0]):
                devices.devices[id(device)] = device
            return device
        if func in HOST_READS and devices.holds(args[0]):
            self.audit.record("device to host", func.__name__)
            return func(*args, **kwargs)
        if func is Tensor.to:
            return self._to(func, args, kwargs)
        if func is Tensor.cpu:
            return self._to(Tensor.to, (args[0], "cpu"), kwargs)
        output = func(*args, **kwargs)
        if devices.names_device(kwargs.get("device")):
            if func in FACTORIES_FROM_DATA and not devices.any_in(args[:1]):
                self.audit.record("host to device", f"torch.{func.__name__}(data, device=...)")
            devices.add([output])
        return output

    def _to(self, func, args, kwargs):
        """``Tensor.to``: towards a device object read from a device tensor = to the GPU; to
        ``"cpu"`` or a device object made by hand = to the host; else where the tensor is."""
        devices = self.audit.device_tensors
        source = args[0]
        targets = [*args[1:], kwargs.get("device"), kwargs.get("other")]
        to_gpu = any(devices.names_device(t) or devices.holds(t) for t in targets)
        to_host = not to_gpu and any(
            isinstance(t, (str, torch.device)) and torch.device(t).type == "cpu" for t in targets
        )
        on_gpu = devices.holds(source)
        if to_host and on_gpu:
            self.audit.record("device to host", "Tensor.to(cpu)")
        if to_gpu and not on_gpu and not kwargs.get("non_blocking", False):
            self.audit.record("host to device", "Tensor.to(device) without non_blocking")
        output = func(*args, **kwargs)
        if output is source and (to_gpu != on_gpu) and (to_gpu or to_host):
            output = output.view_as(output)  # on the GPU it would be a new tensor
        if to_gpu or (on_gpu and not to_host):
            devices.add([output])
        elif to_host:
            devices.discard(output)  # the dispatch mode saw a conversion of a device tensor
        return output


class SyncRecorder:
    """Both modes together; ``phase`` names what runs now, ``findings`` collects what was found."""

    def __init__(self):
        self.device_tensors = DeviceTensors()
        self.findings: list[Finding] = []
        self.phase = "step"
        self._modes: list = []

    def record(self, kind: str, operation: str) -> None:
        where, code = _caller()
        self.findings.append(Finding(self.phase, kind, operation, where, code))

    def check_operation(self, func, args, kwargs) -> None:
        """Called by the dispatch mode for an operation with a device tensor among its inputs."""
        devices = self.device_tensors
        if func is aten._local_scalar_dense.default:
            self.record("scalar read", "item / float / bool / if")
        elif func in DATA_DEPENDENT_SHAPES:
            self.record("data-dependent shape", func.__name__)
        elif func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            self.record("data-dependent shape", "repeat_interleave without output_size")
        elif func in MASK_INDEXING and any(
            isinstance(index, Tensor) and index.dtype == torch.bool and devices.holds(index)
            for index in (args[1] or [])
        ):
            self.record("data-dependent shape", f"{func.__name__} with a boolean mask")
        elif func is aten.copy_.default and not devices.holds(args[0]):
            self.record("device to host", "copy_ into a host tensor")

    def start(self) -> None:
        self._modes = [_Functions(self), _Dispatch(self)]
        for mode in self._modes:
            mode.__enter__()

    def stop(self) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(None, None, None)
        self._modes = []


def module_tensors(module: torch.nn.Module) -> list[Tensor]:
    """Parameters, buffers and tensor attributes (queues, flags, prepared targets) of every
    submodule: the memory a step starts with (``step_cost``)."""
    tensors = [*module.parameters(), *module.buffers()]
    for part in module.modules():
        tensors += [v for v in tree_flatten(list(vars(part).values()))[0] if isinstance(v, Tensor)]
    return tensors


class StepAudit(pl.Callback):
    """Records from the start of training to its end, phase by phase (see the module doc)."""

    def __init__(self):
        self.recorder = SyncRecorder()

    def on_fit_start(self, trainer, module) -> None:
        """Before the module's own ``on_fit_start`` (Lightning calls callbacks first), which
        may move tensor attributes to the device."""
        devices = self.recorder.device_tensors
        devices.add([*module.parameters(), *module.buffers()])  # what Module.to moves
        devices.devices[id(module.device)] = module.device
        self.recorder.phase = "fit start"
        self.recorder.start()

    def on_train_start(self, trainer, module) -> None:
        devices = self.recorder.device_tensors
        devices.devices[id(module.device)] = module.device
        for optimizer in trainer.optimizers:
            devices.add(list(optimizer.state.values()))
        self.recorder.phase = "between steps"

    def on_train_batch_start(self, trainer, module, batch, batch_index) -> None:
        self.recorder.device_tensors.add([batch])
        self.recorder.phase = "first step" if batch_index == 0 else "step"

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        self.recorder.phase = "between steps"

    def on_train_epoch_end(self, trainer, module) -> None:
        self.recorder.phase = "epoch end"

    def on_train_end(self, trainer, module) -> None:
        self.recorder.stop()

    def on_exception(self, trainer, module, exception) -> None:
        self.recorder.stop()


@dataclass
class AuditResult:
    """The findings of one audited fit, by phase."""

    name: str
    findings: list[Finding]

    def of_phase(self, phase: str) -> list[Finding]:
        return [finding for finding in self.findings if finding.phase == phase]

    @property
    def in_steps(self) -> list[Finding]:
        """What must be empty: findings of every step after the first and between steps."""
        return self.of_phase("step") + self.of_phase("between steps")

    def summary(self) -> str:
        """Counts per phase, and where the allowed ones (first step, epoch end) come from."""

        def places(phase: str) -> str:
            found = self.of_phase(phase)
            where = sorted({f"{f.where} ({f.kind})" for f in found})
            return f"{len(found)}" + (f" ({'; '.join(where)})" if where else "")

        return (
            f"{len(self.of_phase('step'))} in a step, {len(self.of_phase('between steps'))} "
            f"between steps; first step only: {places('first step')}; once per epoch: "
            f"{places('epoch end')}"
        )


def with_batch_size(cfg: DictConfig, method: str, batch_size: int) -> DictConfig:
    """``cfg`` with ``method`` pretraining on batches of ``batch_size``."""
    own = {"method": {method: {"pretrain": {"batch_size": batch_size}}}}
    if cfg.method[method].get("pretrain") is None:
        own = {}
    return OmegaConf.merge(cfg, {"pretrain": {"batch_size": batch_size}}, own)


def fit_with(cfg, module, dataset: TensorBatches, batch_size: int, steps: int, callbacks):
    """``steps`` steps (one epoch) of ``module`` on the first ``steps`` batches of ``dataset``,
    in the profile's runtime settings, through Lightning as a real run trains."""
    device = resolve_device(cfg.runtime)
    loader = batch_loader(
        dataset, batch_size, 0, device=device, placement=str(cfg.runtime.cohort_on_device)
    )
    prepare_module(module, cfg.runtime)
    trainer = make_trainer(
        cfg.runtime, Path("/tmp/ssl3d-audit"), 1, callbacks, max_steps=steps, validate=False
    )
    trainer.fit(module, loader)


def pretraining_module(perf, method: str, batch_size: int):
    """``method``'s module as pretraining builds it (its ``prepare`` stages run) and the config
    it was built with, on the perf phantom (``benchmark.tools.perf.PerfData``)."""
    cfg = with_batch_size(perf.cfg, method, batch_size)
    module = build_method(cfg, method)
    module.check_settings(batch_size)
    module.prepare(perf.context(method))
    return cfg, module


def audit_pretraining(perf, method: str, batch_size: int | None = None, steps: int = 3):
    """The audit of ``steps`` pretraining steps of ``method`` (one epoch, so its end is seen)."""
    batch_size = batch_size or int(pretraining_settings(perf.cfg, method).batch_size)
    cfg, module = pretraining_module(perf, method, batch_size)
    rows = perf.rows[: steps * batch_size]
    audit = StepAudit()
    fit_with(cfg, module, pool_batches(perf.data, rows), batch_size, steps, [audit])
    return AuditResult(method, audit.recorder.findings)


def finetuning_classifier(cfg: DictConfig, labels: Tensor, seed: int = 0) -> Classifier:
    """A randomly initialised classifier as ``run_finetune`` builds it (class-weighted)."""
    backbone = ResNet18(stage_widths(float(cfg.backbone.width_multiplier)))
    settings = cfg.finetune
    weights = class_weights(labels) if settings.class_weighted else torch.ones(2)
    return Classifier(backbone, settings, weights, seed)


def audit_finetuning(perf, steps: int = 3) -> AuditResult:
    """The audit of ``steps`` fine-tuning steps on the perf phantom's labelled volumes."""
    cfg, data = perf.cfg, perf.data
    rows = data.training_rows(0, 0, 1.0)
    batch_size = min(int(cfg.finetune.batch_size), max(2, len(rows) // steps))
    rows = rows[: steps * batch_size]
    labels = data.labels(rows)
    audit = StepAudit()
    dataset = TensorBatches(image=data.images(rows), label=labels)
    fit_with(cfg, finetuning_classifier(cfg, labels), dataset, batch_size, steps, [audit])
    return AuditResult("finetune", audit.recorder.findings)
