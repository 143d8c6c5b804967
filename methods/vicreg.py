"""VICReg on the shared 3D ResNet18."""

from lightly.loss import VICRegLoss
from lightly.models.modules.heads import VICRegProjectionHead
from torch import Tensor

from benchmark.method import SSLMethod
from benchmark.registry import register_method


@register_method("vicreg")
class VICReg(SSLMethod):
    """VICReg: invariance between views, variance kept above 1, covariance driven to 0.

    Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
    Self-Supervised Learning", ICLR 2022. One network (backbone -> 3-layer expander) embeds
    both views; the loss is a weighted sum of the mean squared distance between the two views'
    embeddings, a hinge keeping each dimension's std over the batch above 1, and the squared
    off-diagonal covariances.
    """

    reference = "Bardes et al., ICLR 2022 (arXiv:2105.04906)"

    def __init__(self, backbone, settings, training):
        super().__init__(backbone, settings, training)
        self.projection = VICRegProjectionHead(
            backbone.feature_dim, settings.projection_hidden_dim, settings.projection_output_dim
        )
        self.criterion = VICRegLoss(
            lambda_param=settings.invariance_weight,
            mu_param=settings.variance_weight,
            nu_param=settings.covariance_weight,
            gather_distributed=True,  # variance and covariance over every rank's embeddings
        )

    def check_settings(self, batch_size: int) -> None:
        self.require_batches_of(
            batch_size, 2, "its variance and covariance terms are statistics over the batch"
        )

    def pretraining_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        images = batch["image"]
        views = [self.augment(images)[0] for _ in range(2)]
        first, second = (self.projection(self.backbone(view)) for view in views)
        return {"loss": self.criterion(first, second), "embedding_std": self.embedding_std(first)}
