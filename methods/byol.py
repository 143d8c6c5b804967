"""BYOL on the shared 3D ResNet18."""

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from torch import Tensor

from benchmark.errors import MethodConfigError
from benchmark.method import TwoViewMethod
from benchmark.nn.backbone import ResNet18
from benchmark.nn.momentum import MomentumCopy, check_momentum, scheduled_momentum
from benchmark.registry import register_method


@register_method("byol")
class BYOL(TwoViewMethod):
    """BYOL: an online network predicts an EMA target's projection of another view.

    Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
    NeurIPS 2020. Online network: backbone -> projector -> predictor. Target network: EMA
    copies of the backbone and projector, never trained by gradients, whose momentum follows
    a cosine from ``momentum_start`` to ``momentum_end`` (1) over the run's optimiser steps.
    Loss: negative cosine similarity between the online prediction of one view and the target
    projection of the other, averaged over both directions (the paper's 2 - 2 cos summed over
    both, up to a constant and a factor). The target's BatchNorm normalises with batch
    statistics and keeps its own running statistics (``benchmark.nn.momentum``).
    """

    reference = "Grill et al., NeurIPS 2020 (arXiv:2006.07733)"
    batch_statistics = "BatchNorm in its projector and predictor normalises over the batch"

    def __init__(self, backbone, settings, training):
        super().__init__(backbone, settings, training)
        check_momentum("byol", settings.momentum_start, settings.momentum_end)
        if settings.encoder not in ("online", "target"):
            raise MethodConfigError(
                f"method.byol.encoder must be 'online' or 'target', got {settings.encoder!r}"
            )
        hidden, output = settings.projection_hidden_dim, settings.projection_output_dim
        self.projection = BYOLProjectionHead(backbone.feature_dim, hidden, output)
        self.prediction = BYOLPredictionHead(output, settings.prediction_hidden_dim, output)
        self.target = MomentumCopy(self, ["backbone", "projection"])
        self.criterion = NegativeCosineSimilarity()
        self.last_momentum = settings.momentum_start

    @property
    def encoder(self) -> ResNet18:
        """The online backbone (the paper's choice), or the target's with ``encoder: target``."""
        return self.target["backbone"] if self.settings.encoder == "target" else self.backbone

    def pretraining_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        views = self.two_views(batch["image"])
        projections = [self.project(view) for view in views]
        predictions = [self.prediction(projection) for projection in projections]
        with torch.no_grad():
            targets = [self.target["projection"](self.target["backbone"](v)) for v in views]
        loss = 0.5 * (
            self.criterion(predictions[0], targets[1]) + self.criterion(predictions[1], targets[0])
        )
        return {"loss": loss, "embedding_std": self.embedding_std(projections[0])}

    def on_train_batch_end(self, outputs, batch, batch_index) -> None:
        start, end = self.settings.momentum_start, self.settings.momentum_end
        self.last_momentum = scheduled_momentum(self, start, end)
        self.target.update_from(self, self.last_momentum)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        # Once per epoch: Lightning copies a logged Python float to the device, a host sync.
        self.log("train_momentum", self.last_momentum)
