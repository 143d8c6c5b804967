"""Evaluation protocols by name: how an encoder is turned into a classifier and scored.

A protocol runs one cell, ``(cell, cfg, data, encoder_path, workdir) -> dict`` (the result
fields of its cell file: ``metrics``, ``prevalence``, ``threshold``, ``predictions``, ...), and
names the settings its results depend on (checked before anything trains; they enter the
cell's config hash, so changing the k-NN's ``k`` recomputes ``knn`` cells only).

- ``finetune``: the whole network trained (PROTOCOL.md; ``benchmark.finetune``).
- ``linear``: logistic regression on frozen features (``benchmark.linear_probe``).
- ``knn``: k nearest neighbours among frozen features (``benchmark.knn_probe``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from benchmark.errors import UserError
from benchmark.finetune import finetune_settings, run_finetune
from benchmark.knn_probe import knn_settings, run_knn
from benchmark.linear_probe import linear_settings, run_linear
from benchmark.results import Cell
from benchmark.rundata import RunData


@dataclass(frozen=True)
class Protocol:
    """A cell runner and the (checked) settings its results depend on; call it to run a cell."""

    run: Callable[[Cell, DictConfig, RunData, Path | None, Path], dict]
    settings: Callable[[DictConfig], dict]
    description: str  # how report captions describe it

    def __call__(
        self, cell: Cell, cfg: DictConfig, data: RunData, encoder: Path | None, workdir: Path
    ) -> dict:
        return self.run(cell, cfg, data, encoder, workdir)


PROTOCOLS: dict[str, Protocol] = {
    "finetune": Protocol(run_finetune, finetune_settings, "the whole network fine-tuned"),
    "linear": Protocol(run_linear, linear_settings, "logistic regression on frozen features"),
    "knn": Protocol(run_knn, knn_settings, "k nearest neighbours among frozen features"),
}


class UnknownProtocolError(UserError):
    """A protocol name in ``finetune.protocols`` that no evaluation protocol has."""


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; an unknown name lists the known ones."""
    if name not in PROTOCOLS:
        raise UnknownProtocolError(
            f"unknown protocol '{name}' in finetune.protocols; known: {', '.join(PROTOCOLS)}"
        )
    return PROTOCOLS[name]
