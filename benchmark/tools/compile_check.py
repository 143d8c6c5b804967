"""``runtime.compile=true`` against eager: one training step, the same numbers within rounding.

Each module is built twice from the same seed, once run eagerly and once after the real
``prepare_module`` with ``runtime.compile=true`` (inductor, torch's default backend), and trains
one step through Lightning on the same batch with the same random state (views and masks are
drawn outside the ResNet18, from the module's own stream and torch's global one, so both are
reseeded). ``StepNumbers`` records that step's loss and the gradient of every trainable
parameter just before the optimiser step; ``compare_steps`` says how far the compiled step is
from the eager one.

Why these tolerances: inductor fuses and reorders fp32 reductions (the sums of convolutions and
BatchNorm), so a compiled step differs from eager in the last bits; one step of a loss over a
few volumes amplifies that little (``LOSS_RTOL``, ``LOSS_ATOL``, ``GRADIENT_RELATIVE_ERROR``).
Some modules amplify it more: the autoencoder's decoder reads only the deepest map (1^3 at
32^3), whose BatchNorm normalises over a handful of values, and its gradient moves by 6e-3 when
eager oneDNN merely sums in another order. So where the compiled gradient misses the fixed bound,
the module's own reordering noise is measured (the same eager step with channels-first weights,
``runtime.channels_last=false``: the same arithmetic, summed in another order) and the compiled
gradient may differ by up to ``REORDERING_FACTOR`` times that. A wrong graph (a dropped term, a
stale buffer, a mask not read, a weight off by 1 %) differs by far more than either.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from benchmark.datasets.batches import TensorBatches
from benchmark.tools.sync_audit import fit_with

# fp32 sums of a few thousand terms in another order: relative differences of about 1e-6.
LOSS_RTOL, LOSS_ATOL = 1e-4, 1e-5
# ||compiled - eager|| / ||eager|| over every trainable parameter's gradient.
GRADIENT_RELATIVE_ERROR = 1e-3
# ... or at most this many times the same measure between two eager steps that sum in another
# order (measured: the autoencoder's compiled gradient 1.0-1.5x its reordering noise).
REORDERING_FACTOR = 4.0


class StepNumbers(pl.Callback):
    """The loss of the first training step and every parameter's gradient before its
    optimiser step (Lightning's ``on_before_optimizer_step``), plus the step's wall time."""

    def __init__(self):
        self.loss: float | None = None
        self.gradients: dict[str, Tensor] = {}
        self.seconds = 0.0
        self._started = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_index) -> None:
        self._started = time.perf_counter()

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if not self.gradients:
            self.gradients = {
                name: parameter.grad.detach().clone()
                for name, parameter in module.named_parameters()
                if parameter.grad is not None
            }

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        if self.loss is None:
            self.seconds = time.perf_counter() - self._started
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.loss = float(loss)


def gradient_error(reference: StepNumbers, other: StepNumbers) -> float:
    """||other - reference|| / ||reference|| over every parameter's gradient together.

    Together, not per parameter: some gradients are rounding noise in exact arithmetic zero (a
    convolution's bias before BatchNorm, which removes it), and any two summation orders
    differ on them by 100 % of their (tiny) size."""
    if reference.gradients.keys() != other.gradients.keys():
        raise AssertionError(
            "the two steps have gradients for different parameters: "
            f"{sorted(reference.gradients.keys() ^ other.gradients.keys())}"
        )
    names = sorted(reference.gradients)
    first = torch.cat([reference.gradients[n].flatten() for n in names])
    second = torch.cat([other.gradients[n].flatten() for n in names])
    return float((second - first).norm() / first.norm())


@dataclass(frozen=True)
class StepDifference:
    """How far the compiled step is from the eager one (``reordering_error``: the eager step
    against itself summed in another order; measured only where the fixed bound is missed)."""

    name: str
    loss_eager: float
    loss_compiled: float
    gradient_error: float
    reordering_error: float | None
    eager_seconds: float
    compiled_seconds: float  # the compiled run's first step: its compilation included

    @property
    def loss_difference(self) -> float:
        return abs(self.loss_compiled - self.loss_eager)

    @property
    def gradient_bound(self) -> float:
        if self.reordering_error is None:
            return GRADIENT_RELATIVE_ERROR
        return max(GRADIENT_RELATIVE_ERROR, REORDERING_FACTOR * self.reordering_error)

    @property
    def within_tolerance(self) -> bool:
        loss_close = self.loss_difference <= LOSS_ATOL + LOSS_RTOL * abs(self.loss_eager)
        return loss_close and self.gradient_error < self.gradient_bound

    def __str__(self) -> str:
        reordering = (
            ""
            if self.reordering_error is None
            else f", eager reordered {self.reordering_error:.2g}"
        )
        return (
            f"{self.name}: loss {self.loss_eager:.6g} eager, {self.loss_compiled:.6g} compiled "
            f"(difference {self.loss_difference:.2g}); gradient relative error "
            f"{self.gradient_error:.2g} (bound {self.gradient_bound:.2g}{reordering}); first "
            f"step {self.eager_seconds:.1f} s eager, {self.compiled_seconds:.1f} s compiled"
        )


def with_runtime(cfg: DictConfig, **settings) -> DictConfig:
    """``cfg`` with these ``runtime`` settings."""
    return OmegaConf.merge(cfg, {"runtime": settings})


def one_step(build, cfg: DictConfig, dataset: TensorBatches, batch_size: int) -> StepNumbers:
    """One training step of the module ``build()`` makes (torch's and Python's random state
    seeded before it is built and again before it trains), through Lightning in
    ``cfg.runtime``'s settings (``prepare_module`` included)."""
    pl.seed_everything(0, verbose=False)
    module = build()
    pl.seed_everything(0, verbose=False)
    numbers = StepNumbers()
    fit_with(cfg, module, dataset, batch_size, 1, [numbers])
    return numbers


def compiled_against_eager(
    name: str, build, cfg: DictConfig, dataset: TensorBatches, batch_size: int
) -> StepDifference:
    """One step of ``build()``'s module eager and one compiled (``runtime.compile=true``),
    compared; where the gradients differ by more than ``GRADIENT_RELATIVE_ERROR``, also one
    eager step with channels-first weights, the module's own reordering noise."""
    eager = one_step(build, with_runtime(cfg, compile=False), dataset, batch_size)
    compiled = one_step(build, with_runtime(cfg, compile=True), dataset, batch_size)
    error = gradient_error(eager, compiled)
    reordering = None
    if error >= GRADIENT_RELATIVE_ERROR:
        eager_reordered = with_runtime(
            cfg, compile=False, channels_last=not cfg.runtime.channels_last
        )
        reordering = gradient_error(eager, one_step(build, eager_reordered, dataset, batch_size))
    return StepDifference(
        name=name,
        loss_eager=eager.loss,
        loss_compiled=compiled.loss,
        gradient_error=error,
        reordering_error=reordering,
        eager_seconds=eager.seconds,
        compiled_seconds=compiled.seconds,
    )
