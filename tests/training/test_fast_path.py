"""The fast data path and the fast formats change the speed, not the numbers.

- A batch gathered from the in-memory cohort is the batch a per-sample DataLoader would stack.
- Views made for a whole batch at once are the views made one volume at a time with the same
  parameters (so the same seed gives the same batch of views on either path).
- channels_last_3d (CPU and GPU) and bf16 autocast (GPU: on the CPU it is refused, see the
  last test) change one training step's loss and gradient by no more than the stated
  tolerances. Whole smoke runs are not compared cell by cell: with batches of
  a few volumes and BatchNorm, any rounding difference (another GPU, another library version)
  sends two runs down different trajectories, so per-cell metrics differ by chance.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from benchmark.datasets.batches import EpochShuffle, NoSingletonBatches, TensorBatches, batch_loader
from benchmark.datasets.views import Views, draw_view_parameters
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from benchmark.config import load_config
from benchmark.nn.optimizers import build_optimizer, fused_optimizer
from benchmark.testing import smoke_data
from benchmark.training.pretrain import build_method
from benchmark.training.runtime import (
    RuntimeSettingError,
    prepare_module,
    resolve_precision,
)

# Stated tolerances of one SimCLR training step at the smoke size, relative to fp32 contiguous.
CHANNELS_LAST_LOSS_RTOL = 1e-4  # same arithmetic in another order
CHANNELS_LAST_GRAD_COSINE = 0.9999
# bf16 keeps 8 bits of mantissa, and NT-Xent at temperature 0.07 on eight volumes amplifies
# rounding: the first step's gradient agrees with fp32 at a cosine of about 0.8 (0.75-0.98 per
# layer). The bound accepts that rounding and rejects a broken cast (cosine near 0).
BF16_LOSS_RTOL = 3e-2
BF16_GRAD_COSINE = 0.7


class OneVolumeAtATime(Dataset):
    """The reference path: a dataset of single volumes, stacked by the default collate."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "label": self.labels[index], "index": index}


def test_gathered_batches_are_the_batches_a_per_sample_loader_stacks():
    images = torch.randn(11, 1, 6, 6, 6)
    labels = torch.randint(0, 2, (11,))
    fast = batch_loader(TensorBatches(image=images, label=labels), 4, seed=3)
    reference = DataLoader(
        OneVolumeAtATime(images, labels),
        batch_sampler=NoSingletonBatches(EpochShuffle(11, seed=3), batch_size=4, drop_last=False),
    )
    for epoch in (0, 1):
        fast.batch_sampler.sampler.set_epoch(epoch)
        reference.batch_sampler.sampler.set_epoch(epoch)
        pairs = list(zip(fast, reference, strict=True))
        for gathered, stacked in pairs:
            assert torch.equal(gathered["index"], stacked["index"])
            assert torch.equal(gathered["image"], stacked["image"])
            assert torch.equal(gathered["label"], stacked["label"])


@pytest.mark.parametrize("preset", ["paper", "contrastive", "light"])
def test_batched_views_are_the_views_made_one_volume_at_a_time(preset):
    views = Views.from_config({"preset": preset})
    images = torch.rand(6, 1, 12, 12, 12)
    parameters = draw_view_parameters(
        views.settings, 6, images.shape[2:], torch.Generator().manual_seed(7)
    )
    # Noise is one field per batch from a device generator; its per-sample law is tested in
    # test_views. Everything else must agree volume by volume.
    parameters = dataclasses.replace(parameters, noise_std=torch.zeros(6, dtype=torch.float64))
    batched, _ = views.apply(images, None, parameters)
    for i in range(6):
        alone = dataclasses.replace(
            parameters,
            **{
                field.name: getattr(parameters, field.name)[i : i + 1]
                for field in dataclasses.fields(parameters)
                if field.name != "noise_seed"
            },
        )
        single, _ = views.apply(images[i : i + 1], None, alone)
        torch.testing.assert_close(batched[i : i + 1], single, atol=1e-5, rtol=1e-5)


