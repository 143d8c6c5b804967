"""MoCo v2 on the shared 3D ResNet18."""

import torch
import torch.nn.functional as F
from lightly.models.modules import MoCoProjectionHead
from torch import Tensor

from benchmark.errors import MethodConfigError
from benchmark.method import TwoViewMethod
from benchmark.nn.contrastive import KeyQueue, info_nce
from benchmark.nn.momentum import MomentumCopy, check_momentum, scheduled_momentum
from benchmark.nn.shuffled_batchnorm import check_groups, forward_in_groups, forward_shuffled
from benchmark.registry import register_method


@register_method("moco")
class MoCo(TwoViewMethod):
    """MoCo v2: a query must find its key, from a momentum encoder, among a queue of old keys.

    He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020,
    with the MLP projector and settings of Chen et al., "Improved Baselines with Momentum
    Contrastive Learning" (MoCo v2), arXiv:2003.04297. The query encoder (backbone -> MLP) sees
    one view; its EMA copy (constant momentum) embeds the other as the positive key; InfoNCE
    contrasts it against the queue of the last ``queue_size`` keys, into which the batch's keys
    are then pushed (``benchmark.nn.contrastive``: lightly's ``NTXentLoss`` with a memory bank
    in value and gradient, with fixed shapes and a device-side queue pointer: no host sync).

    Shuffled BatchNorm (section 3.3): as on MoCo's ``shuffle_bn_groups`` GPUs, queries are
    normalised per group of the batch and keys per group of a shuffled batch, so a query and
    its positive key never share their batch statistics (``benchmark/nn/shuffled_batchnorm.py``).
    """

    reference = "He et al., CVPR 2020; Chen et al., arXiv:2003.04297 (v2)"
    batch_statistics = "BatchNorm in the backbone normalises over the batch"
    # MoCo's code keeps each GPU's BatchNorm to its own sub-batch; SyncBatchNorm would pool the
    # ranks' statistics and give the key encoder the query's batch again.
    sync_batchnorm = False

    def __init__(self, backbone, settings, training):
        super().__init__(backbone, settings, training)
        check_momentum("moco", settings.momentum_start, settings.momentum_end)
        check_groups("moco", settings.shuffle_bn_groups)
        if settings.temperature <= 0:
            raise MethodConfigError(
                f"method.moco.temperature must be positive, got {settings.temperature}"
            )
        self.projection = MoCoProjectionHead(
            backbone.feature_dim, settings.projection_hidden_dim, settings.projection_output_dim
        )
        self.target = MomentumCopy(self, ["backbone", "projection"])
        # gather: under data-parallel training every rank pushes the keys of the whole batch.
        self.queue = KeyQueue(settings.queue_size, settings.projection_output_dim, gather=True)
        self.last_momentum = settings.momentum_start

    def check_settings(self, batch_size: int) -> None:
        super().check_settings(batch_size)
        settings = self.settings
        if settings.queue_size <= 0 or settings.queue_size % batch_size:
            raise MethodConfigError(
                f"method.moco.queue_size ({settings.queue_size}) must be a positive multiple of "
                f"the batch size ({batch_size}), so every batch of keys fits the queue whole; "
                f"set it to e.g. {max(1, settings.queue_size // batch_size) * batch_size}"
            )

    def prepare(self, context) -> None:
        if self.settings.queue_size > len(context.pool_rows):
            context.log(
                f"moco: the queue ({self.settings.queue_size} keys) is longer than the "
                f"pretraining pool ({len(context.pool_rows)} volumes), so it holds older keys "
                "of the same volumes; MoCo v2's queue held 5 % of ImageNet"
            )

    def pretraining_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        first, second = self.two_views(batch["image"])
        groups = int(self.settings.shuffle_bn_groups)
        queries = forward_in_groups([self.backbone, self.projection], self.project, first, groups)
        with torch.no_grad():
            keys = forward_shuffled([self.target], self.embed_keys, second, groups, self.rng)
        keys = F.normalize(keys, dim=1)
        # a copy: the push below overwrites the queue the backward pass reads
        negatives = self.queue.keys.clone()
        loss = info_nce(F.normalize(queries, dim=1), keys, negatives, self.settings.temperature)
        if self.training:
            self.queue.push(keys)
        return {"loss": loss, "embedding_std": self.embedding_std(queries)}

    def embed_keys(self, views: Tensor) -> Tensor:
        """The momentum encoder's keys ``[B, D]`` of views ``[B, 1, S, S, S]``."""
        return self.target["projection"](self.target["backbone"](views))

    def on_train_batch_end(self, outputs, batch, batch_index) -> None:
        start, end = self.settings.momentum_start, self.settings.momentum_end
        self.last_momentum = scheduled_momentum(self, start, end)
        self.target.update_from(self, self.last_momentum)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        # Once per epoch: Lightning copies a logged Python float to the device, a host sync.
        self.log("train_momentum", self.last_momentum)
