"""SimCLR pretrained data-parallel on two CPU processes (gloo): the run tests/training/test_distributed.py
checks.

Run as ``python tests/training/distributed_pretraining.py OUT``. The command is rank 0; Lightning starts
rank 1 by running the same command again, as it does for ``ssl3d run``. Besides the unit's own
files under ``OUT/pretrain/simclr/seed0``, every rank writes ``OUT/probe-rank<r>.json``: the pool
positions of each training batch it saw (by epoch), the row counts of the embeddings NT-Xent
gathered from all ranks, and how many encoders it saved.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightly.utils.dist as lightly_dist
from benchmark.methods.simclr import SimCLR

import benchmark.training.pretrain as pretrain
from benchmark.config import load_config
from benchmark.rundata import prepare_data
from benchmark.training.runtime import process_ranks

EPOCHS = 8
OVERRIDES = (
    "runtime.device=cpu",
    "runtime.devices=2",
    "runtime.threads=1",
    f"pretrain.max_epochs={EPOCHS}",
    "method.simclr.views.preset=light",
    "splits.seeds=[0]",
)


def record_what_each_rank_does(probe: dict) -> None:
    """Wrap the three calls whose use the test checks, recording into ``probe``."""
    gather, loss, save = lightly_dist.gather, SimCLR.pretraining_loss, pretrain.save_encoder

    def recorded_gather(tensor):
        gathered = gather(tensor)
        probe["gathered_rows"].append([len(part) for part in gathered])
        return gathered

    def recorded_loss(module, batch):
        losses = loss(module, batch)
        if module.training:
            epoch = probe["batches"].setdefault(str(module.current_epoch), [])
            epoch.append(batch["index"].tolist())
            probe["losses"].append(float(losses["loss"].detach()))
        return losses

    def recorded_save(*args, **kwargs):
        probe["encoders_saved"] += 1
        return save(*args, **kwargs)

    lightly_dist.gather = recorded_gather
    SimCLR.pretraining_loss = recorded_loss
    pretrain.save_encoder = recorded_save


def main(out: Path) -> None:
    cfg = load_config("smoke", list(OVERRIDES), methods=["simclr"])
    rank = process_ranks(cfg.runtime).global_rank
    probe = {"rank": rank, "batches": {}, "gathered_rows": [], "losses": [], "encoders_saved": 0}
    record_what_each_rank_does(probe)
    data = prepare_data(cfg, out, log=lambda message: None)
    (unit,) = pretrain.pretraining_units(cfg, "simclr", out)
    pretrain.run_pretraining(cfg, unit, data, log=lambda message: None)
    (out / f"probe-rank{rank}.json").write_text(json.dumps(probe))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
