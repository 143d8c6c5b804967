"""Evaluation protocols by name: how an encoder is turned into a classifier and scored.

A protocol is a function ``(cell, cfg, data, encoder_path, workdir) -> dict`` returning the
result fields of a cell file (``metrics``, ``prevalence``, ``predictions``, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from benchmark.errors import UserError
from benchmark.finetune import run_finetune
from benchmark.results import Cell
from benchmark.rundata import RunData

Protocol = Callable[[Cell, DictConfig, RunData, "Path | None", Path], dict]

PROTOCOLS: dict[str, Protocol] = {"finetune": run_finetune}


class UnknownProtocolError(UserError):
    """A protocol name in ``finetune.protocols`` that no evaluation protocol has."""


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; an unknown name lists the known ones."""
    if name not in PROTOCOLS:
        raise UnknownProtocolError(
            f"unknown protocol '{name}' in finetune.protocols; known: {', '.join(PROTOCOLS)}"
        )
    return PROTOCOLS[name]
