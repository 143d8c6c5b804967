"""Data-parallel pretraining: disjoint shards, gathered negatives, one writer, single-device
evaluation.

The end-to-end test runs ``tests/training/distributed_pretraining.py`` (SimCLR on the smoke phantom,
two CPU processes, gloo) in a subprocess, since Lightning starts the second rank by running
the command again.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from benchmark.datasets.batches import EpochShuffle
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy

from benchmark.config import load_config
from benchmark.nn.backbone import monai_resnet18, stage_widths
from benchmark.registry import get_method
from benchmark.training.pretrain import check_launch, rank_batch_size
from benchmark.training.runtime import Ranks, RuntimeSettingError, make_trainer, process_ranks

HELPER = Path(__file__).with_name("distributed_pretraining.py")


def _runtime(**settings) -> DictConfig:
    defaults = {"device": "cpu", "precision": "32", "progress_bar": False, "devices": 1}
    return OmegaConf.create({**defaults, "num_nodes": 1, **settings})


@pytest.mark.parametrize(("length", "world_size"), [(11, 1), (11, 2), (26, 3)])
def test_ranks_draw_disjoint_equal_shards_of_one_permutation(length, world_size):
    for epoch in (0, 1):
        shards = []
        for rank in range(world_size):
            sampler = EpochShuffle(length, seed=4, rank=rank, world_size=world_size)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        assert {len(shard) for shard in shards} == {length // world_size}
        seen = [index for shard in shards for index in shard]
        assert len(set(seen)) == len(seen)
        whole = EpochShuffle(length, seed=4)
        whole.set_epoch(epoch)
        assert sorted(seen) == sorted(list(whole)[: len(seen)])


def test_the_global_batch_splits_into_equal_shares_of_at_least_two():
    assert rank_batch_size(64, Ranks(world_size=4)) == 16
    for batch_size, world_size in ((10, 4), (6, 4)):
        with pytest.raises(RuntimeSettingError, match="pretrain.batch_size"):
            rank_batch_size(batch_size, Ranks(world_size=world_size))


def test_data_parallel_pretraining_needs_the_local_executor():
    check_launch(load_config("smoke", ["runtime.devices=2"]), Ranks(world_size=2))
    with pytest.raises(RuntimeSettingError, match="local executor"):
        check_launch(load_config("smoke", ["executor.name=ray"]), Ranks(world_size=2))


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({}, Ranks(4, 0, 0)),
        ({"LOCAL_RANK": "1", "NODE_RANK": "1"}, Ranks(4, 3, 1)),  # started by Lightning
        ({"SLURM_PROCID": "2", "SLURM_LOCALID": "0"}, Ranks(4, 2, 0)),  # srun
        ({"RANK": "3", "LOCAL_RANK": "1"}, Ranks(4, 3, 1)),  # torchrun
    ],
)
def test_a_process_knows_its_rank_from_its_launcher(monkeypatch, environment, expected):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert process_ranks(_runtime(devices=2, num_nodes=2)) == expected


def test_pretraining_trainers_use_ddp_and_evaluation_trainers_one_device(tmp_path):
    runtime = _runtime(devices=2)
    pretraining = make_trainer(runtime, tmp_path, 1, [], data_parallel=True)
    assert isinstance(pretraining.strategy, DDPStrategy)
    assert pretraining.strategy.process_group_backend == "gloo"
    assert isinstance(make_trainer(runtime, tmp_path, 1, []).strategy, SingleDeviceStrategy)


def test_only_spark_and_the_shuffled_batchnorm_methods_keep_per_rank_batchnorm():
    """SparK's sparse BatchNorm cannot become torch's SyncBatchNorm (``methods/spark/method.py``);
    MoCo and DrasCLR normalise per group of each rank's batch on purpose (shuffled BatchNorm,
    MoCo sec. 3.3), as MoCo's code does."""
    names = ("simclr", "byol", "simsiam", "vicreg", "barlow_twins", "residual")
    assert all(get_method(name).sync_batchnorm for name in names)
    assert not any(get_method(name).sync_batchnorm for name in ("spark", "moco", "drasclr"))


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    finished = subprocess.run(
        [sys.executable, str(HELPER), str(out)], capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr[-4000:]
    return out


def _probe(out: Path, rank: int) -> dict:
    return json.loads((out / f"probe-rank{rank}.json").read_text())


def test_two_processes_pretrain_one_encoder_written_by_rank_zero(distributed_run):
    unit = distributed_run / "pretrain" / "simclr" / "seed0"
    assert [_probe(distributed_run, rank)["encoders_saved"] for rank in (0, 1)] == [1, 0]
    state = torch.load(unit / "encoder.pt", weights_only=True)
    monai_resnet18(stage_widths(0.125)).load_state_dict(state, strict=True)
    record = json.loads((unit / "pretrain.json").read_text())
    assert record["status"] == "done" and not (unit / "checkpoints").exists()
    with (unit / "losses.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == list(range(record["epochs"]))
    losses = [float(row["val_loss"]) for row in rows]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.5 * losses[0], losses


def test_ranks_see_disjoint_data_and_gather_each_others_embeddings(distributed_run):
    batches = [_probe(distributed_run, rank)["batches"] for rank in (0, 1)]
    assert batches[0].keys() == batches[1].keys()
    for epoch in batches[0]:
        first, second = batches[0][epoch], batches[1][epoch]
        assert [len(b) for b in first] == [len(b) for b in second]
        seen = [i for b in first for i in b], [i for b in second for i in b]
        assert not set(seen[0]) & set(seen[1])
    gathered = _probe(distributed_run, 0)["gathered_rows"]
    batch_sizes = {len(b) for epoch in batches[0].values() for b in epoch}
    assert all(len(parts) == 2 and parts[0] == parts[1] for parts in gathered)
    assert batch_sizes <= {parts[0] for parts in gathered}  # NT-Xent saw 2 x each batch


def test_a_data_parallel_run_pretrains_on_every_rank_and_evaluates_on_rank_zero(tmp_path):
    """``ssl3d run`` with two ranks: both pretrain, rank 0 alone evaluates and reports."""
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "benchmark", "run", "--profile", "smoke",
        "--methods", "scratch,simclr", "--out", str(out), "runtime.device=cpu",
        "runtime.devices=2", "runtime.threads=1", "finetune.protocols=[linear]",
        "pretrain.max_epochs=2", "splits.seeds=[0]",
    ]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-4000:]
    cells = [json.loads(p.read_text()) for p in (out / "cells").rglob("*.json")]
    assert len(cells) == 2 * 2 * 2 and all(c["status"] == "done" for c in cells)
    log = (out / "run.log").read_text()
    assert log.count("pretrained simclr") == 1
    for cell in cells:
        line = f"{cell['method']} linear fraction {cell['fraction']:g} fold {cell['fold']} seed 0:"
        assert log.count(line) == 1, line
    assert (out / "report.md").exists()
