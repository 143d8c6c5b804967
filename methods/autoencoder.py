"""The autoencoder baseline of Bhattacharya et al. (Int J CARS 2024)."""

from torch import Tensor

from benchmark.errors import MethodConfigError
from benchmark.method import SSLMethod
from benchmark.nn.decoders import LOSSES, UNetDecoder, volume_loss
from benchmark.registry import register_method


@register_method("autoencoder")
class Autoencoder(SSLMethod):
    """Autoencoder: the ResNet18 and a decoder reconstruct the (augmented) input volume.

    The reconstruction baseline of Bhattacharya et al., "Self-supervised learning for
    classifying paranasal anomalies in the maxillary sinus", Int J CARS 2024: in their
    reference code a decoder without skip connections and an L1 loss. It shares its decoder
    with the residual method (``benchmark/nn/decoders.py``).
    """

    reference = "baseline of Bhattacharya et al., Int J CARS 2024 (reference code)"

    def __init__(self, backbone, settings, training):
        super().__init__(backbone, settings, training)
        self.decoder = UNetDecoder(
            backbone.widths, out_channels=1, skip_connections=settings.skip_connections
        )

    def check_settings(self, batch_size: int) -> None:
        if self.settings.loss not in LOSSES:
            raise MethodConfigError(
                f"method.{self.name}.loss must be one of {', '.join(LOSSES)}, "
                f"got {self.settings.loss!r}"
            )

    def reconstruct(self, images: Tensor) -> Tensor:
        """The decoder's volume ``[B, 1, S, S, S]`` for input volumes ``[B, 1, S, S, S]``."""
        return self.decoder(self.backbone.feature_maps(images))

    def pretraining_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        view, _ = self.augment(batch["image"])
        return {"loss": volume_loss(self.settings.loss, self.reconstruct(view), view)}
