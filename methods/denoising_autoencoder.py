"""The denoising-autoencoder baseline of Bhattacharya et al. (Int J CARS 2024)."""

from benchmark.methods.autoencoder import Autoencoder
from torch import Tensor

from benchmark.nn.decoders import volume_loss
from benchmark.registry import register_method


@register_method("denoising_autoencoder")
class DenoisingAutoencoder(Autoencoder):
    """Denoising autoencoder: reconstruct the clean volume from a noisy view of it.

    The denoising baseline of Bhattacharya et al., Int J CARS 2024 (reference code: a U-Net
    with skip connections, Gaussian noise of std up to 0.6 on the input only, L1 loss); the
    autoencoder's decoder with another target. The corruption is the ``views`` noise, an
    intensity operation, so it touches the input only, while spatial augmentations move input
    and target together: the target is the clean view.
    """

    reference = "baseline of Bhattacharya et al., Int J CARS 2024 (reference code)"

    def pretraining_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        noisy, clean = self.augment(batch["image"], batch["image"])
        return {"loss": volume_loss(self.settings.loss, self.reconstruct(noisy), clean)}
