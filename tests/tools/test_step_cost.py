"""FLOPs and memory of a step on the CPU: the counter agrees with a hand count, the memory
tracker with known allocations, and ``ssl3d perf --audit`` reports every promised field."""

import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmark.cli import main
from benchmark.errors import UserError
from benchmark.nn.backbone import PAPER_WIDTHS, ResNet18
from benchmark.tools.audit import gpu_memory, peak_tflops
from benchmark.tools.step_cost import LiveTensorBytes, extend, largest_batch


def hand_counted_resnet18_flops(size: int, widths=PAPER_WIDTHS, classes: int = 2) -> int:
    """2 x multiply-accumulates of every convolution and the linear layer, from the shapes:
    stem 7^3 stride 2 (1 -> w0, S/2), max pool (S/4), then per stage two basic blocks of two
    3^3 convolutions; stages 2-4 halve the side in their first convolution and add a 1^3
    stride-2 shortcut convolution."""
    side = size // 2
    flops = 2 * side**3 * widths[0] * 1 * 7**3
    side //= 2
    channels = widths[0]
    for stage, width in enumerate(widths):
        if stage > 0:
            side //= 2
            flops += 2 * side**3 * width * channels  # the shortcut's 1^3 convolution
        flops += 2 * side**3 * width * channels * 27  # first convolution of the stage
        flops += 3 * 2 * side**3 * width * width * 27  # the three others
        channels = width
    return flops + 2 * widths[-1] * classes


def test_resnet18_forward_flops_at_64_agree_with_a_hand_count():
    model = nn.Sequential(ResNet18(PAPER_WIDTHS), nn.Linear(PAPER_WIDTHS[-1], 2)).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 1, 64, 64, 64))
    counted, by_hand = counter.get_total_flops(), hand_counted_resnet18_flops(64)
    assert abs(counted - by_hand) / by_hand < 0.05, (counted, by_hand)


def test_live_bytes_count_what_is_held_not_what_was_freed():
    held = torch.zeros(1000)  # 4,000 bytes that exist before
    with LiveTensorBytes([held]) as memory:
        temporary = torch.ones(2000)  # 8,000 bytes
        kept = temporary * 2  # 8,000 more while both live
        del temporary
        after = torch.ones(500)  # 2,000 bytes once the temporary is gone
    assert memory.peak == 4000 + 16000 and memory.current == 4000 + 8000 + 2000
    assert kept.numel() == 2000 and after.numel() == 500


def test_flops_and_memory_extend_from_two_batches():
    # a b + q b^2 through two batches reproduces the third; the memory line gives the batch
    flops = {b: 5 * b + 0.5 * b * b for b in (2, 4, 128)}
    assert extend(2, 4, flops[2], flops[4], 128) == pytest.approx(flops[128])
    assert largest_batch(fixed=10e9, per_volume=1e9, memory_gb=80) == 70
    assert gpu_memory("80,H200") == {"80 GB": 80.0, "H200": 141.0}
    assert peak_tflops("H100") == 989.0 and peak_tflops("500") == 500.0
    with pytest.raises(UserError, match="--gpu-memory"):
        gpu_memory("eighty")
    with pytest.raises(UserError, match="--gpu"):
        peak_tflops("B300X")


def test_perf_audit_reports_flops_memory_batches_audit_and_a_lower_bound(tmp_path, capsys):
    output = tmp_path / "audit.json"
    arguments = ["perf", "--audit", "--profile", "smoke", "--methods", "spark"]
    arguments += ["--json", str(output), "--cache", str(tmp_path), "--estimate", "--gpu", "H100"]
    main(arguments)
    printed = capsys.readouterr().out
    assert "| spark | 32 | 8 |" in printed and "A lower bound, not a measurement" in printed
    spark, finetune = json.loads(output.read_text())
    assert spark["gflops_per_step"] > 0 and spark["peak_memory_gb"] > spark["fixed_memory_gb"] > 0
    assert set(spark["largest_batch"]) == {"80 GB", "141 GB"}
    assert spark["largest_batch"]["141 GB"] > spark["largest_batch"]["80 GB"] > 8
    assert spark["findings_in_steps"] == [] and "0 in a step" in spark["audit"]
    assert finetune["method"] == "finetune" and "0 in a step" in finetune["audit"]
