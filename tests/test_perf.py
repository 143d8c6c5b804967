"""`ssl3d perf` measures and reports every field it promises (numbers are not asserted: speed
targets belong to the benchmark command, never to tests)."""

import json

from benchmark.cli import main

FIELDS = {
    "method",
    "device",
    "size",
    "batch",
    "volumes_per_s",
    "volumes_per_s_compute_only",
    "data_overhead",
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
            "--repeats",
            "1",
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
    assert result["tflops"] is None and result["mfu"] is None  # FLOP/s are reported on CUDA
