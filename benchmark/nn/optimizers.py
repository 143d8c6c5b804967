"""Pretraining optimisers by name (``pretrain.optimizer``): Adam, AdamW, SGD and LARS.

LARS (You et al. 2017) is the residual method's optimiser (``benchmark/nn/lars.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from omegaconf import DictConfig
from torch import nn

from benchmark.errors import MethodConfigError
from benchmark.nn.lars import LARS
from benchmark.registry import Registry

OptimizerFactory = Callable[[list[dict], DictConfig, dict], torch.optim.Optimizer]

OPTIMIZERS: Registry[OptimizerFactory] = Registry(
    "optimizer", "pretrain.optimizer", MethodConfigError
)
OPTIMIZERS.register(
    "adam", lambda groups, s, impl: torch.optim.Adam(groups, lr=float(s.lr), **impl)
)
OPTIMIZERS.register(
    "adamw", lambda groups, s, impl: torch.optim.AdamW(groups, lr=float(s.lr), **impl)
)
OPTIMIZERS.register(
    "sgd",
    lambda groups, s, impl: torch.optim.SGD(
        groups, lr=float(s.lr), momentum=float(s.momentum), **impl
    ),
)
# LARS is always the multi-tensor implementation: no fused variant to choose.
OPTIMIZERS.register(
    "lars", lambda groups, s, impl: LARS(groups, lr=float(s.lr), momentum=float(s.momentum))
)


def build_optimizer(
    name: str, groups: list[dict], settings: DictConfig, implementation: dict | None = None
) -> torch.optim.Optimizer:
    """The optimiser called ``name`` over parameter ``groups``, with ``settings.lr`` (and
    ``settings.momentum`` for SGD and LARS).

    ``implementation``: keyword arguments for torch's own optimisers (``fused_optimizer``)."""
    return OPTIMIZERS.get(name)(groups, settings, implementation or {})


def fused_optimizer(module: nn.Module) -> dict:
    """Keyword arguments for torch's Adam, AdamW or SGD: ``fused=True`` (one kernel for all
    parameters instead of a Python loop of small ops: AdamW's step for the quarter-width
    ResNet18 and a projector took 2.1 instead of 9.2 ms on the 2-core build machine) when
    ``prepare_module`` was given ``runtime.fused_optimizer``, else torch's default."""
    return {"fused": True} if getattr(module, "fused_optimizer", False) else {}
