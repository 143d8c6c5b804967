"""Look at the residual method of a finished run: ``ssl3d residual-figure OUT --out FILE.png``.

For a few validation sinuses of one (seed, fold) unit, one row each: the image, the CAE's
reconstruction, the residual target, the U-Net's predicted residual and the ground-truth
anomaly mask (phantom), on the axial slice with the most mask voxels. It also measures how well
the target and the prediction localise anomalies (voxel-level AUPRC over the fold's validation
volumes). The cached CAE is loaded through the method's own stage (rebuilt, with a message,
when it is missing), so the figure shows exactly what pretraining used.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from benchmark.methods.residual.cae import reconstruct  # noqa: E402
from benchmark.methods.residual.method import Residual  # noqa: E402
from benchmark.methods.residual.targets import LEVELS, localisation, residual_targets  # noqa: E402

from benchmark.context import PretrainingContext  # noqa: E402
from benchmark.errors import UserError  # noqa: E402

COLUMNS = ("image", "CAE reconstruction", "residual (target)", "predicted residual", "mask")


def draw_residual_figure(
    method: Residual, context: PretrainingContext, path: Path, examples: int = 4
) -> dict[str, dict[str, float]]:
    """Draw the figure of a finished residual unit into ``path``; returns the localisation
    checks of its residual targets and of the U-Net's predictions on the fold's validation
    volumes. ``method`` carries the unit's encoder (``open_pretrained``)."""
    decoder_path = context.unit.directory / "decoder.pt"
    if not decoder_path.exists():
        raise UserError(f"{decoder_path}: missing; the residual unit did not finish")
    rows = context.validation_rows()
    masks = context.masks(rows)
    if masks is None:
        raise UserError(f"{context.manifest}: the cohort has no anomaly masks to compare with")
    device = context.device
    method.decoder.load_state_dict(torch.load(decoder_path, map_location="cpu", weights_only=True))
    method.to(device).eval()
    cae = method.cae_stage(context)
    images = context.images(rows)
    settings = method.settings.residual
    targets = residual_targets(
        cae, images, int(settings.median_filter), settings.percentiles, device
    )
    predicted = _predicted_residual(method, images, device)
    checks = {
        "target": localisation(targets, masks),
        "prediction": localisation((predicted * LEVELS).round().to(torch.uint8), masks),
    }
    chosen = _examples(masks, examples)
    reconstructions = reconstruct(cae, images[chosen], device)
    columns = [images[chosen], reconstructions, targets[chosen] / LEVELS, predicted[chosen]]
    columns.append(masks[chosen].float())
    titles = [_title(row) for _, row in context.manifest_rows(rows[chosen]).iterrows()]
    _draw(columns, titles, masks[chosen], path, checks)
    return checks


@torch.no_grad()
def _predicted_residual(method, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The U-Net's residual in [0, 1] (sigmoid of the logits for the BCE loss)."""
    chunks = []
    for start in range(0, len(images), 16):
        prediction = method.predict_residual(images[start : start + 16].to(device)).float()
        chunks.append(prediction.sigmoid() if method.settings.loss == "bce" else prediction)
    return torch.cat(chunks).clamp(0, 1).cpu()


def _examples(masks: torch.Tensor, count: int) -> list[int]:
    """The anomalous volumes with the largest masks, and one normal volume."""
    sizes = masks.flatten(1).sum(1)
    anomalous = [int(i) for i in torch.argsort(sizes, descending=True) if sizes[i] > 0]
    normal = [int(i) for i in torch.nonzero(sizes == 0).flatten()]
    return anomalous[: max(1, count - 1)] + normal[:1]


def _title(row) -> str:
    finding = row.get("pathology") or "normal"
    return f"{row['subject_id']} {row.get('side', '')}\n{finding}".strip()


def _draw(columns, titles, masks, path: Path, checks) -> None:
    count = len(titles)
    figure, axes = plt.subplots(count, len(COLUMNS), figsize=(2.2 * len(COLUMNS), 2.2 * count))
    axes = np.atleast_2d(axes)
    for row, title in enumerate(titles):
        per_slice = masks[row, 0].flatten(0, 1).sum(0)  # mask voxels per axial slice
        depth = int(per_slice.argmax()) if per_slice.any() else masks.shape[-1] // 2
        for column, volumes in enumerate(columns):
            axis = axes[row, column]
            axis.imshow(
                volumes[row, 0, :, :, depth].T.cpu().numpy(),
                cmap="gray",
                vmin=0,
                vmax=1,
                origin="lower",
            )
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(COLUMNS[column], fontsize=9)
        axes[row, 0].set_ylabel(title, fontsize=8)
    target, prediction = checks["target"], checks["prediction"]
    figure.suptitle(
        f"voxel AUPRC of the residual vs the mask (validation volumes): target "
        f"{target['auprc']:.3f}, prediction {prediction['auprc']:.3f}, chance "
        f"{target['chance']:.3f}",
        fontsize=9,
    )
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
