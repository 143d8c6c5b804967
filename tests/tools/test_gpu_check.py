"""``make gpu-check``: without a GPU it runs nothing and exits 0; its arguments are checked; on a
GPU (faked here, with stand-in checks) a failing check is reported and the others still run;
the report is written as Markdown and JSON."""

import json

import pytest
import torch

from benchmark.tools import gpu_check
from benchmark.tools.gpu_check import CheckResult, gpu_preset, main, parse_arguments, run_checks


def test_without_a_gpu_it_says_so_runs_nothing_and_exits_0(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def must_not_run(*args):
        raise AssertionError("a check ran without a GPU")

    monkeypatch.setattr(gpu_check, "sync_checks", must_not_run)
    assert main(["--out", str(tmp_path / "report")]) == 0
    assert "needs a CUDA GPU" in capsys.readouterr().out
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "1"], "--steps must be at least 2"),
        (["--perf-steps", "0"], "--perf-steps must be at least 1"),
        (["--perf-methods", " , "], "--perf-methods names no method"),
    ],
)
def test_bad_arguments_are_refused_with_the_argument_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_arguments(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_arguments_default_to_the_representative_subset():
    args = parse_arguments(["--perf-methods", "simclr, byol"])
    assert args.perf_methods == ["simclr", "byol"] and args.steps >= 2
    assert parse_arguments([]).perf_methods == ["residual", "simclr", "spark", "byol"]


def test_a_failing_check_is_reported_and_the_rest_still_run_until_the_budget():
    def fails():
        raise RuntimeError("called a synchronizing CUDA operation")

    checks = [("sync", "a", lambda: None), ("sync", "b", fails), ("perf", "c", lambda: {"x": 1})]
    results = run_checks(checks, budget=60)
    assert [r.status for r in results] == ["passed", "failed", "passed"]
    assert "RuntimeError: called a synchronizing CUDA operation" in results[1].detail
    assert results[2].data == {"x": 1}
    assert {r.status for r in run_checks(checks, budget=-1)} == {"skipped"}


def test_the_cuda_path_runs_every_check_and_writes_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "NVIDIA H200")
    seen = []

    def syncs(steps, cache):
        def fails():
            raise RuntimeError("called a synchronizing CUDA operation")

        return [("simclr", lambda: seen.append(("sync", steps))), ("finetune", fails)]

    monkeypatch.setattr(gpu_check, "sync_checks", syncs)
    monkeypatch.setattr(gpu_check, "perf_check", lambda m, s, c: {"report": f"perf {m} {s}"})
    monkeypatch.setattr(gpu_check, "compile_check", lambda m, s, c: {"method": m})
    monkeypatch.setattr(gpu_check, "paper_shaped_check", lambda: {"summary": "passed"})
    monkeypatch.setattr(gpu_check, "estimate_check", lambda m, gpu, c: {"report": f"on {gpu}"})
    out = tmp_path / "report"
    assert main(["--out", str(out), "--steps", "3", "--perf-methods", "simclr,spark"]) == 1
    assert seen == [("sync", 3)]
    record = json.loads((out / "gpu-check.json").read_text())
    assert record["machine"]["device"] == "NVIDIA H200"
    rows = [(c["check"], c["subject"], c["status"]) for c in record["checks"]]
    assert rows == [
        ("sync", "simclr", "passed"),
        ("sync", "finetune", "failed"),
        ("perf", "simclr,spark", "passed"),
        ("paper-shaped", "every method, bf16", "passed"),
        ("compile", "simclr", "passed"),
        ("estimate", "H200", "passed"),
    ]
    markdown = (out / "gpu-check.md").read_text()
    assert "| sync | finetune | failed |" in markdown
    assert "called a synchronizing CUDA operation" in markdown
    assert "perf ['simclr', 'spark'] 8" in markdown and "on H200" in markdown


def test_the_report_of_a_fake_result_set(tmp_path):
    results = [
        CheckResult("sync", "byol", "passed", 1.5),
        CheckResult("sync", "moco", "failed", 2.0, "RuntimeError: synchronizing"),
        CheckResult("perf", "simclr", "passed", 60.0, data={"measurements": [{"mfu": 0.31}]}),
        CheckResult("estimate", "H100", "skipped", 0.0, "over the time budget"),
    ]
    paths = gpu_check.write_report(results, {"device": "fake"}, tmp_path)
    assert [p.name for p in paths] == ["gpu-check.md", "gpu-check.json"]
    markdown = paths[0].read_text()
    assert "- device: fake" in markdown
    assert "| sync | byol | passed | 1.5 |" in markdown
    assert "## sync: moco (failed)" in markdown and "RuntimeError: synchronizing" in markdown
    assert '"mfu": 0.31' in markdown and "## estimate: H100 (skipped)" in markdown
    assert "## sync: byol" not in markdown  # a plain pass is its table row only
    checks = json.loads(paths[1].read_text())["checks"]
    assert [CheckResult(**c) for c in checks] == results


def test_the_estimate_uses_the_preset_of_the_gpu_it_runs_on():
    assert gpu_preset("NVIDIA H200") == "H200"
    assert gpu_preset("NVIDIA H100 PCIe") == "H100 PCIe"
    assert gpu_preset("NVIDIA A100-SXM4-80GB") == "A100"


def test_the_sync_checks_run_real_steps_with_the_mode_on_from_the_second_step(
    tmp_path, monkeypatch
):
    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    checks = dict(gpu_check.sync_checks(3, tmp_path, device="cpu"))
    assert {"simclr", "moco", "byol", "finetune"} <= set(checks)
    for name in ("moco", "finetune"):
        modes.clear()
        checks[name]()
        assert modes == [0, "error", 0, "error", 0]  # steps 2 and 3 under "error"
