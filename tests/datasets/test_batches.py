"""Batches from an in-memory tensor: order per epoch, no batch of one."""

import torch
from benchmark.datasets.batches import TensorBatches, batch_loader


def test_every_volume_once_per_epoch_and_order_depends_on_epoch():
    images = torch.arange(10.0).view(10, 1, 1, 1, 1)
    loader = batch_loader(TensorBatches(image=images), batch_size=4, seed=0)
    first = torch.cat([b["index"] for b in loader])
    assert sorted(first.tolist()) == list(range(10))
    loader.batch_sampler.sampler.set_epoch(1)
    second = torch.cat([b["index"] for b in loader])
    assert sorted(second.tolist()) == list(range(10)) and not torch.equal(first, second)
    loader.batch_sampler.sampler.set_epoch(0)
    assert torch.equal(torch.cat([b["index"] for b in loader]), first)


def test_batch_holds_the_indexed_rows_of_every_tensor():
    images, labels = torch.randn(6, 1, 2, 2, 2), torch.tensor([0, 1, 0, 1, 1, 0])
    for batch in batch_loader(TensorBatches(image=images, label=labels), 4, seed=1):
        assert torch.equal(batch["image"], images[batch["index"]])
        assert torch.equal(batch["label"], labels[batch["index"]])


def test_a_trailing_batch_of_one_joins_the_previous_batch():
    loader = batch_loader(TensorBatches(image=torch.zeros(9, 1, 1, 1, 1)), batch_size=4, seed=0)
    assert [len(b["index"]) for b in loader] == [4, 5]
    assert len(loader) == 2
