"""The residual-reconstruction method of Bhattacharya et al. (Int J CARS 2024).

Three stages (docs/protocol.md, "The residual-reconstruction method"), the first two cached:
1. ``cae``: a 3D convolutional autoencoder trained on the fold's labelled normal sinuses only
   (``methods/residual/cae.py``);
2. ``residuals``: |x - CAE(x)| of every pretraining volume, rescaled and median-filtered
   (``methods/residual/targets.py``), keyed by the CAE's settings key and their own settings;
3. pretraining: a U-Net decoder on the ResNet18's feature maps predicts the residual map.
"""

from __future__ import annotations

import numpy as np
import torch
from benchmark.methods.residual.cae import ConvAutoencoder3D, train_autoencoder
from benchmark.methods.residual.targets import (
    LEVELS,
    MEDIAN_FILTER_SIZES,
    localisation,
    residual_targets,
)
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from benchmark.context import PretrainingContext
from benchmark.errors import MethodConfigError
from benchmark.method import SSLMethod
from benchmark.nn.decoders import LOSSES, UNetDecoder, volume_loss
from benchmark.registry import register_method

CAE_FORMAT = 1  # bump when a code change alters what a cached CAE holds
NORMALS = ("training", "current_fraction", "smallest_fraction")


@register_method("residual")
class Residual(SSLMethod):
    """Residual reconstruction: a U-Net learns where a CAE of normal sinuses fails.

    Bhattacharya et al., "Self-supervised learning for classifying paranasal anomalies in the
    maxillary sinus", Int J CARS 2024. A fold-scoped method: its autoencoder sees only the
    labelled normal volumes of the fold's training set, never a validation or test subject.
    """

    reference = "Bhattacharya et al., Int J CARS 2024 (doi:10.1007/s11548-024-03172-5)"
    pretraining_scope = "fold"

    @classmethod
    def scope(cls, settings: DictConfig) -> str:
        """``cae.normals=current_fraction`` pretrains once per (seed, fold, label fraction):
        each fraction's cells start from an encoder whose CAE saw only that fraction's normals."""
        return "fraction" if settings.cae.normals == "current_fraction" else "fold"

    def __init__(self, backbone, settings, training):
        super().__init__(backbone, settings, training)
        self.decoder = UNetDecoder(backbone.widths, out_channels=1, skip_connections=True)
        self.target_table: Tensor | None = None  # [pool, 1, S, S, S] uint8, not checkpointed
        self.table_position: Tensor | None = None  # cohort row -> position in the table

    def check_settings(self, batch_size: int) -> None:
        cae, residual = self.settings.cae, self.settings.residual
        problems = []
        if self.settings.loss not in LOSSES:
            problems.append(f"method.residual.loss must be one of {', '.join(LOSSES)}")
        if residual.median_filter not in MEDIAN_FILTER_SIZES:
            problems.append(
                f"method.residual.residual.median_filter must be one of {MEDIAN_FILTER_SIZES}"
            )
        if cae.normals not in NORMALS:
            problems.append(f"method.residual.cae.normals must be one of {', '.join(NORMALS)}")
        if not 0 < cae.normal_fraction <= 1:
            problems.append("method.residual.cae.normal_fraction must be in (0, 1]")
        low, high = residual.percentiles
        if not 0 <= low < high <= 100:
            problems.append("method.residual.residual.percentiles must be 0 <= low < high <= 100")
        if problems:
            raise MethodConfigError("; ".join(problems))

    # ---- stages 1 and 2 ----------------------------------------------------------------

    def cae_settings(self, context: PretrainingContext) -> dict:
        """Everything the CAE depends on: its settings, its normals, the preprocessing."""
        cae = OmegaConf.to_container(self.settings.cae, resolve=True)
        rows = self.cae_normal_rows(context)
        return {
            "format": CAE_FORMAT,
            **cae,
            "seed": int(self.training_settings.seed),
            "normal_volumes": context.rows_fingerprint(rows),
            "preprocessing": context.preprocessing,
        }

    def cae_normal_rows(self, context: PretrainingContext) -> np.ndarray:
        """Cohort rows of the normals the CAE trains on (nested subsets by ``normal_fraction``)."""
        cae, unit = self.settings.cae, context.unit
        fraction = {
            "training": 1.0,
            "current_fraction": unit.fraction,
            "smallest_fraction": min(context.label_fractions),
        }[cae.normals]
        rows = context.labelled_training_rows(fraction)
        normals = rows[context.labels(rows).numpy() == 0]
        if len(normals) == 0:
            raise MethodConfigError(
                f"no normal volumes for the autoencoder under method.residual.cae.normals="
                f"{cae.normals} (label fraction {fraction:g} of seed {unit.seed} fold "
                f"{unit.fold} has {len(rows)} labelled volumes, none normal); use "
                "cae.normals=training or larger label fractions"
            )
        order = np.random.default_rng([unit.seed, unit.fold]).permutation(len(normals))
        keep = max(1, round(cae.normal_fraction * len(normals)))
        return np.sort(normals[order[:keep]])

    def cae_stage(self, context: PretrainingContext) -> ConvAutoencoder3D:
        """Stage 1: the CAE of this unit's normals, trained once and cached."""
        settings = self.cae_settings(context)
        cae = self.settings.cae
        size = context.image_size

        def build() -> dict:
            _explain_rebuild(context, settings)
            rows = self.cae_normal_rows(context)
            model = context.prepare_module(_new_cae(cae, size))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(self.training_settings.seed))
                losses, steps = train_autoencoder(
                    model, context.images(rows), int(cae.epochs), int(cae.batch_size),
                    float(cae.lr), int(self.training_settings.seed), context.device,
                )  # fmt: skip
            context.log(
                f"{context.unit.title}: autoencoder trained on {len(rows)} normal volumes, "
                f"L1 {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} epochs"
            )
            state = {k: v.cpu() for k, v in model.state_dict().items()}
            return {
                "settings": settings, "state_dict": state, "losses": losses,
                "optimiser_steps": steps,
            }  # fmt: skip

        stored = context.stage("cae", settings, build)
        model = _new_cae(cae, size)
        model.load_state_dict(stored["state_dict"])
        return model

    def prepare(self, context: PretrainingContext) -> None:
        """Stage 2: residual targets of the whole pretraining pool (and the localisation check)."""
        rows = context.pretraining_pool_rows
        check_rows = context.validation_rows()
        residual = OmegaConf.to_container(self.settings.residual, resolve=True)
        settings = {
            "cae": context.settings_key(self.cae_settings(context)),
            **residual,
            "rows": context.rows_fingerprint(rows),
            "check_rows": context.rows_fingerprint(check_rows),
        }

        def build() -> dict:
            cae = self.cae_stage(context)

            def targets(selected: np.ndarray) -> Tensor:
                def describe(positions: np.ndarray) -> str:
                    return ", ".join(context.describe(selected[positions]))

                return residual_targets(
                    cae, context.images(selected), int(residual["median_filter"]),
                    residual["percentiles"], context.device, describe,
                )  # fmt: skip

            found = {"rows": rows, "targets": targets(rows)}
            masks = context.masks(check_rows)
            if masks is not None and len(check_rows) and masks.any():
                check = localisation(targets(check_rows), masks)
                found["localisation"] = {"volumes": len(check_rows), **check}
            return found

        stage = context.stage("residuals", settings, build)
        if "localisation" in stage:
            check = stage["localisation"]
            context.notes["residual_localisation"] = check
            context.log(
                f"{context.unit.title}: residual localisation on the fold's {check['volumes']} "
                f"validation volumes: voxel AUPRC {check['auprc']:.3f} (chance "
                f"{check['chance']:.3f}); mean residual {check['inside']:.3f} inside anomaly "
                f"masks, {check['outside']:.3f} outside"
            )
        self.target_table = stage["targets"]
        position = torch.full((context.cohort_size,), -1, dtype=torch.long)
        position[torch.as_tensor(stage["rows"])] = torch.arange(len(stage["rows"]))
        self.table_position = position

    # ---- stage 3 ----------------------------------------------------------------------

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.target_table = self.target_table.to(self.device)
        self.table_position = self.table_position.to(self.device)

    def lookup_targets(self, rows: Tensor) -> Tensor:
        """Float targets in [0, 1] ``[B, 1, S, S, S]`` of the cohort rows of a batch."""
        return self.target_table[self.table_position[rows]].float() / LEVELS

    def predict_residual(self, images: Tensor) -> Tensor:
        """The U-Net's prediction (logits for the BCE loss) ``[B, 1, S, S, S]``."""
        return self.decoder(self.backbone.feature_maps(images))

    def pretraining_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        # Spatial augmentations move image and residual together; intensity ones the image only.
        view, target = self.augment(batch["image"], self.lookup_targets(batch["row"]))
        return {"loss": volume_loss(self.settings.loss, self.predict_residual(view), target)}

    def export(self, context: PretrainingContext) -> None:
        torch.save(self.decoder.state_dict(), context.unit.directory / "decoder.pt")


def _new_cae(cae, size: int) -> ConvAutoencoder3D:
    return ConvAutoencoder3D(
        size, tuple(cae.channels), int(cae.bottleneck_channels), int(cae.latent_dim),
        int(cae.kernel_size),
    )  # fmt: skip


def _explain_rebuild(context: PretrainingContext, settings: dict) -> None:
    """Say why a CAE is trained: none cached, or cached ones made with other settings."""
    others = sorted((context.unit.directory / "stages").glob("cae-*.pt"))
    reasons = []
    for path in others:
        old = (context.stored_stage(path) or {}).get("settings", {})
        changed = [key for key in settings if old.get(key) != settings[key]]
        reasons.append(f"{path.name} was made with other {', '.join(changed) or 'data'}")
    why = "; ".join(reasons) if reasons else "none is cached"
    context.log(f"{context.unit.title}: training the residual autoencoder ({why})")
