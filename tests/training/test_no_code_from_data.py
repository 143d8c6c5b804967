"""Nothing in a run folder runs code: every torch file ssl3d loads from one is read as data.

A run folder may come from someone else. Each file the harness loads from it (the method's
cached stages, the pretraining and fine-tuning checkpoints a resume reads, the exported encoder,
the residual decoder, the cohort cache) is replaced here by a pickle that, unpickled in full,
would create a marker file; the code path that reads it runs, and the marker must never appear.
A file that cannot be used is named in the error or the log. Checkpoints may not point outside
their folder either. The run folder is a real smoke run, built once, with one pretraining unit
(simclr) and one fine-tuning cell left interrupted so that their checkpoints stay for a resume.
"""

from __future__ import annotations

import builtins
import itertools
import os
from pathlib import Path

import pytest
import torch
from benchmark.methods.residual.figure import draw_residual_figure

import benchmark.evaluation.finetune as finetune_module
import benchmark.training.pretrain as pretrain_module
from benchmark.config import load_config
from benchmark.errors import UserError
from benchmark.evaluation.finetune import run_finetune
from benchmark.orchestration.grid import run_grid
from benchmark.results import Cell
from benchmark.rundata import prepare_data
from benchmark.training.pretrain import open_pretrained, run_pretraining
from benchmark.training.units import pretraining_units

OVERRIDES = [
    "pretrain.max_epochs=1",
    "pretrain.export=best",  # a best.ckpt beside last.ckpt: both are read on resume
    "splits.seeds=[0]",
    "finetune.max_epochs=1",
    "finetune.protocols=[finetune]",
    "splits.fractions=[1.0]",
    "method.residual.cae.epochs=2",
    "runtime.threads=1",  # the shared 2-core machine: two threads contend with other work
]
INTERRUPTED_CELL = Cell("residual", "finetune", 1.0, 0, 0)
_numbers = itertools.count()


class Payload:
    """Unpickled in full, it creates ``marker`` (``open(marker, "w")``)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A smoke run of residual and simclr; simclr's pretraining and the residual fine-tuning
    cell ``INTERRUPTED_CELL`` stop after training, leaving ``last.ckpt`` and ``best.ckpt``."""
    out = tmp_path_factory.mktemp("run")
    cfg = load_config("smoke", OVERRIDES, methods=["residual", "simclr"])
    save_encoder, score_cell = pretrain_module.save_encoder, finetune_module.score_cell

    def interrupted_export(backbone, path):
        if "simclr" in Path(path).parts:
            raise RuntimeError("interrupted before export")
        save_encoder(backbone, path)

    def interrupted_scoring(cell, *args, **kwargs):
        if cell == INTERRUPTED_CELL:
            raise RuntimeError("interrupted before scoring")
        return score_cell(cell, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pretrain_module, "save_encoder", interrupted_export)
        patch.setattr(finetune_module, "score_cell", interrupted_scoring)
        run_grid(cfg, out, quiet=True)
    data = prepare_data(cfg, out, lambda message: None)
    markers = tmp_path_factory.mktemp("markers")
    run = dict(cfg=cfg, out=out, data=data, markers=markers)
    assert (_simclr(run).directory / "checkpoints" / "last.ckpt").exists()
    assert (_workdir(out) / "last.ckpt").exists()
    yield run
    assert not list(markers.iterdir()), "a planted pickle ran"


def _units(run, method):
    return pretraining_units(run["cfg"], method, run["out"])


def _simclr(run):
    return _units(run, "simclr")[0]


def _workdir(out: Path) -> Path:
    return out / "work" / "residual" / "finetune" / "f1" / "fold0" / "seed0"


def plant(path: Path, markers: Path) -> Path:
    """Replace ``path`` by a pickle whose unpickling would create a marker; return the marker."""
    marker = markers / f"ran-{next(_numbers)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    torch.save({"state_dict": Payload(marker)}, path)
    return marker


def test_the_planted_pickle_runs_code_when_unpickled_in_full(tmp_path):
    marker = plant(tmp_path / "file.pt", tmp_path)
    torch.load(tmp_path / "file.pt", weights_only=False)
    assert marker.exists()


