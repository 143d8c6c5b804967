"""Does a fine-tuned classifier look at the lesion? 3D Grad-CAM scored against the masks.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017) in 3D: the feature map ``A`` of one ResNet stage is
weighted channel-wise by the spatial mean of the gradient of the anomaly log-odds
(``logit_anomalous - logit_normal``) with respect to it; ``ReLU(sum_c w_c A_c)`` is upsampled
trilinearly to the input size. Each anomalous test volume with a ground-truth mask is scored by

- voxel AUPRC: the average precision of the saliency as a voxel-wise detector of the mask
  (chance level: the mask's share of the volume);
- pointing game (Zhang et al., ECCV 2016): does the most salient voxel lie in the mask? Tied
  maxima (e.g. a map that is zero everywhere) count the share of them inside the mask, the
  expected hit of a random tie-break; chance level is again the mask's share of the volume.

It runs at the end of each ``finetune`` cell while the model is in memory and is stored in the
cell file as ``localisation``; linear and k-NN probes have no fine-tuned encoder to explain.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from benchmark.evaluation.metrics import weighted_average_precision
from benchmark.nn.backbone import ResNet18
from benchmark.rundata import RunData

STAGE_NAMES = {1: "layer1", 2: "layer2", 3: "layer3", 4: "layer4"}


def grad_cam(backbone: ResNet18, head: nn.Module, images: Tensor, stage: int) -> Tensor:
    """Saliency ``[B, S, S, S]`` (>= 0) of the anomaly log-odds for a batch ``[B, 1, S, S, S]``."""
    # The stage's map first, then the stages after it from that map as a leaf: the gradient
    # needs only those, and a compiled ResNet18 (runtime.compile) returns its maps from one
    # fused graph, through which autograd cannot reach an intermediate map.
    with torch.no_grad():
        stage_map = backbone.feature_maps(images)[stage]
    with torch.enable_grad():
        stage_map.requires_grad_()
        logits = head(backbone.pool(backbone.stages_after(stage_map, stage))).float()
        log_odds = logits[:, 1] - logits[:, 0]
        (gradient,) = torch.autograd.grad(log_odds.sum(), stage_map)
    weights = gradient.float().mean(dim=(2, 3, 4), keepdim=True)  # [B, C, 1, 1, 1]
    cam = F.relu((weights * stage_map.detach().float()).sum(dim=1, keepdim=True))
    return F.interpolate(cam, size=images.shape[2:], mode="trilinear", align_corners=False)[:, 0]


def saliency_scores(saliency: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Voxel AUPRC and pointing-game hit ``[B]`` of saliency maps against boolean masks."""
    flat, inside = saliency.flatten(1).double(), masks.flatten(1).double()
    peaks = flat == flat.max(dim=1, keepdim=True).values
    hits = (peaks.double() * inside).sum(dim=1) / peaks.sum(dim=1)
    return weighted_average_precision(flat, inside), hits


def localise(
    backbone: ResNet18,
    head: nn.Module,
    data: RunData,
    test_rows: np.ndarray,
    settings: DictConfig,
    batch_size: int,
) -> dict | None:
    """Grad-CAM scores of every anomalous test volume with a mask; None without masks."""
    masks = data.cohort.masks
    if masks is None or not settings.enabled:
        return None
    stage = int(settings.stage)  # 1-4, checked with every setting (config.py)
    rows = torch.as_tensor(np.array([r for r in test_rows if bool(masks[r].any())], dtype=int))
    table = data.cohort.table.iloc[rows.numpy()]
    device = next(backbone.parameters()).device
    backbone.eval()
    head.eval()
    voxel_auprc, hits = [], []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        images = data.images(batch.numpy()).to(device)
        saliency = grad_cam(backbone, head, images, stage)
        batch_auprc, batch_hits = saliency_scores(saliency, masks[batch][:, 0].to(device))
        voxel_auprc += batch_auprc.tolist()
        hits += batch_hits.tolist()
    mask_fraction = masks[rows].flatten(1).float().mean(dim=1).tolist() if len(rows) else []
    findings = table["pathology"].fillna("") if "pathology" in table else [""] * len(rows)
    volumes = [
        {
            "subject_id": str(subject),
            "side": str(side),
            "pathology": str(finding),
            "voxel_auprc": auprc,
            "pointing_hit": hit,
            "mask_fraction": fraction,
        }
        for subject, side, finding, auprc, hit, fraction in zip(
            table["subject_id"],
            table["side"],
            findings,
            voxel_auprc,
            hits,
            mask_fraction,
            strict=True,
        )
    ]
    return {
        "method": "grad-cam",
        "stage": STAGE_NAMES[stage],
        "n": len(volumes),
        "voxel_auprc": _mean(voxel_auprc),
        "pointing_game": _mean(hits),
        "chance": _mean(mask_fraction),
        "volumes": volumes,
    }


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")
