"""``make paper-shaped``: the ``paper`` profile's code path at its real shapes on the CPU.

The counts it cuts must leave every shape of the paper profile alone (fast test). The run itself
(``heavy``: a separate CI step, about 6 minutes on 2 cores) runs ``ssl3d run --profile paper``
with those counts, and its checks must pass; a folder with a cell or an encoder removed must
fail them.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from benchmark.config import load_config
from benchmark.tools import paper_shaped
from benchmark.tools.paper_shaped import (
    PAPER_SHAPED_COUNTS,
    check_run_folder,
    run_paper_shaped,
)


def _flat(cfg) -> dict:
    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{prefix}{key}.")
        else:
            yield prefix[:-1], node

    return dict(walk(OmegaConf.to_container(cfg, resolve=True), ""))


def test_the_counts_leave_every_paper_shape_alone():
    paper, shaped = _flat(load_config("paper")), _flat(load_config("paper", PAPER_SHAPED_COUNTS))
    counts = {setting.split("=")[0] for setting in PAPER_SHAPED_COUNTS}
    assert {key for key in paper if paper[key] != shaped[key]} == counts
    shapes = ["data.size", "data.crop", "phantom.size", "backbone.width_multiplier"]
    shapes += [key for key in paper if key.startswith(("finetune.", "runtime.", "probes."))]
    shapes += [key for key in paper if ".views." in key]
    shapes = [key for key in shapes if key not in counts]
    assert {key: shaped[key] for key in shapes} == {key: paper[key] for key in shapes}
    assert shaped["data.size"] == 64 and shaped["backbone.width_multiplier"] == 1.0


def test_cuda_without_a_gpu_and_an_existing_run_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        paper_shaped.main(["--out", str(tmp_path), "--device", "cuda"])
    assert exit_.value.code == 2 and "torch sees no CUDA GPU" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    with pytest.raises(SystemExit) as exit_:
        paper_shaped.main(["--out", str(tmp_path)])
    assert exit_.value.code == 2 and "exists: remove it" in capsys.readouterr().err


@pytest.mark.heavy
@pytest.mark.timeout(1800)
def test_the_paper_profile_runs_end_to_end_at_its_shapes_on_the_cpu(tmp_path):
    result = run_paper_shaped(tmp_path / "run", "cpu")
    assert result.findings == [] and result.exit_status == 0
    methods = load_config("paper").methods
    assert result.cells == {"done": len(_expected_cells(methods))}
    assert {unit.split("/")[0] for unit in result.units} >= {"residual", "simclr", "spark"}
    assert 0.5 < result.peak_memory_gb < 24  # a full-width ResNet18 run, within this machine
    summary = (tmp_path / "paper-shaped.md").read_text()
    assert "passed" in summary and f"{result.peak_memory_gb:g} GB" in summary

    # The checks can fail: a missing cell and an encoder that is not the paper's are named.
    cell = next((tmp_path / "run" / "cells" / "simclr" / "finetune").glob("*/*/*.json"))
    cell.unlink()
    encoder = tmp_path / "run" / "pretrain" / "spark" / "seed0" / "encoder.pt"
    state = torch.load(encoder, weights_only=True)
    torch.save(dict(list(state.items())[1:]), encoder)  # the first convolution's weights gone
    findings = "\n".join(check_run_folder(tmp_path / "run"))
    assert "cell simclr finetune fraction 1 fold" in findings and "is missing" in findings
    assert f"{encoder} does not load into the full-width ResNet18" in findings


def _expected_cells(methods) -> list[tuple[str, str, int]]:
    """(method, protocol, fold) of the run: 2 folds, one fraction, one seed; the trivial
    baseline has no fine-tuning protocol."""
    from benchmark.orchestration.plan import evaluated_protocols

    cfg = load_config("paper", PAPER_SHAPED_COUNTS)
    return [
        (method, protocol, fold)
        for method in methods
        for protocol in evaluated_protocols(cfg, method)
        for fold in range(2)
    ]
