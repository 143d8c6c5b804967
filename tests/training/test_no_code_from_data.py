"""Nothing in a run folder runs code: every torch file ssl3d loads from one is read as data.

A run folder may come from someone else. Each file the harness loads from it (the method's
cached stages, the pretraining and fine-tuning checkpoints a resume reads, the exported encoder,
the residual decoder, the cohort cache) is replaced here by a pickle that, unpickled in full,
would create a marker file; the code path that reads it runs, and the marker must never appear.
A planted checkpoint or encoder is treated as a torn file: named in the log, moved to its unit's
or cell's ``set-aside/`` folder and its work done again. A checkpoint that points outside its
folder is hostile instead, and refused. The run folder is a real smoke run, built once, with one
pretraining unit (simclr) and one fine-tuning cell left interrupted so that their checkpoints
stay for a resume; tests that finish them put them back as they were.
"""

from __future__ import annotations

import builtins
import itertools
import os
import shutil
from pathlib import Path

import pytest
import torch
from benchmark.methods.residual.figure import draw_residual_figure

import benchmark.evaluation.finetune as finetune_module
import benchmark.training.pretrain as pretrain_module
from benchmark.config import load_config
from benchmark.errors import UserError
from benchmark.orchestration.grid import run_grid
from benchmark.orchestration.plan import plan_run
from benchmark.orchestration.tasks import CellTask, UnitOutcome
from benchmark.results import Cell, read_json
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
    """The interrupted pretraining: its checkpoint folder, the folder of its ``set-aside/``,
    and a resume that logs to ``log`` and returns ``pretrain.json``."""
    unit = _simclr(run)

    def resume(log):
        run_pretraining(run["cfg"], unit, run["data"], log)
        return read_json(unit.record_path)

    return unit.directory / "checkpoints", unit.directory, resume


def _finetuning(run):
    """The interrupted fine-tuning cell, run as the grid runs it (its summary is its log line);
    the resume returns its cell file."""
    cfg, data, out = run["cfg"], run["data"], run["out"]
    unit = _units(run, "residual")[0]
    fingerprint = plan_run(cfg, data, out).cell_fingerprints[INTERRUPTED_CELL]
    task = CellTask(cfg, out, INTERRUPTED_CELL, fingerprint, unit)

    def resume(log):
        log(task(data, UnitOutcome(unit.encoder_path)))
        return read_json(task.path)

    return _workdir(out), _workdir(out), resume