def test_planted_stage_files_run_nothing_and_are_built_again(run):
    unit = _units(run, "residual")[0]
    stages = unit.directory / "stages"
    cae, residuals = (next(stages.glob(f"{name}-*.pt")) for name in ("cae", "residuals"))
    before = torch.load(residuals, weights_only=True)
    other = stages / "cae-0123456789abcdef.pt"  # a CAE of other settings, read for the log
    markers = [plant(path, run["markers"]) for path in (cae, residuals, other)]
    unit.record_path.unlink()  # the unit pretrains again, reusing (here: rebuilding) stages
    messages: list[str] = []
    run_pretraining(run["cfg"], unit, run["data"], messages.append)
    assert not any(marker.exists() for marker in markers)
    for path in (cae, residuals, other):
        said = [m for m in messages if f"cannot use stage file {path}" in m]
        assert len(said) == 1 and "could run code" in said[0], messages
    after = torch.load(residuals, weights_only=True)  # rebuilt: plain data, the same targets
    assert torch.equal(after["targets"], before["targets"])
    assert torch.equal(after["rows"]["__ssl3d_numpy__"], before["rows"]["__ssl3d_numpy__"])
    assert "state_dict" in torch.load(cae, weights_only=True)


def _pretraining(run):
    unit = _simclr(run)
    folder = unit.directory / "checkpoints"
    return folder, lambda: run_pretraining(run["cfg"], unit, run["data"], lambda m: None)


def _finetuning(run):
    folder = _workdir(run["out"])
    encoder = _units(run, "residual")[0].encoder_path
    cell, cfg, data = INTERRUPTED_CELL, run["cfg"], run["data"]
    return folder, lambda: run_finetune(cell, cfg, data, encoder, folder)


@pytest.mark.parametrize("training", [_pretraining, _finetuning], ids=["pretrain", "finetune"])
@pytest.mark.parametrize("kind", ["last", "best", "recorded_outside", "linked_outside"])
def test_a_resume_reads_no_planted_or_outside_checkpoint(run, training, kind):
    folder, resume = training(run)
    last, best = folder / "last.ckpt", folder / "best.ckpt"
    kept = {path: path.read_bytes() for path in (last, best)}
    outside = run["out"] / "elsewhere.ckpt"
    try:
        if kind in ("last", "best"):
            named = folder / f"{kind}.ckpt"
            marker = plant(named, run["markers"])
        elif kind == "recorded_outside":  # a genuine last.ckpt whose state points elsewhere
            marker = plant(outside, run["markers"])
            state = torch.load(last, weights_only=True)
            escape = os.path.join(folder, os.path.relpath(outside, folder))  # folder/../..
            for callback in state["callbacks"].values():
                if "best_model_path" in callback:
                    callback.update(best_model_path=escape, kth_best_model_path=escape)
                    callback["best_k_models"] = {escape: callback["best_model_score"]}
            torch.save(state, last)
            named = escape
        else:  # last.ckpt a link to a file outside the folder
            marker = plant(outside, run["markers"])
            last.unlink()
            last.symlink_to(outside)
            named = last
        with pytest.raises(UserError) as refused:
            resume()
        assert str(named) in str(refused.value)
        assert "Delete" in str(refused.value)
        assert not marker.exists()
        assert os.path.exists(outside) == (kind not in ("last", "best"))  # nothing deleted
    finally:
        outside.unlink(missing_ok=True)
        for path, content in kept.items():
            path.unlink(missing_ok=True)
            path.write_bytes(content)


def test_a_genuine_interrupted_checkpoint_still_resumes(run):
    """The checks refuse only what they must: the untouched pretraining resumes and exports."""
    folder, resume = _pretraining(run)
    resume()
    assert _simclr(run).encoder_path.exists() and not folder.exists()


def test_a_rerun_with_planted_encoder_decoder_and_cohort_cache_runs_nothing(run, tmp_path):
    out, markers = run["out"], run["markers"]
    fold0, fold1 = _units(run, "residual")
    planted = {
        "encoder": plant(fold1.encoder_path, markers),
        "decoder": plant(fold0.directory / "decoder.pt", markers),
        "cache": plant(next((out / "data").glob("**/.ssl3d_cache/*.pt")), markers),
    }
    for cell in (out / "cells" / "residual").rglob("fold1/*.json"):
        cell.unlink()  # the cells of fold 1 run again and load its encoder
    with pytest.raises(UserError, match=str(fold1.encoder_path)):
        run_grid(run["cfg"], out, quiet=True)

    method, context = open_pretrained(out, "residual", 0, 0, log=lambda m: None)
    with pytest.raises(Exception, match="Weights only load failed"):
        draw_residual_figure(method, context, tmp_path / "figure.png")
    assert not any(marker.exists() for marker in planted.values())
