"""Pretraining units: which pretrainings a method needs in a run, and when one is finished.

A pretraining *unit* is one method pretrained once per seed of ``splits.seeds``
(``pretraining_scope = "run"``), once per (seed, fold) for methods whose preparation uses a
fold's labelled data (``"fold"``, e.g. the residual method's autoencoder trained on that fold's
normal subjects), or once per (seed, fold, label fraction) for methods that may use only the
labels of the fraction being evaluated (``"fraction"``). A method may choose its scope from its
settings (``SSLMethod.scope``). Every unit pretrains with its own random seed,
``pretrain.seed + seed`` (``unit_settings``), so the cells of seed ``s`` start from an encoder
of pretraining seed ``s`` and pretraining variation is sampled with the split seeds. A unit is
finished when its ``pretrain.json`` says done with the hash of its fingerprint, everything its
encoder depends on, and its ``encoder.pt`` loads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from benchmark.config import method_hparams, pretraining_settings
from benchmark.context import PretrainingUnit
from benchmark.registry import get_method
from benchmark.results import (
    UnloadableFileError,
    code_version,
    describe_set_aside,
    load_plain,
    read_json,
    recorded_set_aside,
    require_inside,
    set_aside,
    write_json_atomic,
)
from benchmark.rundata import RunData
from benchmark.training.runtime import numerics

# The data settings that make the volumes: every encoder (and cached stage) depends on them.
PREPROCESSING_KEYS = ("size", "crop", "clip_percentiles", "mirror_right")


def pretraining_units(cfg: DictConfig, method: str, out: Path) -> list[PretrainingUnit]:
    """The pretraining units a method needs in this run (none for ``scratch``)."""
    cls = get_method(method)
    root = out / "pretrain" / method
    if not cls.needs_pretraining:
        return []
    scope = cls.scope(method_hparams(cfg, method))
    if scope == "run":
        return [PretrainingUnit(method, root / f"seed{s}", int(s)) for s in cfg.splits.seeds]
    folds = [(int(s), fold) for s in cfg.splits.seeds for fold in range(int(cfg.splits.folds))]
    if scope == "fold":
        return [PretrainingUnit(method, root / f"seed{s}" / f"fold{k}", s, k) for s, k in folds]
    if scope == "fraction":
        return [
            PretrainingUnit(method, root / f"seed{s}" / f"fold{k}" / f"f{f:g}", s, k, float(f))
            for s, k in folds
            for f in cfg.splits.fractions
        ]
    raise ValueError(f"{cls.__name__}.scope must give 'run', 'fold' or 'fraction', not {scope!r}")


def unit_for(
    units: list[PretrainingUnit], seed: int, fold: int, fraction: float
) -> PretrainingUnit | None:
    """The unit whose encoder an evaluation cell of (seed, fold, fraction) starts from: the
    pretraining of the cell's seed (and fold and fraction, for units scoped so)."""
    for unit in units:
        if unit.seed == seed and (unit.fold is None or unit.fold == fold):
            if unit.fraction is None or abs(unit.fraction - fraction) < 1e-9:
                return unit
    return None


def unit_settings(cfg: DictConfig, unit: PretrainingUnit) -> DictConfig:
    """The unit's pretraining settings (``pretraining_settings``) with ``seed`` the unit's own
    random seed: ``pretrain.seed`` (an offset, 0 by default) plus the unit's split seed."""
    settings = pretraining_settings(cfg, unit.method)
    settings.seed = int(settings.seed) + int(unit.seed)
    return settings


def pretraining_fingerprint(cfg: DictConfig, unit: PretrainingUnit, data: RunData) -> dict:
    """Everything a unit's encoder depends on, the code version and numerics settings too;
    its hash decides whether the unit is done."""
    pool_rows, _ = data.pretraining_pool(pretraining_settings(cfg, unit.method).pool)
    fingerprint = {
        "method": unit.method,
        "seed": unit.seed,
        "fold": unit.fold,
        "settings": method_hparams(cfg, unit.method),
        "pretrain": unit_settings(cfg, unit),
        "backbone": cfg.backbone,
        "code": code_version(),
        "numerics": numerics(cfg.runtime),
        "data": {
            "cohort": data.fingerprint,
            "preprocessing": {k: cfg.data[k] for k in PREPROCESSING_KEYS},
            "pool": data.subjects_fingerprint(pool_rows),
        },
    }
    if unit.fold is not None:
        rows = data.training_rows(unit.seed, unit.fold, unit.fraction or 1.0)
        fingerprint["data"]["fold_training"] = data.subjects_fingerprint(rows)
    if unit.fraction is not None:  # only fraction-scoped units: other hashes stay as they were
        fingerprint["fraction"] = unit.fraction
    return OmegaConf.to_container(OmegaConf.create(fingerprint), resolve=True)


def is_finished(
    unit: PretrainingUnit,
    expected_hash: str,
    log: Callable[[str], None] = print,
    moves: bool = True,
) -> bool:
    """True when the unit's encoder exists, was made with these settings and loads as a plain
    state dict of tensors (once per check, before any cell reads it).

    An ``encoder.pt`` that does not load (torn, foreign or altered) is moved to the unit's
    ``set-aside/`` folder, named in ``log`` and in ``pretrain.json``, and the unit counts as
    unfinished: it is pretrained again, with the same settings to the same weights, so cells
    that already used the old encoder stay valid. ``moves`` False (data-parallel ranks but 0):
    the check only; rank 0 moves the file. An ``encoder.pt`` that lies outside the unit's
    folder (a link) is refused with a ``UserError``.
    """
    record = read_json(unit.record_path)
    if not (
        record is not None
        and record.get("status") == "done"
        and record.get("config_hash") == expected_hash
        and unit.encoder_path.exists()
    ):
        return False
    fix = f"Delete {unit.encoder_path} to pretrain {unit.title} again."
    require_inside(unit.encoder_path, unit.directory, fix)
    try:
        state = load_plain(unit.encoder_path, fix)
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise UnloadableFileError(unit.encoder_path, "it is not a state dict of tensors", fix)
    except UnloadableFileError as error:
        if moves:
            entry = set_aside(unit.encoder_path, unit.directory, error.reason)
            record["set_aside"] = [*recorded_set_aside(record), entry]
            write_json_atomic(unit.record_path, record)
            log(f"{unit.title}: {describe_set_aside(entry, unit.directory)}; pretraining again")
        return False
    return True
