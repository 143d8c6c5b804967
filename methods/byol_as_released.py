"""BYOL/SimSiam as the reference code of Bhattacharya et al. (2024) ran them."""

from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLProjectionHead
from torch import Tensor

from benchmark.method import TwoViewMethod
from benchmark.registry import register_method


@register_method("byol_as_released")
class BYOLAsReleased(TwoViewMethod):
    """The reference code's "BYOL"/"SimSiam": a siamese projector, no predictor, no EMA target.

    Not a published method: the code path that produced the BYOL and SimSiam numbers of
    Bhattacharya et al. (Int J CARS 2024), per docs/protocol.md. One network (backbone -> BYOL
    projector) embeds both views; loss: negative cosine similarity between the projections,
    the other view's projection taken as a constant (stop-gradient), averaged over both
    directions. Without BYOL's predictor and EMA target, or SimSiam's predictor, nothing
    prevents collapse (Chen & He 2021, Table 1): watch ``embedding_std``. Here to measure the
    gap between the published numbers and the faithful ``byol`` and ``simsiam``.
    """

    reference = "as released with Bhattacharya et al., Int J CARS 2024; see byol and simsiam"
    batch_statistics = "BatchNorm in its projector normalises over the batch"

    def __init__(self, backbone, settings, training):
        super().__init__(backbone, settings, training)
        self.projection = BYOLProjectionHead(
            backbone.feature_dim, settings.projection_hidden_dim, settings.projection_output_dim
        )
        self.criterion = NegativeCosineSimilarity()

    def pretraining_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        first, second = (self.project(view) for view in self.two_views(batch["image"]))
        loss = 0.5 * (
            self.criterion(first, second.detach()) + self.criterion(second, first.detach())
        )
        return {"loss": loss, "embedding_std": self.embedding_std(first)}
