"""What a method plugin is given before and after training: its unit and a narrow view of the run.

A plugin's ``prepare`` and ``export`` receive a ``PretrainingContext``. It offers what methods
need (the volume size, the label fractions, row sets, images, labels and masks by rows, a
settings key, ``prepare_module`` and the ``stage`` cache), never the run's whole configuration,
so a plugin depends on this small API and not on how the harness is configured. The harness
builds contexts (``benchmark.training.pretrain.pretraining_context``).
"""

from __future__ import annotations

import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn

from benchmark.config import config_hash
from benchmark.results import UnloadableFileError, load_plain, require_inside
from benchmark.rundata import RunData

STAGE_POLL_SECONDS = 2.0


# Stage files hold numpy arrays as tagged tensors: ``torch.load(weights_only=True)`` reads no
# numpy objects, and a tensor keeps an array's dtype, shape and values exactly.
_NUMPY = "__ssl3d_numpy__"
_SCALAR = "__ssl3d_numpy_scalar__"
_PLAIN_LEAVES = (
    type(None), bool, int, float, complex, str, bytes, Tensor, torch.dtype, torch.device,
    torch.Size,
)  # fmt: skip


def _storable(value: Any, where: str) -> Any:
    """A stage's result in the form that loads with ``weights_only=True`` (see ``_restored``)."""
    if isinstance(value, _PLAIN_LEAVES):
        return value
    if isinstance(value, np.generic) or type(value) is np.ndarray:
        array = np.array(value, order="C", copy=True)
        try:
            tensor = torch.from_numpy(array)
        except TypeError as error:
            raise TypeError(f"{where}: a numpy array of dtype {array.dtype} ({error})") from None
        return {_NUMPY: tensor, _SCALAR: isinstance(value, np.generic)}
    if isinstance(value, (DictConfig, ListConfig)):
        return _storable(OmegaConf.to_container(value, resolve=True), where)
    if type(value) in (dict, OrderedDict):
        return type(value)(
            (key, _storable(item, f"{where}[{key!r}]")) for key, item in value.items()
        )
    if type(value) in (list, tuple):
        return type(value)(_storable(item, f"{where}[{i}]") for i, item in enumerate(value))
    if type(value) is set:
        return {_storable(item, f"{where} (a set)") for item in value}
    raise TypeError(f"{where}: a {type(value).__name__}")


def _restored(value: Any) -> Any:
    """The inverse of ``_storable``: tagged tensors become numpy arrays (or scalars) again."""
    if type(value) in (dict, OrderedDict):
        if set(value) == {_NUMPY, _SCALAR} and isinstance(value[_NUMPY], Tensor):
            array = value[_NUMPY].numpy()
            return array[()] if value[_SCALAR] else array
        return type(value)((key, _restored(item)) for key, item in value.items())
    if type(value) in (list, tuple):
        return type(value)(_restored(item) for item in value)
    return value


@dataclass(frozen=True)
class PretrainingUnit:
    """One pretraining: a method and the split seed it serves (its random seed follows from
    it, ``benchmark/training/units.py``), and for fold- or fraction-scoped methods the fold and
    label fraction."""

    method: str
    directory: Path
    seed: int
    fold: int | None = None
    fraction: float | None = None

    @property
    def title(self) -> str:
        if self.fold is None:
            return f"{self.method} (seed {self.seed})"
        at = "" if self.fraction is None else f", fraction {self.fraction:g}"
        return f"{self.method} (seed {self.seed}, fold {self.fold}{at})"

    @property
    def encoder_path(self) -> Path:
        return self.directory / "encoder.pt"

    @property
    def record_path(self) -> Path:
        return self.directory / "pretrain.json"


