"""SparK on the shared 3D ResNet18: sparse masked modelling with a hierarchical decoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from benchmark.methods.spark.sparse import MaskContext, sparsify
from matplotlib.figure import Figure
from torch import Tensor, nn

from benchmark.errors import MethodConfigError
from benchmark.method import SSLMethod
from benchmark.registry import register_method

TOTAL_STRIDE = 32  # of the ResNet18's last feature map


@register_method("spark")
class SparK(SSLMethod):
    """SparK: reconstruct masked cells from a sparsely encoded volume (BERT-style, for CNNs).

    Tian et al., "Designing BERT for Convolutional Networks: Sparse and Hierarchical Masked
    Modeling", ICLR 2023. The backbone is converted in place to emulated sparse layers
    (``methods/spark/sparse.py``); its four stage maps (strides 4-32) are densified with a learned
    mask token per scale and decoded by a light 3D U-Net; the loss is the squared error on masked
    cells only. Mask cells are ``mask_cell_size`` voxels per side, smaller than the total stride.
    """

    reference = "Tian et al., ICLR 2023 (arXiv:2301.03580)"
    # torch's SyncBatchNorm would replace the sparse BatchNorm (statistics over visible voxels
    # only) with a dense one; each rank's share of the batch still gives it thousands of voxels.
    sync_batchnorm = False

    def __init__(self, backbone, settings, training):
        super().__init__(backbone, settings, training)
        if not 0 < settings.mask_ratio < 1:
            raise MethodConfigError(
                f"method.spark.mask_ratio must be in (0, 1), got {settings.mask_ratio}; "
                "SparK uses 0.6"
            )
        if not isinstance(settings.mask_cell_size, int) or settings.mask_cell_size < 1:
            raise MethodConfigError(
                "method.spark.mask_cell_size must be a positive whole number of voxels, got "
                f"{settings.mask_cell_size}; e.g. 8 for 64^3 volumes, 4 for 32^3"
            )
        if settings.decoder_width_ratio <= 0:
            raise MethodConfigError(
                "method.spark.decoder_width_ratio must be > 0, got "
                f"{settings.decoder_width_ratio}; 0.5 gives half the encoder's width per scale"
            )
        self.cell = int(settings.mask_cell_size)
        self.mask_context = MaskContext()
        sparsify(backbone, self.mask_context)
        encoder_widths = list(reversed(backbone.widths))  # stage 4 (stride 32) first
        width = max(8, round(encoder_widths[0] * settings.decoder_width_ratio))
        decoder_widths = [max(8, width >> level) for level in range(len(encoder_widths) + 1)]
        self.mask_tokens = nn.ParameterList(
            nn.init.trunc_normal_(torch.empty(1, w, 1, 1, 1), std=0.02, a=-0.02, b=0.02)
            for w in encoder_widths
        )
        self.densify_norms = sparsify(
            nn.ModuleList(nn.BatchNorm3d(w) for w in encoder_widths), self.mask_context
        )
        self.densify_projections = nn.ModuleList(
            nn.Conv3d(w, d, kernel_size=1 if level == 0 else 3, padding=0 if level == 0 else 1)
            for level, (w, d) in enumerate(zip(encoder_widths, decoder_widths))
        )
        self.decoder = nn.ModuleList(
            _upsampling_block(cin, cout) for cin, cout in zip(decoder_widths, decoder_widths[1:])
        )
        # Stride 2 -> 1 without 3^3 convolutions at full resolution (they would dominate the step
        # in 3D): each stride-2 voxel predicts its 2^3 voxels linearly.
        self.head = nn.ConvTranspose3d(decoder_widths[-1], 1, kernel_size=2, stride=2)

    @classmethod
    def display_name(cls, settings) -> str:
        """``spark (mask 8^3)``: SparK masks at the encoder's output stride (32); smaller cells
        are a different design point, so every table says which was run."""
        return f"{cls.name} (mask {settings.mask_cell_size}^3)"

    def check_geometry(self, size: int) -> None:
        """Reject a volume size that the mask cells or the encoder's strides do not tile."""
        cells = size // self.cell
        keep = round(cells**3 * (1 - self.settings.mask_ratio))
        if size % self.cell or size % TOTAL_STRIDE or not 0 < keep < cells**3:
            raise MethodConfigError(
                f"method.spark.mask_cell_size={self.cell} with data.size={size} and mask_ratio="
                f"{self.settings.mask_ratio}: the cell size must divide the volume size, the "
                f"volume size must be a multiple of the encoder's stride {TOTAL_STRIDE}, and at "
                "least one cell must stay visible and one masked (e.g. 8 for 64^3, 4 for 32^3)"
            )

    def prepare(self, context) -> None:
        self.check_geometry(context.image_size)
        if not self.settings.normalize_target:  # start at the mean intensity, not at 0
            self.head.bias.data.fill_(float(context.images(context.pool_rows).mean()))

    def random_cells(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """[B, 1, g, g, g] bool: exactly round(g^3 (1 - mask_ratio)) visible cells per volume."""
        size = images.shape[-1]
        self.check_geometry(size)
        grid = size // self.cell
        keep = round(grid**3 * (1 - self.settings.mask_ratio))
        order = torch.rand(len(images), grid**3, generator=generator).argsort(dim=1)
        visible = torch.zeros(len(images), grid**3, dtype=torch.bool)
        visible = visible.scatter_(1, order[:, :keep], True).view(-1, 1, grid, grid, grid)
        # Drawn on the CPU generator, so a GPU run masks the same cells as a CPU run; copied
        # from pinned memory without blocking, so the host does not wait for the GPU's queue.
        if images.is_cuda:  # pinning needs CUDA
            visible = visible.pin_memory()
        return visible.to(images.device, non_blocking=True)

    def reconstruct(self, images: Tensor, visible: Tensor) -> Tensor:
        """The decoder's output [B, 1, S, S, S] for the visible voxels ``visible`` of ``images``."""
        with self.mask_context.masking(visible):
            maps = self.backbone.feature_maps(images * visible)[1:]  # strides 4, 8, 16, 32
            x = 0
            for level, features in enumerate(reversed(maps)):
                active = self.mask_context.active(features.shape[2:])
                token = self.mask_tokens[level].to(features.dtype)
                dense = torch.where(active, self.densify_norms[level](features), token)
                x = self.decoder[level](x + self.densify_projections[level](dense))
        return self.head(x)  # stride 2 -> 1

    def pretraining_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        # Intensity augmentations touch the input only: the target is the spatially aligned
        # clean volume.
        images, targets = self.augment(batch["image"], batch["image"])
        cells = self.random_cells(images, self.rng)
        reconstruction = self.reconstruct(images, _expand(cells, self.cell))
        return {"loss": self.masked_cell_loss(reconstruction, targets, cells)}

    def masked_cell_loss(self, reconstruction: Tensor, targets: Tensor, cells: Tensor) -> Tensor:
        """Mean squared error per masked cell, averaged over masked cells (per-cell normalised
        targets when ``normalize_target``, as in the official SparK).

        A sum over the masked cells divided by their count, both on the device: boolean
        indexing would make a CUDA step wait for the host to learn how many cells it selects.
        """
        targets = targets.float()
        if self.settings.normalize_target:
            mean, std = cell_statistics(targets, self.cell)
            targets = (targets - mean) / std
        error = F.avg_pool3d((reconstruction.float() - targets) ** 2, self.cell)  # [B, 1, g^3]
        masked = ~cells
        return torch.where(masked, error, 0).sum() / masked.sum()

    @torch.no_grad()
    def draw_reconstructions(self, images: Tensor, path: Path, seed: int = 0) -> Path:
        """Coronal mid-slices of masked input / reconstruction / original, one row per volume.

        The reconstruction keeps the visible voxels and fills masked cells with the prediction
        (de-normalised with the original's cell mean and std when targets are normalised, as
        the official SparK visualises it).
        """
        was_training = self.training
        self.eval()
        cells = self.random_cells(images, torch.Generator().manual_seed(seed))
        visible = _expand(cells, self.cell)
        prediction = self.reconstruct(images, visible).float()
        self.train(was_training)
        if self.settings.normalize_target:
            mean, std = cell_statistics(images.float(), self.cell)
            prediction = prediction * std + mean
        columns = {
            "masked input": images * visible,
            "reconstruction": torch.where(visible, images, prediction),
            "original": images,
        }
        figure = Figure(figsize=(2.2 * len(columns), 2.2 * len(images)), layout="constrained")
        axes = np.atleast_2d(figure.subplots(len(images), len(columns)))
        middle = images.shape[3] // 2
        for column, (title, volumes) in enumerate(columns.items()):
            for row, volume in enumerate(volumes[:, 0, :, middle].cpu().numpy()):
                axes[row, column].imshow(volume.T, cmap="gray", origin="lower", vmin=0, vmax=1)
                axes[row, column].set_axis_off()
            axes[0, column].set_title(title, fontsize=9)
        figure.suptitle(f"SparK, {self.settings.mask_ratio:.0%} of {self.cell}^3 cells masked")
        figure.savefig(path, dpi=100)
        return path

    def export(self, context) -> None:
        """``decoder.pt`` (everything but the encoder) and ``reconstructions.png`` of 4 volumes."""
        directory = context.unit.directory
        heads = {k: v.cpu() for k, v in self.state_dict().items() if not k.startswith("backbone.")}
        torch.save(heads, directory / "decoder.pt")
        rows = context.pool_rows[np.linspace(0, len(context.pool_rows) - 1, 4).astype(int)]
        images = context.images(rows).to(self.device)
        self.draw_reconstructions(images, directory / "reconstructions.png")


def _upsampling_block(cin: int, cout: int) -> nn.Sequential:
    """SparK's LightDecoder block in 3D: 2x transposed conv, two 3^3 convs with BatchNorm."""
    return nn.Sequential(
        nn.ConvTranspose3d(cin, cin, kernel_size=4, stride=2, padding=1),
        nn.Conv3d(cin, cin, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm3d(cin),
        nn.ReLU6(inplace=True),
        nn.Conv3d(cin, cout, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm3d(cout),
    )


def _expand(cells: Tensor, cell: int) -> Tensor:
    """[B, C, g, g, g] -> [B, C, g*cell, ...]: each cell's value on its cell^3 voxels."""
    return cells.repeat_interleave(cell, 2).repeat_interleave(cell, 3).repeat_interleave(cell, 4)


def cell_statistics(volumes: Tensor, cell: int) -> tuple[Tensor, Tensor]:
    """Per-cell mean and std (unbiased, + 1e-6 under the root as in SparK), voxel-sized."""
    count = cell**3
    mean = F.avg_pool3d(volumes, cell)
    variance = (F.avg_pool3d(volumes**2, cell) - mean**2).clamp_min(0) * count / (count - 1)
    return _expand(mean, cell), _expand((variance + 1e-6).sqrt(), cell)
