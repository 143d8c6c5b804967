"""Batches straight from an in-memory cohort tensor: one indexing operation per batch.

Volumes are small (64^3 float32 = 1 MiB), so a whole cohort lives in memory (on the GPU when it
fits) and a batch is a gather, not a per-sample decode in worker processes (DESIGN.md,
"Performance stance"). Augmented views are made later, batched, on the training device.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler


class EpochShuffle(Sampler[int]):
    """A permutation of ``range(length)`` that depends only on (seed, epoch).

    Lightning calls ``set_epoch`` before each epoch, so a resumed run sees the same order as an
    uninterrupted one.
    """

    def __init__(self, length: int, seed: int, shuffle: bool = True):
        self.length, self.seed, self.shuffle, self.epoch = length, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.length))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


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

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        device = next(iter(self.tensors.values())).device
        index = torch.as_tensor(indices, device=device)
        batch = {name: tensor.index_select(0, index) for name, tensor in self.tensors.items()}
        batch["index"] = index
        return batch


def _already_batched(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return batch


def batch_loader(
    dataset: TensorBatches, batch_size: int, seed: int, shuffle: bool = True
) -> DataLoader:
    """A DataLoader of whole batches from ``dataset`` (no worker processes needed)."""
    sampler = EpochShuffle(len(dataset), seed, shuffle)
    batches = NoSingletonBatches(sampler, batch_size=batch_size, drop_last=False)
    return DataLoader(dataset, batch_sampler=batches, collate_fn=_already_batched)
