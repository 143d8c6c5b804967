"""Barlow Twins on the shared 3D ResNet18."""

from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead
from torch import Tensor

from benchmark.method import TwoViewMethod
from benchmark.registry import register_method


@register_method("barlow_twins")
class BarlowTwins(TwoViewMethod):
    """Barlow Twins: the two views' embeddings have an identity cross-correlation matrix.

    Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
    ICML 2021. One network (backbone -> 3-layer projector) embeds both views; each embedding
    dimension is standardised over the batch, and the loss drives the cross-correlation of the
    two views to the identity: diagonal to 1 (invariance), off-diagonal to 0, weighted by
    ``redundancy_weight`` (redundancy reduction).
    """

    reference = "Zbontar et al., ICML 2021 (arXiv:2103.03230)"
    batch_statistics = "its loss standardises every embedding dimension over the batch"

    def __init__(self, backbone, settings, training):
        super().__init__(backbone, settings, training)
        self.projection = BarlowTwinsProjectionHead(
            backbone.feature_dim, settings.projection_hidden_dim, settings.projection_output_dim
        )
        # gather_distributed: under data-parallel training the cross-correlation is averaged
        # over the ranks (each rank standardises its own share of the batch, as lightly does).
        self.criterion = BarlowTwinsLoss(
            lambda_param=settings.redundancy_weight, gather_distributed=True
        )

    def pretraining_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        first, second = (self.project(view) for view in self.two_views(batch["image"]))
        return {"loss": self.criterion(first, second), "embedding_std": self.embedding_std(first)}
