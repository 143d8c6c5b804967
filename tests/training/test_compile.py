"""``runtime.compile=true`` on the CPU: every method's training step and the fine-tuning step
under inductor give eager's numbers within the tolerances of ``benchmark/tools/compile_check.py``,
a compiled smoke run exports the encoder it would export eagerly (same names), and the comparison
catches a compiled module that is 1 % wrong.

Compilation is real (inductor, C++ on the CPU) and costs tens of seconds per graph cold; the
FX graph cache shares graphs between methods whose ResNet18 sees the same shapes (docs/perf.md,
"torch.compile on the CPU", has the times).
"""

import dataclasses
import json

import pytest
import torch
from benchmark.datasets.batches import TensorBatches

from benchmark.cli import main
from benchmark.config import load_config
from benchmark.nn.backbone import ResNet18, load_encoder, stage_widths
from benchmark.registry import get_method
from benchmark.results import read_json
from benchmark.tools.compile_check import (
    compiled_against_eager,
    with_narrow_heads,
    without_ties,
)
from benchmark.tools.perf import perf_data
from benchmark.tools.sync_audit import finetuning_classifier, pretraining_module, with_batch_size
from benchmark.training.pretrain import pool_batches

pytestmark = pytest.mark.heavy

PRETRAINED = [name for name in load_config("smoke").methods if get_method(name).needs_pretraining]
BATCH = 4  # the sync audit's: the smallest every method accepts at the smoke size


@pytest.fixture(scope="module")
def perf(tmp_path_factory):
    return perf_data(load_config("smoke"), tmp_path_factory.mktemp("compile"), 32)


def pretraining_step(perf, method: str):
    """``compiled_against_eager``'s arguments for one pretraining step of ``method``."""
    narrow = dataclasses.replace(perf, cfg=with_narrow_heads(perf.cfg, method))
    cfg = with_batch_size(narrow.cfg, method, BATCH)
    dataset = pool_batches(perf.data, perf.rows[:BATCH])
    return method, lambda: pretraining_module(narrow, method, BATCH)[1], cfg, dataset, BATCH


@pytest.mark.parametrize("method", PRETRAINED)
def test_a_compiled_pretraining_step_gives_the_eager_numbers(perf, method):
    difference = compiled_against_eager(*pretraining_step(perf, method))
    print(difference)
    assert difference.within_tolerance, str(difference)


def test_a_compiled_finetuning_step_gives_the_eager_numbers(perf):
    rows = perf.data.training_rows(0, 0, 1.0)[:BATCH]
    labels = perf.data.labels(rows)
    dataset = TensorBatches(image=without_ties(perf.data.images(rows)), label=labels)
    cfg = with_narrow_heads(perf.cfg)
    build = lambda: finetuning_classifier(cfg, labels)  # noqa: E731
    difference = compiled_against_eager("finetune", build, cfg, dataset, BATCH)
    print(difference)
    assert difference.within_tolerance, str(difference)


def test_a_compiled_module_one_percent_off_is_flagged(perf, monkeypatch):
    """A compile that leaves the stem's weights 1 % off (noise of 1 % of their spread, a stale
    or mis-read weight) is outside the tolerance, the module's reordering noise allowed for.
    (A scaled BatchNorm weight would not do: the next BatchNorm normalises a scale away.)"""

    def compile_one_weight_wrong(self, *args, **kwargs):
        torch.nn.Module.compile(self, *args, **kwargs)
        weight = self.conv1.weight
        noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            weight.add_(0.01 * weight.std() * noise.to(memory_format=torch.channels_last_3d))

    monkeypatch.setattr(ResNet18, "compile", compile_one_weight_wrong)
    difference = compiled_against_eager(*pretraining_step(perf, "simclr"))
    print(difference)
    assert not difference.within_tolerance, str(difference)


def test_a_compiled_smoke_run_exports_an_encoder_with_the_plain_names(tmp_path):
    """Pretraining, the linear probe and fine-tuning with Grad-CAM (hooks on a compiled
    ResNet18) all run compiled; the encoder keeps eager training's names."""
    out = tmp_path / "run"
    main(["run", "--profile", "smoke", "--methods", "simclr", "--out", str(out),
          "splits.seeds=[0]", "splits.fractions=[1.0]", "finetune.protocols=[linear,finetune]",
          "pretrain.max_epochs=1", "finetune.max_epochs=1", "runtime.compile=true"])  # fmt: skip
    path = out / "pretrain" / "simclr" / "seed0" / "encoder.pt"
    widths = stage_widths(float(load_config("smoke").backbone.width_multiplier))
    encoder = load_encoder(path, widths)  # strict: every name as eager training writes it
    fresh = ResNet18(widths).state_dict()
    assert list(torch.load(path, weights_only=True)) == list(fresh)
    assert not any("_orig_mod" in name for name in encoder.state_dict())
    cell = read_json(out / "cells" / "simclr" / "linear" / "f1" / "fold0" / "seed0.json")
    assert cell["status"] == "done"
    cell = read_json(out / "cells" / "simclr" / "finetune" / "f1" / "fold0" / "seed0.json")
    assert cell["status"] == "done" and cell["localisation"]["n"] > 0


def test_perf_compares_compiled_with_eager(tmp_path, capsys):
    """``ssl3d perf --compare-compile`` at the smoke size, one method, a step per fit (batch 4:
    the graphs of the step test above, from inductor's cache)."""
    output = tmp_path / "perf.json"
    main(["perf", "--profile", "smoke", "--methods", "simclr", "--steps", "1", "--warmup", "0",
          "--rounds", "1", "--compare-compile", "--json", str(output), "--cache",
          str(tmp_path / "cache"), "pretrain.batch_size=4"])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    title = next(i for i, line in enumerate(lines) if line.startswith("torch.compile"))
    assert lines[title + 1].startswith("  simclr: eager ") and "s compiled" in lines[title + 1]
    (result,) = json.loads(output.read_text())
    assert result["compiled_volumes_per_s"] > 0 and result["compile_speedup"] > 0
    assert result["compiled_first_step_s"] > 0 and result["first_step_s"] > 0
