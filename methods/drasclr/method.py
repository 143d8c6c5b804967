"""DrasCLR on the shared 3D ResNet18: patch contrast at fixed locations of the aligned crop."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from benchmark.methods.drasclr.location_conv import LocationConv3d
from lightly.models.modules import MoCoProjectionHead
from lightly.models.utils import deactivate_requires_grad
from torch import Tensor, nn

from benchmark.errors import MethodConfigError
from benchmark.method import SSLMethod
from benchmark.nn.momentum import move_towards
from benchmark.nn.shuffled_batchnorm import check_groups, forward_in_groups, forward_shuffled
from benchmark.registry import register_method


@dataclass(frozen=True)
class PatchGrid:
    """``grid^3`` cubic patches of side ``patch`` tiling an ``S^3`` crop at a fixed stride.

    Crops are aligned (registered heads cut at a fixed centroid, right sides mirrored), so a
    patch position shows the same anatomy in every volume: DrasCLR's atlas locations.
    Locations are numbered in (D, H, W) order, W fastest.
    """

    size: int
    patch: int
    grid: int

    @classmethod
    def of(cls, size: int, fraction: float, grid: int, neighbours: int) -> PatchGrid:
        """The grid of an ``S^3`` crop, or ``MethodConfigError`` naming the setting to change."""
        patch = fraction * size
        if not 0 < fraction < 1 or patch != int(patch):
            raise MethodConfigError(
                f"method.drasclr.patch_fraction={fraction} gives {patch:g}-voxel patches of the "
                f"{size}^3 crop; a patch must be a whole number of voxels smaller than the crop "
                f"(0.5 gives {size // 2})"
            )
        stride, rest = divmod(size - int(patch), grid - 1) if grid > 1 else (0, 0)
        if grid < 2 or rest or stride == 0:
            raise MethodConfigError(
                f"method.drasclr.grid={grid} does not fit: {grid} patches of {int(patch)} voxels "
                f"per axis of a {size}^3 crop need a whole, positive stride ({size} - "
                f"{int(patch)}) / ({grid} - 1); choose a grid of at least 2 that divides it"
            )
        if not 0 < neighbours < grid**3:
            raise MethodConfigError(
                f"method.drasclr.neighbours={neighbours}: must be between 1 and the number of "
                f"other locations ({grid**3 - 1})"
            )
        return cls(size, int(patch), grid)

    @property
    def stride(self) -> int:
        return (self.size - self.patch) // (self.grid - 1)

    def extract(self, images: Tensor) -> Tensor:
        """``[B, 1, S, S, S]`` -> ``[B, L, 1, p, p, p]`` with ``L = grid^3``, by views (unfold)."""
        p, s = self.patch, self.stride
        patches = images.unfold(2, p, s).unfold(3, p, s).unfold(4, p, s)  # [B, 1, g, g, g, p^3]
        return patches.permute(0, 2, 3, 4, 1, 5, 6, 7).flatten(1, 3)

    @cached_property
    def coordinates(self) -> Tensor:
        """``[L, 3]``: patch centres in the crop frame, scaled to [-1, 1] as DrasCLR's code."""
        centres = torch.arange(self.grid) * self.stride + (self.patch - 1) / 2
        axis = 2 * centres / (self.size - 1) - 1
        return torch.cartesian_prod(axis, axis, axis)

    def neighbours(self, count: int) -> Tensor:
        """``[L, count]``: each location's nearest other locations (ties: lower index first)."""
        distances = torch.cdist(self.coordinates, self.coordinates)
        return distances.argsort(dim=1, stable=True)[:, 1 : count + 1]

    def neighbour_matrix(self, count: int) -> Tensor:
        """``[L, L]`` float 0/1: row l marks l's ``count`` nearest other locations. Summing
        neighbours as ``einsum("lm,bmd->bld")`` with it has a deterministic backward, unlike
        indexing with repeated indices (whose CPU backward accumulates in a varying order)."""
        matrix = torch.zeros(len(self.coordinates), len(self.coordinates))
        return matrix.scatter_(1, self.neighbours(count), 1.0)


