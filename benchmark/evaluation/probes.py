"""Frozen features for the probe protocols (``linear``, ``knn``): the encoder is never trained.

A probe measures what a pretrained representation holds as it is (Alain & Bengio, "Understanding
intermediate layers using linear classifier probes", 2016): the pooled ResNet18 features of
every labelled volume are computed once per encoder, in evaluation mode and without views, and
z-scored with the mean and deviation of the cell's training subset. ``scratch`` probes a random
encoder drawn from the cell's seed (the same for every fold and fraction of that seed). A method
whose "encoder" is a fixed function (``SSLMethod.frozen_features``, the ``intensity_features``
baseline) gives its features instead; z-scoring and the probes stay the same.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from benchmark.nn.backbone import ResNet18, load_encoder, stage_widths
from benchmark.registry import get_method
from benchmark.results import Cell
from benchmark.rundata import RunData
from benchmark.training.runtime import prepare_module, resolve_device

_CACHE: OrderedDict[tuple, Tensor] = OrderedDict()
_CACHE_SIZE = 8  # fold-scoped methods alternate between (seed, fold) encoders


@torch.no_grad()
def encoder_features(encoder: ResNet18, images: Tensor, batch_size: int = 32) -> Tensor:
    """Pooled features ``[N, feature_dim]`` of volumes, in evaluation mode, on the CPU."""
    encoder.eval()
    device = next(encoder.parameters()).device
    batches = [images[i : i + batch_size].to(device) for i in range(0, len(images), batch_size)]
    return torch.cat([encoder(batch).float().cpu() for batch in batches])


def frozen_encoder(cfg: DictConfig, encoder_path: Path | None, seed: int) -> ResNet18:
    """The pretrained encoder, or for methods without one a random encoder drawn from ``seed``."""
    widths = stage_widths(float(cfg.backbone.width_multiplier))
    if encoder_path:
        return load_encoder(encoder_path, widths)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ResNet18(widths)


def cohort_features(
    cfg: DictConfig, data: RunData, encoder_path: Path | None, seed: int, method: str
) -> Tensor:
    """Features ``[len(cohort), feature_dim]`` of every labelled volume (NaN for the others):
    the method's ``frozen_features`` when it has them, else its encoder's.

    Cached per method, encoder file (path and stamp), random-encoder seed and cohort, so the
    cells of one encoder extract features once.
    """
    stamp = None
    if encoder_path:
        status = Path(encoder_path).stat()
        stamp = (str(encoder_path), status.st_mtime_ns, status.st_size)
    key = (
        method,
        stamp,
        None if encoder_path else seed,
        cfg.backbone.width_multiplier,
        data.fingerprint,
    )
    if key not in _CACHE:
        labelled = np.flatnonzero(data.cohort.table["label"].notna().to_numpy())
        found = get_method(method).frozen_features(data.images(labelled))
        if found is None:
            encoder = frozen_encoder(cfg, encoder_path, seed).to(resolve_device(cfg.runtime))
            prepare_module(encoder, cfg.runtime)
            found = encoder_features(encoder, data.images(labelled))
        features = torch.full((len(data.cohort.table), found.shape[1]), torch.nan)
        features[labelled] = found.float()
        _CACHE[key] = features
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return _CACHE[key]


def probe_inputs(
    cell: Cell, cfg: DictConfig, data: RunData, encoder_path: Path | None
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{partition: (rows, standardised features, labels)}`` for train, val and test.

    The training subset is the cell's label fraction; the scaler is fitted on it alone.
    """
    features = cohort_features(cfg, data, encoder_path, cell.seed, cell.method)
    rows = {
        "train": data.training_rows(cell.seed, cell.fold, cell.fraction),
        "val": data.partition_rows(cell.seed, cell.fold, "val"),
        "test": data.partition_rows(cell.seed, cell.fold, "test"),
    }
    scaler = StandardScaler().fit(features[rows["train"]].numpy())
    return {
        name: (part, scaler.transform(features[part].numpy()), data.labels(part).numpy())
        for name, part in rows.items()
    }