@dataclass
class PretrainingContext:
    """What a method's ``prepare`` and ``export`` steps may use.

    Args:
        unit: the pretraining unit (its directory, and seed / fold / fraction when scoped).
        data: the run's cohort and splits (reached through the methods below).
        pool_rows: cohort rows of the volumes this unit trains on.
        pool_val_rows: rows of the pool held out for the validation loss.
        image_size: the side of the cubic volumes (``data.size``).
        preprocessing: the settings that made the volumes (size, crop, clip, mirror).
        label_fractions: the run's label fractions (``splits.fractions``).
        prepare: applies the run's runtime settings to a module (``prepare_module``).
        device: the training device.
        log: one line to the run's log.
        builds_stages: False on data-parallel ranks other than 0: they wait for rank 0's stage
            files instead of building them, so no two processes write the same stage.

    ``notes`` collects facts the method reports about its stages (for example how well the
    residual method's targets localise anomalies); they are written into ``pretrain.json``,
    with ``stage_costs``: each stage's build seconds and optimiser steps (a stage's result
    states its steps as ``optimiser_steps``), the method's compute beyond the common budget.
    """

    unit: PretrainingUnit
    data: RunData
    pool_rows: np.ndarray
    pool_val_rows: np.ndarray
    image_size: int
    preprocessing: dict[str, Any]
    label_fractions: tuple[float, ...]
    prepare: Callable[[nn.Module], nn.Module]
    device: torch.device
    log: Callable[[str], None] = print
    builds_stages: bool = True
    stages_used: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    stage_costs: dict[str, dict[str, Any]] = field(default_factory=dict)
    run_settings: Any = field(default=None, repr=False)  # only for the deprecated ``config``
    _unreadable: set[Path] = field(default_factory=set, repr=False)  # stage files said so
    _built_seconds: float = field(default=0.0, repr=False)  # of the stages built so far

    @property
    def config(self) -> Any:
        """Deprecated: the run's whole configuration, which plugins of ssl3d 0.1 read. Use
        ``image_size``, ``preprocessing``, ``label_fractions``, ``pool_rows`` and
        ``prepare_module`` instead; this goes away in the next release."""
        warnings.warn(
            "PretrainingContext.config is deprecated: use image_size, preprocessing, "
            "label_fractions, pool_rows or prepare_module",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.run_settings

    # ---- rows --------------------------------------------------------------------------

    @property
    def pretraining_pool_rows(self) -> np.ndarray:
        """Every volume of the pretraining pool (training and held-out validation), sorted."""
        return np.union1d(self.pool_rows, self.pool_val_rows)

    @property
    def cohort_size(self) -> int:
        """Volumes in the cohort (the range of every row index)."""
        return len(self.data.cohort)

    def labelled_training_rows(self, fraction: float = 1.0) -> np.ndarray:
        """Labelled training volumes of this unit's fold at a label fraction (never validation
        or test subjects)."""
        self._require_fold("labelled training rows")
        return self.data.training_rows(self.unit.seed, self.unit.fold, fraction)

    def validation_rows(self) -> np.ndarray:
        """Labelled validation volumes of this unit's fold (for checks, never for training)."""
        self._require_fold("validation rows")
        return self.data.partition_rows(self.unit.seed, self.unit.fold, "val")

    def _require_fold(self, what: str) -> None:
        if self.unit.fold is None:
            raise RuntimeError(
                f"{self.unit.method}: {what} exist per fold; declare pretraining_scope = 'fold' "
                "to use them"
            )

    # ---- volumes by rows ---------------------------------------------------------------

    def images(self, rows: np.ndarray) -> Tensor:
        """``[len(rows), 1, S, S, S]`` float32 volumes."""
        return self.data.images(rows)

    def labels(self, rows: np.ndarray) -> Tensor:
        """0/1 labels (long) of labelled rows."""
        return self.data.labels(rows)

    def pool_labels(self, rows: np.ndarray) -> Tensor | None:
        """0/1 labels (long) of pretraining-pool volumes from the cohort's pool truth file
        (``unlabelled_truth.csv`` next to the manifest, docs/methods.md "supervised"), -1 where
        the file gives none (a labelled volume's label belongs to the folds:
        ``labelled_training_rows``); None when the cohort has no such file.

        Only a method that deliberately trains on labels (a positive control) reads them. Rows
        outside this unit's pretraining pool are refused: the pool never holds a test subject.
        """
        outside = np.setdiff1d(rows, self.pretraining_pool_rows)
        if len(outside):
            raise ValueError(
                f"{self.unit.method}: pool_labels of {len(outside)} volume(s) outside the "
                f"pretraining pool (first: {self.describe(outside[:1])[0]})"
            )
        truth = self.data.pool_truth
        return None if truth is None else torch.as_tensor(truth[rows], dtype=torch.long)

    def masks(self, rows: np.ndarray) -> Tensor | None:
        """Anomaly masks ``[len(rows), 1, S, S, S]`` (bool), or None for a cohort without."""
        masks = self.data.cohort.masks
        return None if masks is None else masks[torch.as_tensor(rows, dtype=torch.long)]

    @property
    def manifest(self) -> Path:
        """The cohort's manifest CSV (for messages)."""
        return self.data.manifest

    def manifest_rows(self, rows: np.ndarray) -> pd.DataFrame:
        """The manifest's rows of these volumes (``subject_id``, ``side``, ``pathology``, ...)."""
        return self.data.cohort.table.iloc[rows]

    def describe(self, rows: np.ndarray) -> list[str]:
        """'subject side' of each row, for messages."""
        table = self.manifest_rows(rows)
        return [f"{s} {d}".strip() for s, d in zip(table.subject_id, table.side)]

    def rows_fingerprint(self, rows: np.ndarray) -> str:
        """Identifies exactly which volumes were used (put it into stage settings)."""
        return self.data.subjects_fingerprint(rows)

    # ---- settings, modules and the stage cache -------------------------------------------

    @staticmethod
    def settings_key(settings: Any) -> str:
        """A short stable hash of settings (nested dicts, lists, numbers, strings)."""
        return config_hash(settings)

    def prepare_module(self, module: nn.Module) -> nn.Module:
        """The module with the run's runtime settings applied (memory format, compile, ...)."""
        return self.prepare(module)

    def stage(
        self, name: str, settings: Mapping[str, Any], build: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """The result of ``build()``, computed once and cached, keyed by ``settings``.

        ``settings`` must hold everything the result depends on (including the keys of stages
        it was built from); the data fingerprint is added here. A re-run with equal settings
        loads the cached file instead of building again.

        A result holds tensors, numpy arrays and scalars, numbers, strings, ``None`` and
        lists, tuples, sets and dicts of them (OmegaConf containers are stored as plain lists
        and dicts). The file is loaded as data only (``weights_only=True``): one that does not
        load so (corrupt, made by an older version, or altered) is rebuilt, with a log line
        naming it.
        """
        key = config_hash({"settings": settings, "data": self.data.fingerprint})
        path = self.unit.directory / "stages" / f"{name}-{key}.pt"
        self.stages_used.append(path.name)
        require_inside(path, self.unit.directory, self._stage_fix(path))
        while not self.builds_stages:  # rank 0 builds (or rebuilds) it; wait until it loads
            if path.exists() and (stored := self._read_stage(path)) is not None:
                return stored
            time.sleep(STAGE_POLL_SECONDS)
        if path.exists():
            stored = self._read_stage(path, "Building it again.")
            if stored is not None:
                self.log(f"{self.unit.title}: reusing stage '{name}' ({path.name})")
                self._count_cost(name, stored, cached=True)
                return stored
        started, nested_before = time.perf_counter(), self._built_seconds
        result = build()
        # A stage built inside another's build (the residuals' CAE) is counted once, as its own.
        own = time.perf_counter() - started - (self._built_seconds - nested_before)
        self._built_seconds += own
        result["build_seconds"] = round(own, 2)
        self._count_cost(name, result, cached=False)
        try:
            storable = _storable(result, f"stage '{name}'")
        except TypeError as error:
            raise TypeError(
                f"{self.unit.method}: {error} cannot be stored in a stage; a stage holds tensors, "
                "numpy arrays and scalars, numbers, strings, None and lists, tuples, sets and "
                "dicts of them"
            ) from None
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        torch.save(storable, temporary)
        temporary.replace(path)
        self.log(
            f"{self.unit.title}: stage '{name}' built in {time.perf_counter() - started:.0f} s"
        )
        return result

    def _count_cost(self, name: str, result: dict[str, Any], cached: bool) -> None:
        """Record what building the stage cost (also when it was reused: the unit rests on it)."""
        self.stage_costs[name] = {
            "optimiser_steps": int(result.get("optimiser_steps", 0)),
            "seconds": float(result.get("build_seconds", 0.0)),
            "cached": cached,
        }

    def stored_stage(self, path: Path) -> dict[str, Any] | None:
        """The content of a stage file of this unit (``stages/<name>-<key>.pt``, for example to
        say how a cached stage of other settings differs), or None when it does not load as
        plain data (the log says so once)."""
        require_inside(path, self.unit.directory, self._stage_fix(Path(path)))
        return self._read_stage(Path(path), "Ignoring it.")

    def _read_stage(self, path: Path, then: str | None = None) -> dict[str, Any] | None:
        """The stage file's content, or None when it is not plain data (logged once, unless
        ``then`` is None: a waiting rank that does not log)."""
        try:
            stored = load_plain(path, "")
            if not isinstance(stored, dict):
                raise UnloadableFileError(
                    path, f"it holds a {type(stored).__name__}, not a stage's dict", ""
                )
        except UnloadableFileError as error:
            if then is not None and path not in self._unreadable:
                self._unreadable.add(path)
                self.log(f"{self.unit.title}: cannot use stage file {str(error).strip()} {then}")
            return None
        return _restored(stored)

    def _stage_fix(self, path: Path) -> str:
        return f"Delete {path.parent} to build {self.unit.title}'s stages again."
