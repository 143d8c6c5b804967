"""VICReg on the shared 3D ResNet18."""

import torch
import torch.distributed as dist
from lightly.loss import VICRegLoss
from lightly.loss.vicreg_loss import invariance_loss, variance_loss
from lightly.models.modules.heads import VICRegProjectionHead
from lightly.utils.dist import gather
from torch import Tensor

from benchmark.method import TwoViewMethod
from benchmark.registry import register_method


def off_diagonal_covariance_loss(embeddings: Tensor) -> Tensor:
    """Sum of the squared off-diagonal covariances of ``[batch, dim]`` embeddings over ``dim``.

    lightly's ``covariance_loss`` in closed form: all squares minus the diagonal's, not a
    boolean mask over the ``dim x dim`` matrix, whose indexing (``nonzero``, then a scatter in
    the backward pass) took about 40 % of a quarter-width VICReg step on the CPU.
    """
    centred = embeddings - embeddings.mean(dim=0)
    covariance = centred.T @ centred / (embeddings.shape[0] - 1)
    squares = covariance.pow(2).sum() - covariance.diagonal().pow(2).sum()
    return squares / embeddings.shape[1]


class VICRegCriterion(VICRegLoss):
    """lightly's ``VICRegLoss`` with ``off_diagonal_covariance_loss`` as its covariance term
    (tests/methods/test_ssl_family_settings.py checks that value and gradients are lightly's)."""

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        invariance = invariance_loss(z_a, z_b)
        if self.gather_distributed and dist.is_initialized() and dist.get_world_size() > 1:
            z_a, z_b = torch.cat(gather(z_a)), torch.cat(gather(z_b))
        variance = 0.5 * (variance_loss(z_a, self.eps) + variance_loss(z_b, self.eps))
        covariance = off_diagonal_covariance_loss(z_a) + off_diagonal_covariance_loss(z_b)
        return (
            self.lambda_param * invariance + self.mu_param * variance + self.nu_param * covariance
        )


@register_method("vicreg")
class VICReg(TwoViewMethod):
    """VICReg: invariance between views, variance kept above 1, covariance driven to 0.

    Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
    Self-Supervised Learning", ICLR 2022. One network (backbone -> 3-layer expander) embeds
    both views; the loss is a weighted sum of the mean squared distance between the two views'
    embeddings, a hinge keeping each dimension's std over the batch above 1, and the squared
    off-diagonal covariances.
    """

    reference = "Bardes et al., ICLR 2022 (arXiv:2105.04906)"
    batch_statistics = "its variance and covariance terms are statistics over the batch"

    def __init__(self, backbone, settings, training):
        super().__init__(backbone, settings, training)
        self.projection = VICRegProjectionHead(
            backbone.feature_dim, settings.projection_hidden_dim, settings.projection_output_dim
        )
        self.criterion = VICRegCriterion(
            lambda_param=settings.invariance_weight,
            mu_param=settings.variance_weight,
            nu_param=settings.covariance_weight,
            gather_distributed=True,  # variance and covariance over every rank's embeddings
        )

    def pretraining_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        first, second = (self.project(view) for view in self.two_views(batch["image"]))
        return {"loss": self.criterion(first, second), "embedding_std": self.embedding_std(first)}
