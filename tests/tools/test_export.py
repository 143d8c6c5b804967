"""`ssl3d export`: a smoke run's encoder as safetensors + config.json + model card, loaded
strictly into MONAI's ResNet."""

import json
import re

import pandas as pd
import pytest
import torch
from monai.networks.nets import ResNet
from safetensors.torch import load_file

from benchmark.cli import main
from benchmark.nn.backbone import load_encoder, stage_widths
from benchmark.registry import get_method
from benchmark.tools.export import ExportError, export_encoder


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export-run")
    main(["run", "--profile", "smoke", "--methods", "simclr,scratch", "--out", str(out),
          "finetune.protocols=[linear]", "splits.seeds=[0]"])  # fmt: skip
    return out


@pytest.mark.slow
def test_exported_encoder_loads_strictly_into_monai_and_the_card_names_it(
    smoke_run, tmp_path, monkeypatch
):
    shared = tmp_path / "shared"
    main(["export", str(smoke_run), "--method", "simclr", "--out", str(shared),
          "--license", "CC-BY-4.0"])  # fmt: skip
    widths = stage_widths(0.125)  # the smoke profile's backbone
    state = load_file(str(shared / "model.safetensors"))
    plain = ResNet(
        block="basic", layers=[2, 2, 2, 2], block_inplanes=list(widths), spatial_dims=3,
        n_input_channels=1, conv1_t_stride=2, feed_forward=False,
    )  # fmt: skip
    plain.load_state_dict(state, strict=True)
    original = torch.load(
        smoke_run / "pretrain" / "simclr" / "seed0" / "encoder.pt", weights_only=True
    )
    assert state.keys() == original.keys()
    assert all(torch.equal(state[key], original[key]) for key in original)
    through_ssl3d = load_encoder(shared / "model.safetensors", widths)
    assert torch.equal(through_ssl3d.conv1.weight, original["conv1.weight"])

    config = json.loads((shared / "config.json").read_text())
    assert config["widths"] == list(widths) and config["input_shape"] == [1, 32, 32, 32]
    assert config["method"] == "simclr" and config["preprocessing"]["size"] == 32
    assert config["pretraining"]["settings"]["max_epochs"] == 2

    card = (shared / "README.md").read_text()
    assert get_method("simclr").reference in card and "**Licence**: CC-BY-4.0" in card
    auprc = pd.read_csv(smoke_run / "tables" / "auprc.csv").query("method == 'simclr'")
    for row in auprc.itertuples():
        assert f"| {row.protocol} | {row.fraction:.4g} | {row.mean:.4g} | {row.std:.4g} |" in card
        assert f"| {row.ci_low:.4g} | {row.ci_high:.4g} |" in card
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert len(snippet.strip().splitlines()) <= 5
    scope = {}
    monkeypatch.chdir(shared)
    exec(snippet, scope)  # the card's own loading code, as a reader would run it
    assert torch.equal(scope["encoder"].conv1.weight, original["conv1.weight"])


@pytest.mark.slow
def test_export_refuses_what_it_cannot_export(smoke_run, tmp_path):
    with pytest.raises(ExportError, match="scratch is not pretrained"):
        export_encoder(smoke_run, "scratch", tmp_path / "a")
    with pytest.raises(ExportError, match="did not run 'byol'"):
        export_encoder(smoke_run, "byol", tmp_path / "b")
    with pytest.raises(ExportError, match="no run.yaml"):
        export_encoder(tmp_path, "simclr", tmp_path / "c")
