"""The one encoder every method pretrains: a 3D ResNet18 built by MONAI.

BasicBlock x [2, 2, 2, 2], widths 64/128/256/512, one input channel, a 7^3 stride-2 stem and a
max-pool, global average pooling to a 512-d feature (docs/protocol.md, "Backbone"). For a 64^3 input
the feature maps are 32^3 (stem), 16^3, 8^3, 4^3 and 2^3 (stages 1-4).

The class *is* a ``monai.networks.nets.ResNet``, so its state dict has MONAI's parameter names
and loads with ``strict=True`` into ``monai.networks.nets.resnet18(spatial_dims=3,
n_input_channels=1, conv1_t_stride=2, feed_forward=False)`` (paper widths) or into MONAI's
``ResNet`` with the same ``block_inplanes`` (narrower CPU profiles).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.networks.nets import ResNet
from torch import Tensor, nn

from benchmark.errors import UserError

PAPER_WIDTHS = (64, 128, 256, 512)


def stage_widths(width_multiplier: float) -> tuple[int, ...]:
    """Channel widths of the four stages; the multiplier exists for CPU-sized profiles only."""
    if not 0 < width_multiplier <= 1:
        raise ValueError(
            f"backbone.width_multiplier must be in (0, 1], got {width_multiplier}: 1.0 is the "
            "paper's ResNet18, smaller values shrink it for CPU profiles"
        )
    return tuple(max(4, round(width * width_multiplier)) for width in PAPER_WIDTHS)


def describe_backbone(widths: tuple[int, ...]) -> str:
    """How reports name the backbone of a run, e.g. "3D ResNet18, widths 64/128/256/512"."""
    name = "3D ResNet18" if tuple(widths) == PAPER_WIDTHS else "3D ResNet18 (narrow)"
    return f"{name}, widths {'/'.join(map(str, widths))}"


def monai_resnet18(widths: tuple[int, ...] = PAPER_WIDTHS) -> ResNet:
    """A plain MONAI 3D ResNet18 with these widths, the target of every exported encoder."""
    return ResNet(**resnet18_arguments(widths))


def resnet18_arguments(widths: tuple[int, ...]) -> dict:
    """The ``monai.networks.nets.ResNet`` arguments of the backbone (and of shared encoders)."""
    return dict(
        block="basic",
        layers=[2, 2, 2, 2],
        block_inplanes=list(widths),
        spatial_dims=3,
        n_input_channels=1,
        conv1_t_stride=2,
        feed_forward=False,
    )


class OneVoxelAwareConv3d(nn.Conv3d):
    """A convolution that, on a map of one voxel, applies only the kernel taps that read it.

    With "same" padding (``padding = dilation * (kernel - 1) / 2``) every other tap of a 1^3
    input reads zero padding, so the output and every gradient are those of the full kernel
    (the other taps' weight gradients are exactly zero): a 1^3 convolution with the kernel's
    centre. oneDNN's CPU backward of a 3^3 kernel on 1^3 maps is slow: 45 ms of a 210 ms
    DrasCLR step (256 16^3 patches, whose stages 3 and 4 are 1^3) at the quarter width, and
    stage 4 of every 32^3 profile. The class swap keeps the parameter names (``ResNet18``).
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[2:] == (1, 1, 1) and self.padding_mode == "zeros" and self._same_padding:
            centre = tuple(slice(k // 2, k // 2 + 1) for k in self.kernel_size)
            weight = self.weight[(slice(None), slice(None), *centre)]
            return F.conv3d(x, weight, self.bias, 1, 0, 1, self.groups)
        return super().forward(x)

    @property
    def _same_padding(self) -> bool:
        return all(
            isinstance(p, int) and k % 2 == 1 and p == d * (k - 1) // 2
            for k, p, d in zip(self.kernel_size, self.padding, self.dilation)
        )


class ResNet18(ResNet):
    """MONAI's 3D ResNet18 that also exposes its multi-scale feature maps."""

    def __init__(self, widths: tuple[int, ...] = PAPER_WIDTHS):
        super().__init__(**resnet18_arguments(widths))
        self.widths = tuple(widths)
        for module in self.modules():
            if type(module) is nn.Conv3d:
                module.__class__ = OneVoxelAwareConv3d

    @property
    def feature_dim(self) -> int:
        """Length of the pooled feature (512 for the paper widths)."""
        return self.widths[-1]

    @property
    def description(self) -> str:
        """How reports name this backbone."""
        return describe_backbone(self.widths)

    def stem(self, x: Tensor) -> Tensor:
        """Stride-2 7^3 convolution, BatchNorm, ReLU: [B, 1, S^3] -> [B, w0, (S/2)^3]."""
        return self.act(self.bn1(self.conv1(x)))

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """Maps at strides 2, 4, 8, 16 and 32 (stem, stages 1-4), for U-Net-style decoders.

        Computed through ``__call__`` (``forward(x, all_maps=True)``): ``nn.Module.compile``
        compiles ``__call__`` only, so a method called directly would run eagerly under
        ``runtime.compile``."""
        return self(x, all_maps=True)

    def stages_after(self, stage_map: Tensor, stage: int) -> Tensor:
        """The last map (stride 32) computed from the map of ``stage`` (1-4) by the stages
        after it (Grad-CAM's gradient at that stage needs only these)."""
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4)[stage:]:
            stage_map = layer(stage_map)
        return stage_map

    def pool(self, last_map: Tensor) -> Tensor:
        """Global average pooling: [B, C, ...] -> [B, C]."""
        return torch.flatten(self.avgpool(last_map), 1)

    def forward(self, x: Tensor, all_maps: bool = False) -> Tensor | list[Tensor]:
        """The pooled feature [B, feature_dim] of a batch [B, 1, D, H, W]; with ``all_maps``
        the maps of ``feature_maps`` instead."""
        maps = [self.stem(x)]
        x = self.maxpool(maps[0])
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            maps.append(x)
        return maps if all_maps else self.pool(x)

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """A CPU copy of the weights under MONAI's names (what ``encoder.pt`` holds)."""
        return {key: value.detach().cpu().clone() for key, value in self.state_dict().items()}


def save_encoder(backbone: ResNet18, path: str | Path) -> None:
    """Write the encoder's plain state dict atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(backbone.encoder_state_dict(), temporary)
    os.replace(temporary, path)


def save_encoder_safetensors(
    backbone: ResNet18, path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write the same state dict as ``encoder.pt`` as ``safetensors`` (no pickle; the format
    models are shared in), atomically; ``metadata`` goes into the file's header."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    state = {key: value.contiguous() for key, value in backbone.encoder_state_dict().items()}
    save_file(state, str(temporary), metadata=metadata)
    os.replace(temporary, path)


def load_encoder(path: str | Path, widths: tuple[int, ...]) -> ResNet18:
    """A backbone with the weights of an exported ``encoder.pt`` or ``.safetensors`` (strict)."""
    backbone = ResNet18(widths)
    if Path(path).suffix == ".safetensors":
        backbone.load_state_dict(read_safetensors(Path(path)), strict=True)
        return backbone
    try:  # weights only: a run folder may come from someone else (benchmark/results.py)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # noqa: BLE001 - torn, foreign or doctored files raise anything
        lines = str(error).split("WeightsUnpickler error:")[-1].strip().splitlines()
        reason = (lines or [""])[0].split(". ")[0]
        raise UserError(
            f"{path}: not a plain state dict of tensors ({type(error).__name__}: {reason}); it "
            "is corrupt or was altered, and ssl3d does not unpickle it in full, which could "
            "run code. `ssl3d run` moves such an encoder.pt of a pretraining unit aside and "
            "pretrains the unit again"
        ) from error
    backbone.load_state_dict(state, strict=True)
    return backbone


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file, on the CPU; a ``UserError`` if it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as error:
        raise UserError(f"{path}: not a readable safetensors file ({error})") from error
