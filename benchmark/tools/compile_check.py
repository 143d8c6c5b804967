"""``runtime.compile=true`` against eager: one training step, judged against a float64 step.

Each module is built three times from the same seed and trains one step through Lightning on
the same batch with the same random state (views and masks are drawn outside the ResNet18, from
the module's own stream and torch's global one, so both are reseeded): eager in float32, after
the real ``prepare_module`` with ``runtime.compile=true`` (inductor, torch's default backend) in
float32, and eager in float64, the reference. ``StepNumbers`` records the step's loss and the
gradient of every trainable parameter just before the optimiser step.

The criterion. A float32 step, eager or compiled, differs from the float64 one by its rounding;
inductor fuses and reorders the sums, so its rounding differs from eager's, but a correct
compiled step is about as close to float64 as eager is. So the compiled step passes when its
error against float64 is at most ``ROUNDING_FACTOR`` times eager's (floored at
``LOSS_ERROR_FLOOR`` and ``GRADIENT_ERROR_FLOOR``), for the loss and for all gradients together.
A wrong graph (a dropped term, a stale buffer, a mask not read, a weight 1 % off) is off by far
more. Measured at the smoke size, batch 4, heads 64 wide: the compiled gradient's error was
0.3-4.6x eager's for every pretraining method (moco's varied between runs, 1.7-4.6x); a stem
weight with 1 % noise put simclr's gradient 1.6 (5000x eager's) and its loss 7.8e-2 off.

Why rounding alone can still look large: a pre-activation of a method's head
that lies within rounding of zero flips its ReLU in one float32 step and not in another, and
the whole gradient then moves by a term of its own (about 1e-2 of its norm). Wide heads have
thousands of such units per volume (byol's 4096-wide projector and predictor), so the check
runs the methods with narrow heads (``NARROW_HEAD``): the compiled ResNet18 is the same, and a
flip becomes rare.

An open finding in the fine-tuning step. On the four raw phantom volumes of the check, the
compiled step's loss agreed with float64 to 3e-7 and every gradient from layer2 on to rounding,
but the stem's and layer1's gradients were up to 4 % off (eager: 5e-5 overall). Noise of 1e-6
added to the volumes (about ten float32 steps at intensity 1) removed it: compiled 0.9x eager.
A graph that computes the wrong function would most likely be wrong on the perturbed volumes
too; an error that a 1e-6 perturbation removes points to the step sitting exactly on a point
where it is not smooth (a ReLU's kink or a max-pool's tie hit by many voxels at once: the light
views pad a rotated volume's corners with one value), where eager and inductor may take
different one-sided derivatives. Which operation it is was not found. The check gives the
fine-tuning step its volumes with that noise (``without_ties``); pretraining's views add noise
of their own.
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

# A correct compiled float32 step is this close to float64 relative to eager float32's distance.
ROUNDING_FACTOR = 10.0
# Errors below these count as these. A loss is one number, and eager's error on it can be
# small by luck (1.5e-8 relative for barlow_twins), while compiled losses measured up to 1.2e-4
# off (moco, eager 7.8e-6); a stem weight 1 % off put simclr's loss 7.8e-2 off.
LOSS_ERROR_FLOOR = 1e-4
GRADIENT_ERROR_FLOOR = 1e-6
# The hidden width of the methods' heads in the check (see the module's docstring).
NARROW_HEAD = 64


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


def loss_error(reference: StepNumbers, other: StepNumbers) -> float:
    """|other - reference| / |reference| of the step's loss."""
    return abs(other.loss - reference.loss) / abs(reference.loss)


@dataclass(frozen=True)
class StepErrors:
    """How far a float32 step is from the float64 one: its loss and its gradients."""

    loss: float
    gradient: float

    @classmethod
    def between(cls, reference: StepNumbers, other: StepNumbers) -> StepErrors:
        return cls(loss_error(reference, other), gradient_error(reference, other))

    def bound(self) -> StepErrors:
        """The most a correct compiled step may be off, this being eager's error."""
        return StepErrors(
            ROUNDING_FACTOR * max(self.loss, LOSS_ERROR_FLOOR),
            ROUNDING_FACTOR * max(self.gradient, GRADIENT_ERROR_FLOOR),
        )


