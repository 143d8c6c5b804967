"""The encoder file of the ``external`` method (``finetune.encoder``), checked before the grid.

A shared encoder is a 3D ResNet18 state dict under MONAI's names: a ``.safetensors`` file (what
``ssl3d export`` writes, and the format models are shared in: tensors only, nothing to run) or
a torch file (``encoder.pt``). A torch file is a pickle, and unpickling can run code: ssl3d
reads every torch file with ``weights_only=True``, which refuses anything but tensors and
plain containers, yet that restricted unpickler is a defence with a history of bypasses
(CVE-2025-32434), so a pickle from outside the run folder is refused unless
``finetune.allow_pickle`` says it is trusted. The stage widths are read from the tensors and
must be the run's (``backbone.width_multiplier``); the file loads strictly, or the run stops
before anything trains. The file's SHA-256 enters its cells' config hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig
from torch import Tensor

from benchmark.config import file_sha256
from benchmark.errors import UserError
from benchmark.nn.backbone import ResNet18, read_safetensors, stage_widths
from benchmark.results import load_plain

# The first convolution of each stage: their output channels are the stage widths.
_WIDTH_TENSORS = tuple(f"layer{stage}.0.conv1.weight" for stage in range(1, 5))


class SharedEncoderError(UserError):
    """``finetune.encoder`` names a file that cannot be evaluated as asked."""


@dataclass(frozen=True)
class SharedEncoder:
    """A checked encoder file: where it is, its bytes' SHA-256 and its stage widths."""

    path: Path
    sha256: str
    widths: tuple[int, ...]

    def fingerprint(self) -> dict:
        """What its cells' numbers depend on: the file's content, not where it lies."""
        return {"encoder_sha256": self.sha256, "widths": list(self.widths)}


def read_shared_encoder(cfg: DictConfig, out: Path) -> SharedEncoder | None:
    """The checked file of ``finetune.encoder`` (None when it is null) for run folder ``out``."""
    if cfg.finetune.encoder is None:
        return None
    path = Path(str(cfg.finetune.encoder)).expanduser().absolute()
    name = f"finetune.encoder={cfg.finetune.encoder}"
    if not path.is_file():
        raise SharedEncoderError(f"{name}: no such file")
    if path.suffix == ".safetensors":
        state = read_safetensors(path)
    else:
        _refuse_foreign_pickle(path, Path(out), bool(cfg.finetune.allow_pickle), name)
        state = load_plain(path, "Convert it to safetensors where it was made, or use another.")
    widths = _widths(state, name)
    expected = stage_widths(float(cfg.backbone.width_multiplier))
    if widths != expected:
        raise SharedEncoderError(
            f"{name} holds a ResNet18 of widths {'/'.join(map(str, widths))}, but this run's "
            f"backbone.width_multiplier={cfg.backbone.width_multiplier} builds "
            f"{'/'.join(map(str, expected))}; set backbone.width_multiplier="
            f"{widths[0] / 64:g} (the file's width / 64), as the encoder was made"
        )
    try:
        ResNet18(widths).load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = str(error).split(":", 1)[-1].strip().splitlines()[0]
        raise SharedEncoderError(
            f"{name} is not a 3D ResNet18 state dict under MONAI's names ({detail}); export it "
            "with `ssl3d export`, or save monai.networks.nets.resnet18(spatial_dims=3, "
            "n_input_channels=1, conv1_t_stride=2, feed_forward=False).state_dict()"
        ) from error
    return SharedEncoder(path, file_sha256(path), widths)


def _refuse_foreign_pickle(path: Path, out: Path, allowed: bool, name: str) -> None:
    """A torch file from outside ``out`` is refused unless ``finetune.allow_pickle``."""
    if allowed or path.resolve().is_relative_to(out.resolve()):
        return
    raise SharedEncoderError(
        f"{name} is a torch file from outside the run folder {out}: a pickle, and unpickling "
        "a file can run code (ssl3d loads it with torch's weights_only=True, a restricted "
        "unpickler that has been bypassed before). Share encoders as safetensors (`ssl3d "
        "export` writes model.safetensors), or set finetune.allow_pickle=true if you trust "
        "whoever made the file"
    )


def _widths(state: object, name: str) -> tuple[int, ...]:
    """The four stages' output channels, read from their first convolutions."""
    found = [state.get(key) if isinstance(state, dict) else None for key in _WIDTH_TENSORS]
    if not all(isinstance(tensor, Tensor) and tensor.dim() == 5 for tensor in found):
        missing = [key for key, tensor in zip(_WIDTH_TENSORS, found) if tensor is None]
        raise SharedEncoderError(
            f"{name} is not a 3D ResNet18 state dict under MONAI's names (no 3D "
            f"{', '.join(missing) or 'convolutions'}); export it with `ssl3d export`"
        )
    return tuple(int(tensor.shape[0]) for tensor in found)
