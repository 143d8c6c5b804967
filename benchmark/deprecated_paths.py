"""Module paths of the flat layout (ssl3d 0.1), kept importable for one release.

The harness moved into layer subpackages and method helpers into their methods (see
docs/architecture.md). A plugin or script that still imports an old path, for example
``from benchmark.backbone import ResNet18`` or ``from benchmark.pretrain import
PretrainingContext``, gets the module at its new path and a ``DeprecationWarning`` naming it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

# old module path -> new module path
MOVED = {
    f"benchmark.{old}": f"benchmark.{new}"
    for old, new in {
        "backbone": "nn.backbone",
        "decoders": "nn.decoders",
        "momentum": "nn.momentum",
        "lars": "nn.lars",
        "randomness": "nn.randomness",
        "batches": "datasets.batches",
        "runtime": "training.runtime",
        "pretrain": "training.pretrain",
        "protocols": "evaluation.protocols",
        "finetune": "evaluation.finetune",
        "probes": "evaluation.probes",
        "linear_probe": "evaluation.linear_probe",
        "knn_probe": "evaluation.knn_probe",
        "scoring": "evaluation.scoring",
        "metrics": "evaluation.metrics",
        "localisation": "evaluation.localisation",
        "grid": "orchestration.grid",
        "executors": "orchestration.executors",
        "collect": "reporting.collect",
        "statistics": "reporting.statistics",
        "summaries": "reporting.summaries",
        "tables": "reporting.tables",
        "figures": "reporting.figures",
        "report": "reporting.report",
        "tuning": "studies.tuning",
        "ablation": "studies.ablation",
        "perf": "tools.perf",
        "scaffold": "tools.scaffold",
        "cae": "methods.residual.cae",
        "residuals": "methods.residual.targets",
        "residual_figure": "methods.residual.figure",
        "sparse": "methods.spark.sparse",
        "location_conv": "methods.drasclr.location_conv",
    }.items()
}


class _MovedModule(importlib.abc.Loader):
    """Loads an old path as the module at its new path (the same module object)."""

    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} has moved to {self.new}; import it from there (the old path will be "
            "removed in the next release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module at the new path is already imported."""


class MovedPathFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths of ``MOVED`` (and nothing else)."""

    def find_spec(self, fullname: str, path=None, target=None):
        new = MOVED.get(fullname)
        return None if new is None else importlib.util.spec_from_loader(fullname, _MovedModule(new))


def install() -> None:
    """Make the old paths importable (once per process)."""
    if not any(isinstance(finder, MovedPathFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedPathFinder())
