"""Shuffled BatchNorm on one device: BatchNorm statistics per group of a (shuffled) batch.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020,
section 3.3: with BatchNorm, the samples of a batch communicate through its statistics, and a
query can find its positive key by the statistics they share instead of by content. MoCo's code
(and DrasCLR's, which inherits it) trains on G GPUs, so every BatchNorm layer normalises over
one GPU's sub-batch: the query encoder over the sub-batches in data order, the key encoder over
the sub-batches of a shuffled order, shuffled back afterwards. A query and its positive key are
then normalised by two different subsets of the batch.

On one device the same holds when the batch is cut into G groups and each group is run through
the network on its own (as MoCo's single-GPU demo does with its "split" BatchNorm):
``forward_in_groups`` for the queries, ``forward_shuffled`` for the keys. Each group must hold
at least two samples, so a batch of ``n`` forms ``min(G, n // 2)`` groups (a short last batch
of an epoch forms fewer). Under data-parallel training each rank already holds its own batch:
the groups are cut within each rank's batch (``G`` per rank), and SyncBatchNorm must stay off,
since it would pool the statistics of all ranks again.

Running statistics: every group starts from the same running mean and variance, and the layer
keeps the average of the groups' updates, ``(1 - m) * running + m * mean over groups`` (as the
demo's split BatchNorm), counted as one batch; in evaluation mode nothing changes and the
output equals one forward of the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from benchmark.errors import MethodConfigError


def group_count(batch_size: int, groups: int) -> int:
    """How many groups a batch of ``batch_size`` forms: at most ``groups``, each of >= 2."""
    return max(1, min(groups, batch_size // 2))


def forward_in_groups(
    modules: Sequence[nn.Module],
    forward: Callable[[Tensor], Tensor],
    batch: Tensor,
    groups: int,
    order: Tensor | None = None,
) -> Tensor:
    """``forward(batch)`` with the BatchNorm layers of ``modules`` normalising per group.

    The groups are consecutive, near-equal runs of ``batch[order]`` (``order`` defaults to the
    batch order); the output rows are returned in the batch's own order. ``forward`` maps a
    batch of ``k`` samples along dimension 0 to ``k`` rows, and may use only ``modules``'
    BatchNorm layers.
    """
    count = group_count(len(batch), groups)
    if count == 1:
        return forward(batch)
    if order is None:
        order = torch.arange(len(batch), device=batch.device)
    norms = [
        layer for module in modules for layer in module.modules() if isinstance(layer, _BatchNorm)
    ]
    state = _RunningStatistics(norms)
    outputs = []
    try:
        for index in order.tensor_split(count):
            state.restore()
            outputs.append(forward(batch[index]))
            state.record()
    finally:
        state.keep_average()
    return torch.cat(outputs).index_select(0, order.argsort())


def forward_shuffled(
    modules: Sequence[nn.Module],
    forward: Callable[[Tensor], Tensor],
    batch: Tensor,
    groups: int,
    generator: torch.Generator,
) -> Tensor:
    """``forward_in_groups`` over a random order drawn from the CPU ``generator`` (the key
    encoder's side of shuffled BatchNorm). With one group nothing is drawn."""
    if group_count(len(batch), groups) == 1:
        return forward(batch)
    # Asynchronous: a blocking copy to the GPU would make the host wait for the queued step.
    order = torch.randperm(len(batch), generator=generator).to(batch.device, non_blocking=True)
    return forward_in_groups(modules, forward, batch, groups, order)


class _RunningStatistics:
    """The running buffers of BatchNorm layers: every group updates its own copy of them (the
    buffers themselves may be saved for the backward pass of earlier groups, so they are not
    changed in place meanwhile); afterwards the buffers take the copies' average."""

    def __init__(self, norms: Sequence[_BatchNorm]):
        self.norms = [norm for norm in norms if norm.training and norm.track_running_stats]
        self.buffers = [(norm.running_mean, norm.running_var) for norm in self.norms]
        self.batches = [norm.num_batches_tracked.clone() for norm in self.norms]
        self.updates: list[list[tuple[Tensor, Tensor]]] = []

    def restore(self) -> None:
        """Give every layer fresh copies of its buffers as they were before the groups."""
        for norm, (mean, var), batches in zip(self.norms, self.buffers, self.batches):
            norm.running_mean, norm.running_var = mean.clone(), var.clone()
            norm.num_batches_tracked.copy_(batches)  # read by a cumulative (momentum=None) layer

    def record(self) -> None:
        self.updates.append([(norm.running_mean, norm.running_var) for norm in self.norms])

    @torch.no_grad()
    def keep_average(self) -> None:
        """Put the buffers back, holding the average of the groups' updates: one batch more."""
        for position, (norm, (mean, var)) in enumerate(zip(self.norms, self.buffers)):
            norm.running_mean, norm.running_var = mean, var
            if not self.updates:  # the first group failed: the buffers stay as they were
                norm.num_batches_tracked.copy_(self.batches[position])
                continue
            means, variances = zip(*(update[position] for update in self.updates))
            mean.copy_(torch.stack(means).mean(dim=0))
            var.copy_(torch.stack(variances).mean(dim=0))
            norm.num_batches_tracked.copy_(self.batches[position] + 1)


def check_groups(method: str, groups: int) -> None:
    """``MethodConfigError`` unless ``groups`` (``method.<method>.shuffle_bn_groups``) is a
    positive integer."""
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise MethodConfigError(
            f"method.{method}.shuffle_bn_groups={groups!r}: must be a whole number of at least 1 "
            "(1 turns shuffled BatchNorm off; 4 splits a batch of 128 like MoCo's 32 per GPU)"
        )
