"""`ssl3d perf` measures and reports every field it promises (numbers are not asserted: speed
targets belong to the benchmark command, never to tests)."""

import json

import numpy as np
import pytest
from scipy import stats

from benchmark.cli import main
from benchmark.config import load_config, pretraining_settings
from benchmark.tools import perf
from benchmark.tools.perf import (
    Throughput,
    data_overhead,
    data_overhead_interval,
    estimate_paper_grid,
    format_compile_lines,
    with_compiled,
)

FIELDS = {
    "method",
    "device",
    "size",
    "batch",
    "volumes_per_s",
    "volumes_per_s_compute_only",
    "data_overhead",
    "data_overhead_ci",
    "peak_mem_mb",
    "tflops",
    "mfu",
}


def test_perf_writes_a_table_and_json(tmp_path, capsys):
    output = tmp_path / "perf.json"
    main(
        [
            "perf",
            "--profile",
            "smoke",
            "--methods",
            "scratch,simclr,residual",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--rounds",
            "2",
            "--json",
            str(output),
            "--cache",
            str(tmp_path / "cache"),
            "--estimate",
        ]
    )
    printed = capsys.readouterr().out
    assert "| simclr | cpu | 32 |" in printed and "fine-tuning:" in printed and "total:" in printed
    # scratch has no pretraining to measure; residual runs its stages (CAE, targets) first.
    result, residual = json.loads(output.read_text())
    assert FIELDS <= set(result) and result["method"] == "simclr"
    assert residual["method"] == "residual" and residual["volumes_per_s"] > 0
    assert result["volumes_per_s"] > 0 and result["volumes_per_s_compute_only"] > 0
    assert 0 <= result["data_overhead"] < 1 and result["speedup"] > 0
    low, high = result["data_overhead_ci"]
    assert 0 <= low <= high < 1
    assert result["tflops"] is None and result["mfu"] is None  # FLOP/s are reported on CUDA


def test_the_paper_grid_estimate_counts_every_unit_and_cell():
    """1,000 volumes/s and 1 s per full fine-tuning epoch, counted by hand from the paper
    profile: methods pretrain once per seed, fold-scoped ones once per seed and fold, and every method's
    (scratch's too) fine-tuning cells train over their label fraction's share of the set."""
    paper = load_config("paper")
    measured = [
        Throughput(
            m, "cpu", 64, 64, 1000.0, 1000.0, 0.0, (0.0, 0.0), 0.0, None, None, None, None, 0.1
        )
        for m in ("simclr", "residual")
    ]
    text = estimate_paper_grid(measured, finetune_epoch_seconds=1.0)
    pool = 2 * paper.phantom.unlabelled * (1 - paper.pretrain.val_fraction)
    runs = len(paper.splits.seeds) * paper.splits.folds
    seeds = len(paper.splits.seeds)
    simclr = seeds * pretraining_settings(paper, "simclr").max_epochs * pool / 1000 / 3600
    residual = runs * pretraining_settings(paper, "residual").max_epochs * pool / 1000 / 3600
    # intensity_features is evaluated by the probes only: no fine-tuning cells.
    finetuned = [m for m in paper.methods if m != "intensity_features"]
    epochs = len(finetuned) * runs * sum(paper.splits.fractions) * paper.finetune.max_epochs
    assert f"simclr: pretraining {simclr:.1f} h ({seeds} units, one per seed," in text
    assert f"residual: pretraining {residual:.1f} h ({runs} units" in text
    cells = len(finetuned) * len(paper.splits.fractions) * runs
    assert f"{cells} fine-tuning cells of {len(finetuned)} methods: {epochs / 3600:.1f} h" in text
    assert f"total: {simclr + residual + epochs / 3600:.1f} h" in text


def test_data_overhead_and_its_interval_match_an_independent_bootstrap():
    """Step times of a real path 25 % slower than its compute-only path: the overhead is
    1 - 0.100 / 0.125 = 0.2, and its 95 % interval is scipy's percentile bootstrap of the
    same statistic (each path's steps resampled on their own)."""
    generator = np.random.default_rng(1)
    compute = generator.normal(0.100, 0.01, 40)
    real = generator.normal(0.125, 0.0125, 40)
    assert data_overhead(real, compute) == pytest.approx(1 - np.median(compute) / np.median(real))
    low, high = data_overhead_interval(real, compute)
    reference = stats.bootstrap(
        (real, compute),
        lambda r, c: 1 - np.median(c) / np.median(r),
        vectorized=False,
        method="percentile",
        n_resamples=4000,
        random_state=0,
    ).confidence_interval
    assert low == pytest.approx(reference.low, abs=0.015)
    assert high == pytest.approx(reference.high, abs=0.015)
    assert low < 0.2 < high and high - low < 0.15
    # A real path no slower than the compute-only one has no overhead, not a negative one.
    assert data_overhead(compute, real) == 0.0


def test_compare_compile_reaches_run_perf_and_reports_step_times_ratio_and_first_steps(
    monkeypatch, capsys
):
    """``--compare-compile`` is passed on (off by default); the report line of a method shows
    both step times, their ratio and each first step, the compile cost kept apart."""
    calls = []
    monkeypatch.setattr(perf, "run_perf", lambda *a, **k: calls.append(k) or "report")
    main(["perf", "--methods", "simclr", "--compare-compile"])
    main(["perf", "--methods", "simclr"])
    assert [call["compare_compile"] for call in calls] == [True, False]
    assert capsys.readouterr().out == "report\n" * 2

    eager = Throughput(
        "simclr", "cpu", 32, 8, 40.0, 50.0, 0.2, (0.1, 0.3), 900.0, None, None, None, None, 0.2,
        first_step_s=1.5,
    )  # fmt: skip
    compiled = Throughput(
        "simclr", "cpu", 32, 8, 50.0, 60.0, 0.2, (0.1, 0.3), 950.0, None, None, None, None, 0.16,
        first_step_s=41.2,
    )  # fmt: skip
    result = with_compiled(eager, compiled)
    assert result.compile_speedup == 1.25 and result.compiled_first_step_s == 41.2
    line = format_compile_lines([result]).splitlines()[1]
    assert line == (
        "  simclr: eager 200 ms per step, compiled 160 ms: 1.25x; first step 1.5 s eager, "
        "41.2 s compiled"
    )
