"""Equal fixed pretraining budgets, and bit-identical results from the same command.

Every method of every shipped profile pretrains for the same number of optimiser steps on the
same pool, without early stopping, and exports its last weights. Pretraining a method twice
with the same settings in fresh folders gives the same encoder bit for bit, and a whole tiny
run gives the same cell files (timings aside).
"""

import json

import pytest
import torch
from benchmark.datasets.batches import batch_loader

from benchmark.config import load_config, pretraining_settings
from benchmark.orchestration.grid import run_grid
from benchmark.registry import available_methods, get_method
from benchmark.testing import smoke_data
from benchmark.training.pretrain import pool_batches, run_pretraining, split_pool
from benchmark.training.units import pretraining_units

PRETRAINED = [name for name, cls in available_methods().items() if cls.needs_pretraining]
BUDGET_KEYS = ("pool", "val_fraction", "batch_size", "max_epochs", "max_steps")
ONE_SEED = ("splits.seeds=[0]",)


@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_every_method_of_a_shipped_profile_has_the_same_fixed_budget(profile):
    cfg = load_config(profile)
    budgets = {
        method: {key: pretraining_settings(cfg, method)[key] for key in BUDGET_KEYS}
        for method in PRETRAINED
    }
    assert len({json.dumps(b, sort_keys=True) for b in budgets.values()}) == 1, budgets
    for method in PRETRAINED:
        settings = pretraining_settings(cfg, method)
        assert int(settings.patience) == 0 and settings.export == "last", method


def _encoder(path):
    return torch.load(path, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("method", PRETRAINED)
def test_pretraining_twice_gives_the_same_encoder_after_the_common_number_of_steps(
    method, tmp_path
):
    cfg, data, _ = smoke_data(ONE_SEED)
    cfg = load_config("smoke", list(ONE_SEED), methods=[method])
    encoders, records = [], []
    for folder in ("first", "second"):
        unit = pretraining_units(cfg, method, tmp_path / folder)[0]
        encoders.append(_encoder(run_pretraining(cfg, unit, data, log=lambda m: None)))
        records.append(json.loads(unit.record_path.read_text()))
    assert encoders[0].keys() == encoders[1].keys()
    differing = [k for k in encoders[0] if not torch.equal(encoders[0][k], encoders[1][k])]
    assert not differing, f"{method}: {len(differing)} tensors differ, first {differing[0]}"
    # The common budget: max_epochs passes over the pool's training rows, batched as Lightning
    # iterates them (a last batch of one volume is dropped), the same for every method.
    settings = pretraining_settings(cfg, method)
    train_rows, _, _ = split_pool(cfg, unit, data)
    batches = len(batch_loader(pool_batches(data, train_rows), int(settings.batch_size), 0))
    assert records[0]["steps"] == records[1]["steps"] == int(settings.max_epochs) * batches
    assert records[0]["seed"] == 0 and records[0]["export"] == "last"
    stages = records[0]["stage_costs"]
    if get_method(method).pretraining_scope == "fold":  # residual: its CAE is an extra cost
        assert stages["cae"]["optimiser_steps"] > 0 and stages["cae"]["seconds"] > 0


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@pytest.mark.slow
def test_a_whole_tiny_run_twice_gives_the_same_cell_files(tmp_path):
    cfg = load_config("smoke", list(ONE_SEED), methods=["scratch", "simclr"])
    for folder in ("first", "second"):
        run_grid(cfg, tmp_path / folder, quiet=True)
    cells = sorted((tmp_path / "first" / "cells").rglob("*.json"))
    assert len(cells) == 2 * 3 * 2 * 2  # methods x protocols x fractions x folds, one seed
    for path in cells:
        twin = tmp_path / "second" / path.relative_to(tmp_path / "first")
        first, second = (_without_timings(json.loads(p.read_text())) for p in (path, twin))
        assert first["status"] == "done"
        assert first == second, path
