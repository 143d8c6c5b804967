"""Contrastive losses with fixed shapes: SimCLR's NT-Xent and MoCo's InfoNCE against a queue.

The same losses as lightly's ``NTXentLoss`` (without and with its memory bank), written so that
no operation's output shape depends on the data and nothing is read back to the host: on a GPU
a step queues its kernels and never waits. lightly drops the similarity of each embedding with
itself by boolean-mask indexing (``logits[~diag_mask]``: a ``nonzero`` and a host sync, forward
and backward) and moves its queue pointer through a Python int (a scalar read every step). Here
the self-similarity is masked to ``-inf`` (softmax weight 0, the same cross-entropy and
gradient), and the queue's slots are computed on the device from a device pointer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.utils import dist
from torch import Tensor, nn


def nt_xent(first: Tensor, second: Tensor, temperature: float, gather: bool = False) -> Tensor:
    """NT-Xent of two views' embeddings ``first, second [B, D]`` (Chen et al., "A Simple
    Framework for Contrastive Learning of Visual Representations", ICML 2020, eq. 1).

    Each of the 2B embeddings (cosine similarity / temperature) must pick its partner view among
    every other embedding; the loss is the mean cross-entropy over the 2B. With ``gather`` under
    data-parallel training, the other ranks' embeddings are negatives too (lightly's
    ``gather_distributed``; gradients flow through the gather).
    """
    first, second = F.normalize(first, dim=1), F.normalize(second, dim=1)
    batch = first.shape[0]
    if gather and dist.world_size() > 1:
        every_first, every_second = torch.cat(dist.gather(first)), torch.cat(dist.gather(second))
        offset = dist.rank() * batch
    else:
        every_first, every_second, offset = first, second, 0
    total = every_first.shape[0]
    anchors = torch.cat([first, second])  # [2B, D]
    candidates = torch.cat([every_second, every_first])  # [2N, D]
    logits = anchors @ candidates.T / temperature  # [2B, 2N]
    own = offset + torch.arange(batch, device=first.device)  # this rank's rows among the N
    partner = torch.cat([own, own + total])  # first[i] -> second[i], second[i] -> first[i]
    itself = torch.cat([own + total, own])
    is_itself = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, itself[:, None], True)
    return F.cross_entropy(logits.masked_fill(is_itself, float("-inf")), partner)


def info_nce(queries: Tensor, keys: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """MoCo's InfoNCE (He et al., "Momentum Contrast for Unsupervised Visual Representation
    Learning", CVPR 2020, eq. 1): unit ``queries, keys [B, D]``, unit ``negatives [K, D]``.

    Logits: the positive ``q . k`` then the negatives ``q . queue`` over the temperature;
    cross-entropy with the positive as class 0, averaged over the batch.
    """
    positive = (queries * keys).sum(dim=1, keepdim=True)  # [B, 1]
    negative = queries @ negatives.T  # [B, K]
    logits = torch.cat([positive, negative], dim=1) / temperature
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)


class KeyQueue(nn.Module):
    """MoCo's queue of the last ``size`` keys, ``keys [size, dim]``, starting as random unit
    vectors (He et al. 2020, section 3.1). ``push`` overwrites the oldest keys in place, at
    slots computed on the device; with ``gather`` the keys of every data-parallel rank are
    pushed, so each rank holds the queue a single device would. Both buffers are in the state
    dict, so a resumed run continues with its queue.
    """

    def __init__(self, size: int, dim: int, gather: bool = False):
        super().__init__()
        self.gather = gather
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: Tensor) -> None:
        """Enqueue ``keys [B, D]`` (unit vectors) in place of the oldest ones."""
        if self.gather and dist.world_size() > 1:
            keys = torch.cat(dist.gather(keys))
        size = self.keys.shape[0]
        keys = keys[-size:]
        slots = (self.pointer + torch.arange(keys.shape[0], device=keys.device)) % size
        self.keys.index_copy_(0, slots, keys.to(self.keys.dtype))
        self.pointer.copy_((self.pointer + keys.shape[0]) % size)
