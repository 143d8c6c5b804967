"""SimSiam on the shared 3D ResNet18."""

from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead
from torch import Tensor

from benchmark.method import TwoViewMethod
from benchmark.registry import register_method


@register_method("simsiam")
class SimSiam(TwoViewMethod):
    """SimSiam: one view's prediction matches the other's projection, with a stop-gradient.

    Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021. One network
    (backbone -> 3-layer projector with BatchNorm) for both views, a bottleneck predictor on
    top; loss: negative cosine similarity between the prediction of one view and the
    projection of the other, whose gradient is stopped, averaged over both directions.
    ``embedding_std`` (std of the L2-normalised projection) falls to 0 if it collapses.
    """

    reference = "Chen & He, CVPR 2021 (arXiv:2011.10566)"
    batch_statistics = "BatchNorm in its projector and predictor normalises over the batch"

    def __init__(self, backbone, settings, training):
        super().__init__(backbone, settings, training)
        hidden, output = settings.projection_hidden_dim, settings.projection_output_dim
        self.projection = SimSiamProjectionHead(backbone.feature_dim, hidden, output)
        self.prediction = SimSiamPredictionHead(output, settings.prediction_hidden_dim, output)
        self.criterion = NegativeCosineSimilarity()

    def pretraining_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        projections = [self.project(view) for view in self.two_views(batch["image"])]
        predictions = [self.prediction(projection) for projection in projections]
        loss = 0.5 * (
            self.criterion(predictions[0], projections[1].detach())
            + self.criterion(predictions[1], projections[0].detach())
        )
        return {"loss": loss, "embedding_std": self.embedding_std(projections[0])}
