"""Evaluation protocols by name: how an encoder is turned into a classifier and scored.

A protocol runs one cell, ``(cell, cfg, data, encoder_path, workdir) -> dict`` (the result
fields of its cell file: ``metrics``, ``prevalence``, ``threshold``, ``predictions``, ...), and
names the settings its results depend on (checked before anything trains; they enter the
cell's config hash, so changing the k-NN's ``k`` recomputes ``knn`` cells only).

- ``finetune``: the whole network trained (docs/protocol.md; ``benchmark/evaluation/finetune.py``).
- ``linear``: logistic regression on frozen features (``benchmark/evaluation/linear_probe.py``).
- ``knn``: k nearest neighbours among frozen features (``benchmark/evaluation/knn_probe.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from benchmark.errors import UserError
from benchmark.registry import Registry
from benchmark.results import Cell
from benchmark.rundata import RunData


class UnknownProtocolError(UserError):
    """A protocol name in ``finetune.protocols`` that no evaluation protocol has."""


def _resolve(target: str) -> Callable[..., Any]:
    """The function that ``"package.module:function"`` names, imported when first used."""
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


@dataclass(frozen=True)
class Protocol:
    """A cell runner and the (checked) settings its results depend on; call it to run a cell.

    ``runner`` and ``settings`` name their functions as ``"module:function"`` (as entry points
    do), imported on first use: a report can list protocols and their descriptions without
    loading the training code behind them.
    """

    description: str  # how report captions describe it
    runner: str  # (cell, cfg, data, encoder path, workdir) -> the result fields of a cell file
    settings_of: str  # cfg -> the checked settings its results depend on

    def settings(self, cfg: DictConfig) -> dict:
        return _resolve(self.settings_of)(cfg)

    def __call__(
        self, cell: Cell, cfg: DictConfig, data: RunData, encoder: Path | None, workdir: Path
    ) -> dict:
        return _resolve(self.runner)(cell, cfg, data, encoder, workdir)


PROTOCOLS: Registry[Protocol] = Registry("protocol", "finetune.protocols", UnknownProtocolError)
PROTOCOLS.register(
    "finetune",
    Protocol(
        "the whole network fine-tuned",
        "benchmark.evaluation.finetune:run_finetune",
        "benchmark.evaluation.finetune:finetune_settings",
    ),
)
PROTOCOLS.register(
    "linear",
    Protocol(
        "logistic regression on frozen features",
        "benchmark.evaluation.linear_probe:run_linear",
        "benchmark.evaluation.linear_probe:linear_settings",
    ),
)
PROTOCOLS.register(
    "knn",
    Protocol(
        "k nearest neighbours among frozen features",
        "benchmark.evaluation.knn_probe:run_knn",
        "benchmark.evaluation.knn_probe:knn_settings",
    ),
)


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; an unknown name lists the known ones."""
    return PROTOCOLS.get(name)
