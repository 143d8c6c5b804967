"""The ``knn`` protocol: k nearest neighbours among frozen encoder features.

The k-NN evaluation of self-supervised representations (Wu et al., "Unsupervised Feature
Learning via Non-Parametric Instance Discrimination", CVPR 2018; k = 20 as there and in DINO):
scikit-learn's ``KNeighborsClassifier`` on the z-scored pooled features of the cell's label
fraction (``benchmark.evaluation.probes``). The score of a volume is the (distance-weighted) share of
anomalous volumes among its ``k`` nearest training volumes; ``k`` is capped at the size of the
training subset, and the ``k`` used is recorded. No training, no setting chosen on validation
except the threshold (``benchmark.evaluation.scoring``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from sklearn.neighbors import KNeighborsClassifier

from benchmark.evaluation.probes import probe_inputs
from benchmark.evaluation.scoring import score_cell
from benchmark.results import Cell
from benchmark.rundata import RunData


def knn_settings(cfg: DictConfig) -> dict:
    """The settings a ``knn`` cell depends on (checked with every setting: config.py)."""
    return OmegaConf.to_container(cfg.probes.knn, resolve=True)


def run_knn(
    cell: Cell, cfg: DictConfig, data: RunData, encoder_path: Path | None, workdir: Path
) -> dict:
    """Score validation and test volumes by their nearest training volumes."""
    settings = knn_settings(cfg)
    parts = probe_inputs(cell, cfg, data, encoder_path)
    (_, train_x, train_y), (val_rows, val_x, _), (test_rows, test_x, _) = parts.values()
    k = min(settings["k"], len(train_y))
    neighbours = KNeighborsClassifier(
        n_neighbors=k, metric=settings["metric"], weights=settings["weights"], algorithm="brute"
    ).fit(train_x, train_y)
    anomalous = list(neighbours.classes_).index(1)
    result = score_cell(
        cell,
        data,
        val_rows,
        torch.from_numpy(neighbours.predict_proba(val_x)[:, anomalous]),
        test_rows,
        torch.from_numpy(neighbours.predict_proba(test_x)[:, anomalous]),
        "check the encoder's features (non-finite values)",
    )
    result.update(n_train=len(train_y), k=k)
    return result