class LocationQueue(nn.Module):
    """DrasCLR's negatives: one MoCo queue of keys per location, ``keys [L, K, D]``.

    Each step pushes every volume's key at location l into queue l only, so an anchor at l is
    contrasted with other volumes' patches at l. Starts from random unit vectors (MoCo).
    """

    def __init__(self, locations: int, size: int, dim: int):
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(locations, size, dim), dim=2))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: Tensor) -> None:
        """``keys [N, L, D]``: the newest key of N volumes at each location (any N)."""
        size = self.keys.shape[1]
        keys = keys[-size:]
        slots = (self.pointer + torch.arange(len(keys), device=keys.device)) % size
        self.keys[:, slots] = keys.transpose(0, 1).to(self.keys.dtype)
        self.pointer.copy_((self.pointer + len(keys)) % size)


def info_nce(query: Tensor, key: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """InfoNCE of every anchor: ``query, key [B, L, D]``, ``negatives [L, K, D]`` -> ``[B, L]``.

    The positive is the key at the same (volume, location); the negatives of an anchor at l
    are queue l only. Equals cross-entropy with the positive as class 0.
    """
    positive = (query * key).sum(dim=-1, keepdim=True)  # [B, L, 1]
    negative = torch.einsum("bld,lkd->blk", query, negatives)  # [B, L, K]
    logits = torch.cat([positive, negative], dim=-1) / temperature
    return torch.logsumexp(logits, dim=-1) - logits[..., 0]


class LocationBranch(nn.Module):
    """Location-conditioned residual branch: stage-2 map -> conditioned conv, BN, ReLU -> pool.

    It reads the backbone and adds to its pooled feature but never feeds back into it, so the
    exported backbone computes exactly what it computed in pretraining (docs/methods.md).
    """

    def __init__(self, in_channels: int, out_channels: int, experts: int):
        super().__init__()
        self.conv = LocationConv3d(in_channels, out_channels, 3, experts, stride=2)
        self.norm = nn.BatchNorm3d(out_channels)

    def forward(self, stage_map: Tensor, coordinates: Tensor) -> Tensor:
        """``[B, L, C, d, h, w]``, ``[L, 3]`` -> ``[B, L, out_channels]``."""
        x = self.conv(stage_map, coordinates)
        pooled = F.relu(self.norm(x.flatten(0, 1))).mean(dim=(2, 3, 4))
        return pooled.unflatten(0, x.shape[:2])


@register_method("drasclr")
class DrasCLR(SSLMethod):
    """DrasCLR: a patch vs its location's queue, plus its neighbours as positives (MoCo-style).

    Yu et al., "DrasCLR: A self-supervised framework of learning disease-related and
    anatomy-specific representation for 3D lung CT images", Medical Image Analysis 2024.
    Loss 1 contrasts two views of a volume's patch at location l with other volumes' patches at
    l (a per-location queue of momentum-encoder keys); loss 2 takes the summed embeddings of the
    patch's nearest locations as the query for the same key; loss = loss1 + beta * loss2.

    DrasCLR's code inherits MoCo's shuffled BatchNorm (He et al., CVPR 2020, sec. 3.3): queries
    are normalised per group of volumes, keys per group of a shuffled batch of volumes (all
    patches of a volume in one group), ``shuffle_bn_groups`` groups as on that many GPUs.
    """

    reference = "Yu et al., Medical Image Analysis 2024 (doi:10.1016/j.media.2023.103062)"
    # As MoCo's code: each GPU's BatchNorm keeps to its own sub-batch (no SyncBatchNorm).
    sync_batchnorm = False

    def __init__(self, backbone, settings, training):
        super().__init__(backbone, settings, training)
        check_groups("drasclr", settings.shuffle_bn_groups)
        self.branch = LocationBranch(backbone.widths[1], backbone.feature_dim, settings.experts)
        self.projection = MoCoProjectionHead(
            backbone.feature_dim, backbone.feature_dim, settings.output_dim
        )
        self.key_backbone = copy.deepcopy(backbone)
        self.key_branch = copy.deepcopy(self.branch)
        self.key_projection = copy.deepcopy(self.projection)
        for module in (self.key_backbone, self.key_branch, self.key_projection):
            deactivate_requires_grad(module)
        self.queue = LocationQueue(settings.grid**3, settings.queue_size, settings.output_dim)
        self._new_keys: Tensor | None = None
        # (grid, neighbours, device) -> patch coordinates and neighbour matrix on that device.
        # A plain cache, not buffers: the state dict and checkpoints keep their keys, DDP has
        # nothing more to broadcast, and a move to another device just adds an entry.
        self._grid_tensors: dict[tuple[PatchGrid, int, torch.device], tuple[Tensor, Tensor]] = {}

    def patch_grid(self, size: int) -> PatchGrid:
        s = self.settings
        return PatchGrid.of(size, float(s.patch_fraction), int(s.grid), int(s.neighbours))

    def grid_tensors(self, grid: PatchGrid, device: torch.device) -> tuple[Tensor, Tensor]:
        """``grid``'s coordinates ``[L, 3]`` and 0/1 neighbour matrix ``[L, L]`` on ``device``,
        computed and copied once: a training step copies nothing from the host."""
        key = (grid, int(self.settings.neighbours), device)
        if key not in self._grid_tensors:
            neighbours = grid.neighbour_matrix(key[1])
            self._grid_tensors[key] = (grid.coordinates.to(device), neighbours.to(device))
        return self._grid_tensors[key]

    def check_settings(self, batch_size: int) -> None:
        self.require_batches_of(
            batch_size,
            2,
            "with one, BatchNorm normalises a volume's patches by that volume's own statistics",
        )
        if self.settings.queue_size < batch_size:
            raise MethodConfigError(
                f"method.drasclr.queue_size={self.settings.queue_size} holds less than one batch "
                f"({batch_size} volumes); raise it to a few batches"
            )

    def prepare(self, context) -> None:
        self.patch_grid(context.image_size)
        if self.settings.queue_size >= len(context.pool_rows):
            raise MethodConfigError(
                f"method.drasclr.queue_size={self.settings.queue_size} is not below the "
                f"{len(context.pool_rows)} pretraining volumes, so each location's queue would "
                "hold the anchor's own earlier key as a negative; lower it (DrasCLR: 0.45 x pool)"
            )

    def embed(self, patches: Tensor, coordinates: Tensor, key: bool = False) -> Tensor:
        """Unit embeddings ``[B, L, output_dim]`` of patches ``[B, L, 1, p, p, p]``."""
        backbone, branch, projection = (
            (self.key_backbone, self.key_branch, self.key_projection)
            if key
            else (self.backbone, self.branch, self.projection)
        )
        shape = patches.shape[:2]
        maps = backbone.feature_maps(patches.flatten(0, 1))
        features = backbone.pool(maps[-1]).unflatten(0, shape)
        features = features + branch(maps[2].unflatten(0, shape), coordinates)
        return F.normalize(projection(features.flatten(0, 1)), dim=1).unflatten(0, shape)

    def pretraining_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        images = batch["image"]
        grid = self.patch_grid(images.shape[-1])
        coordinates, neighbours = self.grid_tensors(grid, images.device)
        groups = int(self.settings.shuffle_bn_groups)
        query = forward_in_groups(
            [self.backbone, self.branch, self.projection],
            lambda views: self.embed(grid.extract(views), coordinates),
            self.augment(images)[0],
            groups,
        )
        with torch.no_grad():
            key = forward_shuffled(
                [self.key_backbone, self.key_branch, self.key_projection],
                lambda views: self.embed(grid.extract(views), coordinates, key=True),
                self.augment(images)[0],
                groups,
                self.rng,
            )
        temperature = float(self.settings.temperature)
        local = info_nce(query, key, self.queue.keys, temperature).mean()
        # The sum of each location's neighbouring queries [B, L, D].
        summed = torch.einsum("lm,bmd->bld", neighbours.to(query.dtype), query)
        neighbourhood = info_nce(summed, key, self.queue.keys, temperature).mean()
        if self.training:
            self._new_keys = key
        return {
            "loss": local + float(self.settings.beta) * neighbourhood,
            "local_loss": local,
            "neighbourhood_loss": neighbourhood,
            "embedding_std": self.embedding_std(query.flatten(0, 1)),
        }

    def on_train_batch_end(self, outputs, batch, batch_index) -> None:
        momentum = float(self.settings.momentum)
        move_towards(self.key_backbone, self.backbone, momentum)
        move_towards(self.key_branch, self.branch, momentum)
        move_towards(self.key_projection, self.projection, momentum)
        keys = self._new_keys
        if self.trainer.world_size > 1:  # every rank's queues take the keys of the whole batch
            keys = self.all_gather(keys).flatten(0, 1)
        self.queue.push(keys)
