"""SimCLR's NT-Xent and MoCo's InfoNCE with a queue equal lightly's ``NTXentLoss`` (the
independent implementation) in value and gradient, with fixed shapes."""

import pytest
import torch
from lightly.loss import NTXentLoss

from benchmark.nn.contrastive import KeyQueue, info_nce, nt_xent
from benchmark.tools.sync_audit import SyncRecorder


def embeddings(*shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()


@pytest.mark.parametrize("batch, temperature", [(2, 0.07), (7, 0.5)])
def test_nt_xent_equals_lightlys_in_value_and_gradient(batch, temperature):
    ours = [embeddings(batch, 16, seed=seed) for seed in (1, 2)]
    theirs = [tensor.detach().clone().requires_grad_() for tensor in ours]
    loss = nt_xent(*ours, temperature, gather=True)
    expected = NTXentLoss(temperature=temperature, gather_distributed=True)(*theirs)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected)
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine.grad, reference.grad)


def test_infonce_with_a_queue_equals_lightlys_memory_bank_over_steps_that_wrap_the_queue():
    size, dim, batch, temperature = 12, 8, 4, 0.2
    lightly_loss = NTXentLoss(temperature=temperature, memory_bank_size=(size, dim)).double()
    queue = KeyQueue(size, dim, gather=True).double()
    queue.keys.copy_(lightly_loss.memory_bank.bank)
    for step in range(5):  # 20 keys through a queue of 12: it wraps around
        queries = embeddings(batch, dim, seed=2 * step)
        keys = embeddings(batch, dim, seed=2 * step + 1).detach()
        theirs = queries.detach().clone().requires_grad_()
        unit_keys = torch.nn.functional.normalize(keys, dim=1)
        unit_queries = torch.nn.functional.normalize(queries, dim=1)
        loss = info_nce(unit_queries, unit_keys, queue.keys.clone(), temperature)
        queue.push(unit_keys)
        expected = lightly_loss(theirs, keys)  # pushes the keys too
        loss.backward()
        expected.backward()
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(queries.grad, theirs.grad)
        torch.testing.assert_close(queue.keys, lightly_loss.memory_bank.bank)
    assert int(queue.pointer) == 20 % size


def test_neither_loss_nor_its_gradient_nor_the_push_would_wait_for_a_gpu():
    first, second = embeddings(5, 4, seed=0), embeddings(5, 4, seed=1)
    queue = KeyQueue(10, 4)
    recorder = SyncRecorder()
    recorder.device_tensors.add([first, second, queue.keys, queue.pointer])
    recorder.start()
    try:
        loss = nt_xent(first, first, 0.1)  # identical views: the masked self must not give NaN
        loss = loss + info_nce(first, second, queue.keys.clone().double(), 0.1)
        loss.backward()
        queue.push(second.detach().float())
    finally:
        recorder.stop()
    assert not recorder.findings, "\n".join(map(str, recorder.findings))
    assert torch.isfinite(loss) and torch.isfinite(first.grad).all()