def _one_step(device: str, channels_last: bool, bf16: bool) -> tuple[float, torch.Tensor]:
    """Loss and flattened gradient of one SimCLR step on eight smoke phantom volumes."""
    cfg = load_config("smoke", methods=["simclr"])
    pl.seed_everything(0, verbose=False)
    module = build_method(cfg, "simclr").to(device)
    prepare_module(module, OmegaConf.merge(cfg.runtime, {"channels_last": channels_last}))
    _, data, _ = smoke_data()
    batch = {"image": data.images(range(8)).to(device), "index": torch.arange(8)}
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        loss = module.pretraining_loss(batch)["loss"]
    loss.float().backward()
    gradient = torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])
    return float(loss.detach()), gradient.float().cpu()


def _within_tolerance(device: str, channels_last: bool, bf16: bool, loss_rtol, cosine) -> None:
    reference_loss, reference_gradient = _one_step(device, channels_last=False, bf16=False)
    loss, gradient = _one_step(device, channels_last, bf16)
    assert loss == pytest.approx(reference_loss, rel=loss_rtol), (channels_last, bf16)
    agreement = torch.nn.functional.cosine_similarity(gradient, reference_gradient, dim=0)
    assert agreement > cosine, (channels_last, bf16, float(agreement))


def test_channels_last_keeps_a_training_step_within_tolerance():
    _within_tolerance("cpu", True, False, CHANNELS_LAST_LOSS_RTOL, CHANNELS_LAST_GRAD_COSINE)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_bf16_and_channels_last_keep_a_training_step_within_tolerance_on_the_gpu():
    _within_tolerance("cuda", True, True, BF16_LOSS_RTOL, BF16_GRAD_COSINE)


def test_mixed_precision_is_refused_on_the_cpu():
    """torch's CPU autocast of the 3D convolutions' backward gave gradients of 1e33 or NaN at
    random on this machine (and 1e1 on other attempts), so bf16 runs on GPUs only."""
    runtime = load_config("smoke").runtime
    for precision in ("bf16-mixed", "16-mixed"):
        with pytest.raises(RuntimeSettingError, match="on the CPU"):
            resolve_precision(
                OmegaConf.merge(runtime, {"precision": precision}), torch.device("cpu")
            )
    assert resolve_precision(runtime, torch.device("cpu")) == "32-true"


FREE_A_LARGE_TENSOR = """
import sys, torch
from omegaconf import OmegaConf
from benchmark.training.runtime import apply_host_settings
apply_host_settings(OmegaConf.create({"threads": 1, "keep_host_memory": sys.argv[1] == "keep"}))
def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
block = torch.ones(4 * 2**20)  # 16 MiB, touched
before = resident_mb()
del block
print(before - resident_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_host_memory_keeps_freed_blocks_for_the_next_step():
    """With ``runtime.keep_host_memory`` a freed 16 MiB tensor stays in the process for reuse
    (no page faults when the next step allocates it again); by default glibc returns it."""

    def released_mb(setting: str) -> float:
        command = [sys.executable, "-c", FREE_A_LARGE_TENSOR, setting]
        return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout)

    assert released_mb("default") > 12
    assert released_mb("keep") < 1


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_fused_optimizer_steps_as_the_default_loop(name):
    """``runtime.fused_optimizer`` gives torch's fused kernel (one call for all parameters) and
    the parameters it reaches are those of the per-parameter loop, within rounding (in float64:
    in float32, Adam's step of lr on parameters whose gradient is rounding noise differs)."""
    cfg = load_config("smoke", methods=["simclr"])
    _, data, _ = smoke_data()
    batch = {"image": data.images(range(8)).double(), "index": torch.arange(8)}
    settings = OmegaConf.create({"lr": 1e-2, "momentum": 0.9})
    trained = []
    for fused in (False, True):
        pl.seed_everything(0, verbose=False)
        module = build_method(cfg, "simclr").double()
        prepare_module(module, OmegaConf.merge(cfg.runtime, {"fused_optimizer": fused}))
        groups = [{"params": list(module.parameters()), "weight_decay": 1e-4}]
        optimizer = build_optimizer(name, groups, settings, fused_optimizer(module))
        assert bool(optimizer.defaults.get("fused")) is fused
        for _ in range(3):  # the module's own view stream: the same views in both runs
            module.pretraining_loss(batch)["loss"].backward()
            optimizer.step()
            optimizer.zero_grad()
        trained.append(torch.cat([p.detach().flatten() for p in module.parameters()]))
    torch.testing.assert_close(trained[1], trained[0], rtol=1e-7, atol=1e-9)