@dataclass(frozen=True)
class StepDifference:
    """The eager and the compiled float32 steps against the float64 step."""

    name: str
    eager: StepErrors
    compiled: StepErrors
    eager_seconds: float
    compiled_seconds: float  # the compiled run's first step: its compilation included

    @property
    def within_tolerance(self) -> bool:
        bound = self.eager.bound()
        return self.compiled.loss <= bound.loss and self.compiled.gradient <= bound.gradient

    def __str__(self) -> str:
        bound = self.eager.bound()
        return (
            f"{self.name}: against float64, loss off by {self.compiled.loss:.2g} compiled, "
            f"{self.eager.loss:.2g} eager (bound {bound.loss:.2g}); gradients off by "
            f"{self.compiled.gradient:.2g} compiled, {self.eager.gradient:.2g} eager (bound "
            f"{bound.gradient:.2g}); first step {self.eager_seconds:.1f} s eager, "
            f"{self.compiled_seconds:.1f} s compiled"
        )


def with_runtime(cfg: DictConfig, **settings) -> DictConfig:
    """``cfg`` with these ``runtime`` settings."""
    return OmegaConf.merge(cfg, {"runtime": settings})


def with_narrow_heads(cfg: DictConfig, method: str | None = None) -> DictConfig:
    """``cfg`` with every hidden width of ``method``'s heads (``*hidden_dim``) and fine-tuning's
    head (``finetune.head_hidden``) set to ``NARROW_HEAD``."""
    narrow = {"finetune": {"head_hidden": NARROW_HEAD}}
    if method is not None:
        settings = cfg.method[method]
        hidden = {key: NARROW_HEAD for key in settings if str(key).endswith("hidden_dim")}
        narrow["method"] = {method: hidden}
    return OmegaConf.merge(cfg, narrow)


def without_ties(images: Tensor, scale: float = 1e-6) -> Tensor:
    """``images`` plus Gaussian noise of ``scale`` (seeded): the step off the non-smooth points
    that exact voxel values can put it on (see the module's docstring)."""
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    return images + scale * noise.to(images.dtype)


def in_float64(dataset: TensorBatches) -> TensorBatches:
    """``dataset`` with its floating-point tensors in float64."""
    return TensorBatches(
        **{
            name: tensor.double() if tensor.is_floating_point() else tensor
            for name, tensor in dataset.tensors.items()
        }
    )


def one_step(
    build, cfg: DictConfig, dataset: TensorBatches, batch_size: int, float64: bool = False
) -> StepNumbers:
    """One training step of the module ``build()`` makes (torch's and Python's random state
    seeded before it is built and again before it trains), through Lightning in
    ``cfg.runtime``'s settings (``prepare_module`` included); with ``float64``, the module and
    the batch in float64 (the random draws stay float32's, so the views are the same)."""
    pl.seed_everything(0, verbose=False)
    module = build()
    if float64:
        module.double()
        dataset = in_float64(dataset)
    pl.seed_everything(0, verbose=False)
    numbers = StepNumbers()
    fit_with(cfg, module, dataset, batch_size, 1, [numbers])
    return numbers


def compiled_against_eager(
    name: str, build, cfg: DictConfig, dataset: TensorBatches, batch_size: int
) -> StepDifference:
    """One step of ``build()``'s module eager and one compiled (``runtime.compile=true``) in
    float32, each against the same step eager in float64."""
    eager_cfg = with_runtime(cfg, compile=False)
    reference = one_step(build, eager_cfg, dataset, batch_size, float64=True)
    eager = one_step(build, eager_cfg, dataset, batch_size)
    compiled = one_step(build, with_runtime(cfg, compile=True), dataset, batch_size)
    return StepDifference(
        name=name,
        eager=StepErrors.between(reference, eager),
        compiled=StepErrors.between(reference, compiled),
        eager_seconds=eager.seconds,
        compiled_seconds=compiled.seconds,
    )