@pytest.fixture
def untouched(run, tmp_path):
    """After the test, the interrupted pretraining and fine-tuning cell as they were."""
    out = run["out"]
    places = [_simclr(run).directory, _workdir(out), INTERRUPTED_CELL.path(out)]
    copies = [tmp_path / "kept" / str(number) for number in range(len(places))]
    for place, copy in zip(places, copies):
        shutil.copytree(place, copy, symlinks=True) if place.is_dir() else _copy(place, copy)
    yield
    for place, copy in zip(places, copies):
        shutil.rmtree(place) if place.is_dir() else place.unlink()
        shutil.copytree(copy, place, symlinks=True) if copy.is_dir() else _copy(copy, place)


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize("training", [_pretraining, _finetuning], ids=["pretrain", "finetune"])
@pytest.mark.parametrize("kind", ["last", "best", "hpc"])
def test_a_planted_checkpoint_is_named_set_aside_and_the_training_done_again(run, training, kind):
    folder, owner, resume = training(run)
    name = {"last": "last.ckpt", "best": "best.ckpt", "hpc": "hpc_ckpt_1.ckpt"}[kind]
    marker = plant(folder / name, run["markers"])
    planted = (folder / name).read_bytes()
    messages: list[str] = []
    record = resume(messages.append)
    assert not marker.exists()

    said = [m for m in messages if f"cannot use {folder / name}: " in m]
    assert len(said) == 1 and "could run code" in said[0], messages
    assert record["status"] == "done"
    entries = {entry["file"]: entry for entry in record["set_aside"]}
    relative = (folder / name).relative_to(owner).as_posix()
    # A best.ckpt that cannot be used makes the last.ckpt that records it useless too.
    expected = {relative, (folder / "last.ckpt").relative_to(owner).as_posix()}
    assert set(entries) == (expected if kind == "best" else {relative})
    assert (owner / entries[relative]["moved_to"]).read_bytes() == planted
    assert entries[relative]["moved_to"] == f"set-aside/{relative}"
    assert not (folder / name).exists()
    if training is _pretraining:  # resumed from last.ckpt, or trained from the first epoch
        resumed = any(f"resuming from {folder / 'last.ckpt'}" in m for m in messages)
        restarted = any("pretraining from the first epoch" in m for m in messages)
        assert (resumed, restarted) == ((True, False) if kind == "hpc" else (False, True))


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize("training", [_pretraining, _finetuning], ids=["pretrain", "finetune"])
@pytest.mark.parametrize("kind", ["recorded_outside", "linked_outside"])
def test_a_checkpoint_pointing_outside_its_folder_is_refused(run, training, kind):
    folder, _, resume = training(run)
    last = folder / "last.ckpt"
    outside = run["out"] / "elsewhere.ckpt"
    marker = plant(outside, run["markers"])
    try:
        if kind == "recorded_outside":  # a genuine last.ckpt whose state points elsewhere
            state = torch.load(last, weights_only=True)
            escape = os.path.join(folder, os.path.relpath(outside, folder))  # folder/../..
            for callback in state["callbacks"].values():
                if "best_model_path" in callback:
                    callback.update(best_model_path=escape, kth_best_model_path=escape)
                    callback["best_k_models"] = {escape: callback["best_model_score"]}
            torch.save(state, last)
            named = escape
        else:  # last.ckpt a link to a file outside the folder
            last.unlink()
            last.symlink_to(outside)
            named = last
        with pytest.raises(UserError) as refused:
            resume(lambda message: None)
        assert str(named) in str(refused.value)
        assert "Delete" in str(refused.value)
        assert not marker.exists()
        assert outside.exists()  # nothing deleted, nothing moved
        assert last.is_symlink() == (kind == "linked_outside")
    finally:
        outside.unlink(missing_ok=True)


def test_a_genuine_interrupted_checkpoint_still_resumes(run):
    """The checks set aside only what they must: the untouched pretraining resumes, exports."""
    folder, owner, resume = _pretraining(run)
    messages: list[str] = []
    record = resume(messages.append)
    assert _simclr(run).encoder_path.exists() and not folder.exists()
    assert record["set_aside"] == [] and not (owner / "set-aside").exists()
    assert any(f"resuming from {folder / 'last.ckpt'}" in m for m in messages), messages


def test_a_rerun_with_planted_encoder_decoder_and_cohort_cache_runs_nothing(run, tmp_path):
    out, markers = run["out"], run["markers"]
    fold0, fold1 = _units(run, "residual")
    planted = {
        "encoder": plant(fold1.encoder_path, markers),
        "decoder": plant(fold0.directory / "decoder.pt", markers),
        "cache": plant(next((out / "data").glob("**/.ssl3d_cache/*.pt")), markers),
    }
    run_grid(run["cfg"], out, quiet=True)
    # The planted encoder of a finished unit is named, set aside, and the unit pretrained again.
    said = [
        line
        for line in (out / "run.log").read_text().splitlines()
        if f"cannot use {fold1.encoder_path}: " in line
    ]
    assert len(said) == 1 and "could run code" in said[0] and "pretraining again" in said[0]
    assert (fold1.directory / "set-aside" / "encoder.pt").exists()
    assert [entry["file"] for entry in read_json(fold1.record_path)["set_aside"]] == ["encoder.pt"]
    assert set(torch.load(fold1.encoder_path, weights_only=True)) == set(
        torch.load(fold0.encoder_path, weights_only=True)
    )

    method, context = open_pretrained(out, "residual", 0, 0, log=lambda m: None)
    with pytest.raises(Exception, match="Weights only load failed"):
        draw_residual_figure(method, context, tmp_path / "figure.png")
    assert not any(marker.exists() for marker in planted.values())
