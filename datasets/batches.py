"""Batches straight from an in-memory cohort tensor: one indexing operation per batch.

Volumes are small (64^3 float32 = 1 MiB), so a whole cohort lives in memory (on the GPU when it
fits) and a batch is a gather, not a per-sample decode in worker processes (docs/design.md,
"Performance stance"). Augmented views are made later, batched, on the training device.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from benchmark.errors import RuntimeSettingError


class EpochShuffle(Sampler[int]):
    """A permutation of ``range(length)`` that depends only on (seed, epoch), or one rank's
    shard of it.

    Lightning calls ``set_epoch`` before each epoch, so a resumed run sees the same order as an
    uninterrupted one. With ``world_size`` ranks, every rank draws the same permutation, cuts
    it to a multiple of ``world_size`` (leaving out up to ``world_size - 1`` volumes, other
    ones each epoch) and takes every ``world_size``-th volume from position
    ``rank``: the shards are disjoint and equally long, and the ``k``-th batches of all ranks
    together hold the volumes of one device's ``k``-th batch of ``world_size`` times the size
    (all but the last batch, which each rank merges on its own: ``NoSingletonBatches``).
    """

    def __init__(
        self, length: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1
    ):
        self.length, self.seed, self.shuffle, self.epoch = length, seed, shuffle, 0
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        return iter(order[: len(self) * self.world_size][self.rank :: self.world_size])

    def __len__(self) -> int:
        return self.length // self.world_size


def set_loader_epoch(loader: object, epoch: int) -> None:
    """Set the epoch of the ``EpochShuffle`` inside a loader from ``batch_loader`` (others are
    left alone)."""
    for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        for candidate in (sampler, getattr(sampler, "sampler", None)):
            if isinstance(candidate, EpochShuffle):
                candidate.set_epoch(epoch)


class NoSingletonBatches(BatchSampler):
    """Fixed-size batches where a last batch of one joins the batch before it.

    BatchNorm cannot normalise a single sample whose last feature map is 1 voxel.
    """

    def __iter__(self) -> Iterator[list[int]]:
        batches = list(super().__iter__())
        if len(batches) > 1 and len(batches[-1]) == 1:
            last = batches.pop()
            batches[-1] = batches[-1] + last
        return iter(batches)

    def __len__(self) -> int:
        full, rest = divmod(len(self.sampler), self.batch_size)
        return full + (1 if rest > 1 or (rest == 1 and full == 0) else 0)


class TensorBatches(Dataset):
    """Named tensors with a shared first dimension, fetched a whole batch at a time.

    A batch is ``{name: tensor[indices], ..., "index": indices}``.
    """

    def __init__(self, **tensors: Tensor):
        lengths = {len(tensor) for tensor in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(
                f"tensors of different lengths: { {k: len(v) for k, v in tensors.items()} }"
            )
        self.tensors = tensors
        self.length = lengths.pop()

    def __len__(self) -> int:
        return self.length

    @property
    def nbytes(self) -> int:
        return sum(tensor.nbytes for tensor in self.tensors.values())

    def to(self, device: torch.device) -> TensorBatches:
        return TensorBatches(**{name: t.to(device) for name, t in self.tensors.items()})

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        device = next(iter(self.tensors.values())).device
        index = torch.as_tensor(indices, device=device)
        batch = {name: tensor.index_select(0, index) for name, tensor in self.tensors.items()}
        batch["index"] = index
        return batch


def _already_batched(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return batch


PLACEMENTS = ("auto", "always", "never")


def fits_on_device(nbytes: int, device: torch.device, placement: str = "auto") -> bool:
    """Whether a training set of ``nbytes`` should live on ``device`` (a CUDA GPU).

    ``placement`` is ``runtime.cohort_on_device``: ``always``, ``never``, or ``auto`` = when it
    takes at most a quarter of the GPU's free memory, leaving the rest to activations.
    """
    if placement not in PLACEMENTS:
        raise RuntimeSettingError(
            f"runtime.cohort_on_device must be one of {', '.join(PLACEMENTS)}, got {placement!r}"
        )
    if device.type != "cuda" or placement == "never":
        return False
    if placement == "always":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= free // 4


def batch_loader(
    dataset: TensorBatches,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    device: torch.device | None = None,
    placement: str = "auto",
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A DataLoader of whole batches from ``dataset`` (no worker processes needed).

    For a CUDA ``device`` the dataset moves onto the GPU when it fits (``fits_on_device``), so
    a batch is a gather there and nothing crosses the bus per step; otherwise its batches are
    pinned, so that the host-to-device copy is asynchronous. Under data-parallel training each
    rank loads batches of ``batch_size`` from its shard of every epoch (``EpochShuffle``);
    Lightning's distributed sampler is off (``make_trainer``), since this one shards already.
    """
    on_gpu = device is not None and fits_on_device(dataset.nbytes, device, placement)
    if on_gpu:
        dataset = dataset.to(device)
    sampler = EpochShuffle(len(dataset), seed, shuffle, rank, world_size)
    batches = NoSingletonBatches(sampler, batch_size=batch_size, drop_last=False)
    pin = device is not None and device.type == "cuda" and not on_gpu
    return DataLoader(dataset, batch_sampler=batches, collate_fn=_already_batched, pin_memory=pin)
