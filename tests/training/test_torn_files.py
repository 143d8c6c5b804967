"""A torn checkpoint or encoder is an accident the next run recovers from: ``run_grid`` (what
``ssl3d run`` runs) names it in run.log, moves it to the unit's ``set-aside/`` folder and
pretrains the unit again, from its first epoch, to the encoder an untouched run exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import benchmark.training.pretrain as pretrain_module
from benchmark.config import load_config
from benchmark.orchestration.grid import run_grid

OVERRIDES = [
    "pretrain.max_epochs=2",
    "pretrain.val_fraction=0",  # no validation loss: last.ckpt is the only checkpoint
    "splits.seeds=[0]",
    "splits.fractions=[1.0]",
    "finetune.protocols=[linear]",
    "runtime.threads=1",
]


def _tear(path: Path) -> bytes:
    """Cut ``path`` to half its length, as a full disk or an interrupted copy does."""
    torn = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(torn)
    return torn


def _said(out: Path, path: Path) -> list[str]:
    lines = (out / "run.log").read_text().splitlines()
    return [line for line in lines if f"cannot use {path}: " in line]


def test_a_torn_last_checkpoint_then_a_torn_encoder_are_set_aside_and_pretrained_again(
    tmp_path,
):
    cfg = load_config("smoke", OVERRIDES, methods=["simclr"])
    out = tmp_path / "run"
    unit = out / "pretrain" / "simclr" / "seed0"

    def interrupted_export(backbone, path):
        raise RuntimeError("interrupted before export")

    with pytest.MonkeyPatch.context() as patch:  # trained, killed before export: last.ckpt stays
        patch.setattr(pretrain_module, "save_encoder", interrupted_export)
        run_grid(cfg, out, quiet=True)
    last = unit / "checkpoints" / "last.ckpt"
    torn_checkpoint = _tear(last)

    run_grid(cfg, out, quiet=True)
    said = _said(out, last)
    assert len(said) == 1 and "not a readable torch file" in said[0], said
    assert (unit / "set-aside" / "checkpoints" / "last.ckpt").read_bytes() == torn_checkpoint
    record = json.loads((unit / "pretrain.json").read_text())
    assert record["status"] == "done" and record["resumed_at_epoch"] is None
    assert [entry["moved_to"] for entry in record["set_aside"]] == [
        "set-aside/checkpoints/last.ckpt"
    ]
    first = torch.load(unit / "encoder.pt", weights_only=True)

    torn_encoder = _tear(unit / "encoder.pt")
    run_grid(cfg, out, quiet=True)
    said = _said(out, unit / "encoder.pt")
    assert len(said) == 1 and "pretraining again" in said[0], said
    assert (unit / "set-aside" / "encoder.pt").read_bytes() == torn_encoder
    record = json.loads((unit / "pretrain.json").read_text())
    assert record["status"] == "done"
    assert [entry["file"] for entry in record["set_aside"]] == [
        "checkpoints/last.ckpt",
        "encoder.pt",
    ]
    # Pretrained from scratch with the same settings: the same weights as the restart after the
    # torn checkpoint, so the cells that used the first encoder stay valid.
    second = torch.load(unit / "encoder.pt", weights_only=True)
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name
    cells = [json.loads(path.read_text()) for path in (out / "cells").rglob("*.json")]
    assert cells and all(cell["status"] == "done" for cell in cells)
