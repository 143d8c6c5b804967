"""SimCLR on the shared 3D ResNet18."""

from lightly.models.modules import SimCLRProjectionHead
from torch import Tensor

from benchmark.errors import MethodConfigError
from benchmark.method import TwoViewMethod
from benchmark.nn.contrastive import nt_xent
from benchmark.registry import register_method


@register_method("simclr")
class SimCLR(TwoViewMethod):
    """SimCLR: two augmented views of a volume attract, every other volume repels (NT-Xent).

    Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
    ICML 2020. Projector 512-512-512 and temperature 0.07 as in Bhattacharya et al. 2024. The
    loss is ``benchmark.nn.contrastive.nt_xent`` (lightly's ``NTXentLoss`` in value and gradient,
    with fixed shapes: no host sync in a step).
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

    def pretraining_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        z_first, z_second = (self.project(view) for view in self.two_views(batch["image"]))
        return {
            # gather: under data-parallel training every rank's volumes are negatives.
            "loss": nt_xent(z_first, z_second, self.settings.temperature, gather=True),
            "embedding_std": self.embedding_std(z_first),
        }
