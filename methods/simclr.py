"""SimCLR on the shared 3D ResNet18."""

from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import Tensor

from benchmark.errors import MethodConfigError
from benchmark.method import TwoViewMethod
from benchmark.registry import register_method


@register_method("simclr")
class SimCLR(TwoViewMethod):
    """SimCLR: two augmented views of a volume attract, every other volume repels (NT-Xent).

    Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
    ICML 2020. Projector 512-512-512 and temperature 0.07 as in Bhattacharya et al. 2024.
    """

    reference = "Chen et al., ICML 2020 (arXiv:2002.05709)"
    batch_statistics = "the other volumes of a batch are the negatives"

    def __init__(self, backbone, settings, training):
        super().__init__(backbone, settings, training)
        if settings.temperature <= 0:
            raise MethodConfigError(
                f"method.simclr.temperature must be positive, got {settings.temperature}"
            )
        self.projection = SimCLRProjectionHead(
            backbone.feature_dim, settings.projection_hidden_dim, settings.projection_output_dim
        )
        # gather_distributed: under data-parallel training every rank's volumes are negatives.
        self.criterion = NTXentLoss(temperature=settings.temperature, gather_distributed=True)

    def pretraining_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        z_first, z_second = (self.project(view) for view in self.two_views(batch["image"]))
        return {
            "loss": self.criterion(z_first, z_second),
            "embedding_std": self.embedding_std(z_first),
        }
