"""The ``linear`` protocol: logistic regression on frozen encoder features.

The linear evaluation of self-supervised representations (e.g. Chen et al., SimCLR, ICML 2020),
as scikit-learn's L2-regularised ``LogisticRegression`` on the z-scored pooled features of the
cell's label fraction (``benchmark.evaluation.probes``). The inverse regularisation strength ``C`` is the
one of ``probes.linear.C`` with the best validation AUPRC (ties: the stronger
regularisation); with ``probes.linear.class_weighted`` classes are weighted as in fine-tuning's
loss (``class_weight="balanced"``, i.e. w_j = n / (2 n_j)).
The threshold is chosen on the validation set as in every protocol (``benchmark.evaluation.scoring``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

from benchmark.evaluation.probes import probe_inputs
from benchmark.evaluation.scoring import score_cell
from benchmark.results import Cell
from benchmark.rundata import RunData


def linear_settings(cfg: DictConfig) -> dict:
    """The settings a ``linear`` cell depends on (checked with every setting: config.py)."""
    return OmegaConf.to_container(cfg.probes.linear, resolve=True)


def run_linear(
    cell: Cell, cfg: DictConfig, data: RunData, encoder_path: Path | None, workdir: Path
) -> dict:
    """Fit the probe for every ``C``, keep the best on validation, score the test set."""
    settings = linear_settings(cfg)
    parts = probe_inputs(cell, cfg, data, encoder_path)
    (_, train_x, train_y), (val_rows, val_x, val_y), (test_rows, test_x, _) = parts.values()
    best, best_auprc, validation_auprc = None, -1.0, {}
    for strength in sorted(float(c) for c in settings["C"]):
        probe = LogisticRegression(
            C=strength,
            max_iter=int(settings["max_iter"]),
            class_weight="balanced" if settings["class_weighted"] else None,
        ).fit(train_x, train_y)
        auprc = float(average_precision_score(val_y, probe.predict_proba(val_x)[:, 1]))
        validation_auprc[f"{strength:g}"] = auprc
        if auprc > best_auprc:
            best, best_auprc = probe, auprc
    result = score_cell(
        cell,
        data,
        val_rows,
        torch.from_numpy(best.predict_proba(val_x)[:, 1]),
        test_rows,
        torch.from_numpy(best.predict_proba(test_x)[:, 1]),
        "check the encoder's features (non-finite values)",
    )
    result.update(n_train=len(train_y), C=best.C, validation_auprc=validation_auprc)
    return result
