"""The residual method's stages on the smoke phantom: CAE, residual targets, cache, bad input."""

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from benchmark.datasets.batches import TensorBatches, batch_loader
from benchmark.methods.residual.cae import ConvAutoencoder3D, reconstruct, train_autoencoder
from benchmark.methods.residual.figure import draw_residual_figure
from benchmark.methods.residual.targets import (
    ResidualTargetError,
    localisation,
    median_filter3d,
    residual_targets,
)
from scipy import ndimage
from sklearn.metrics import average_precision_score
from torch import nn

from benchmark.config import load_config
from benchmark.method import MethodConfigError
from benchmark.nn.backbone import monai_resnet18, stage_widths
from benchmark.nn.decoders import doubled_trilinearly
from benchmark.orchestration.grid import run_grid
from benchmark.reporting.report import write_report
from benchmark.results import read_cells
from benchmark.studies.ablation import run_ablation
from benchmark.testing import pretrain_briefly, smoke_data
from benchmark.training.pretrain import build_method, open_pretrained, pretraining_context
from benchmark.training.units import pretraining_units, unit_for


@pytest.mark.parametrize("shape", [(2, 1, 5, 6, 7), (3, 1, 1, 4, 2)])
def test_doubling_one_axis_at_a_time_is_trilinear_interpolation(shape):
    """The decoder output's fast CPU upsampling: F.interpolate's values and gradients."""
    volumes = torch.rand(shape, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(*shape[:2], *(2 * side for side in shape[2:]), dtype=torch.float64)
    expected = nn.functional.interpolate(
        volumes, scale_factor=2, mode="trilinear", align_corners=False
    )
    (expected_gradient,) = torch.autograd.grad((expected * weights).sum(), volumes)
    doubled = doubled_trilinearly(volumes)
    (gradient,) = torch.autograd.grad((doubled * weights).sum(), volumes)
    torch.testing.assert_close(doubled, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(gradient, expected_gradient, rtol=0, atol=1e-12)


def test_the_cae_epoch_losses_are_the_mean_step_losses_read_once_per_epoch():
    """train_autoencoder sums its losses on the device; the epochs' means equal those of the
    loop that read every step's loss on the host."""

    def cae():
        torch.manual_seed(0)
        return ConvAutoencoder3D(16, channels=(4, 8, 8), latent_dim=16)

    images = torch.rand(7, 1, 16, 16, 16)
    losses, steps = train_autoencoder(cae(), images, 2, 3, 1e-3, 0, torch.device("cpu"))
    model = cae().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = batch_loader(TensorBatches(image=images), 3, 0)
    expected, expected_steps = [], 0
    for epoch in range(2):
        loader.batch_sampler.sampler.set_epoch(epoch)
        total, count = 0.0, 0
        for batch in loader:
            volumes = batch["image"]
            loss = nn.functional.l1_loss(model(volumes), volumes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            expected_steps += 1
            total, count = total + float(loss.detach()) * len(volumes), count + len(volumes)
        expected.append(total / count)
    assert all(type(value) is float for value in losses)
    assert losses == pytest.approx(expected, rel=1e-12)
    assert steps == expected_steps


def _context(tmp_path, overrides=(), data=None):
    cfg = load_config("smoke", overrides, methods=["residual"])
    data = data or smoke_data()[1]
    messages = []
    unit = pretraining_units(cfg, "residual", tmp_path)[0]
    rows, _ = data.pretraining_pool("unlabelled")
    context = pretraining_context(cfg, unit, data, torch.device("cpu"), messages.append, rows=rows)
    return build_method(cfg, "residual"), context, messages


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    method, context, messages = _context(tmp_path_factory.mktemp("residual"))
    method.prepare(context)
    return SimpleNamespace(method=method, context=context, messages=messages)


def test_the_autoencoder_is_trained_once_on_the_smallest_fractions_normals(prepared):
    context, data = prepared.context, prepared.context.data
    assert any("training the residual autoencoder (none is cached)" in m for m in prepared.messages)
    normals = prepared.method.cae_normal_rows(context)
    training = data.training_rows(0, 0, min(context.label_fractions))
    assert set(normals) == set(training[data.labels(training).numpy() == 0])
    never = np.concatenate([data.partition_rows(0, 0, p) for p in ("val", "test")])
    assert not set(normals) & set(never)


def test_the_autoencoder_reconstructs_normals_better_than_anomalous_sinuses(prepared):
    context, data = prepared.context, prepared.context.data
    cae = prepared.method.cae_stage(context)
    training = data.training_rows(0, 0, 1.0)
    unseen = np.concatenate(  # the CAE saw neither validation volumes nor anomalous ones
        [data.partition_rows(0, 0, "val"), training[data.labels(training).numpy() == 1]]
    )
    images = data.images(unseen)
    errors = (images - reconstruct(cae, images, torch.device("cpu"))).abs().flatten(1).mean(1)
    labels = data.labels(unseen).numpy()
    assert errors[labels == 0].mean() < errors[labels == 1].mean()


def test_residuals_are_higher_inside_anomaly_masks_than_outside(prepared):
    check = prepared.context.notes["residual_localisation"]
    assert check["inside"] > check["outside"]
    assert check["auprc"] > 2 * check["chance"]
    assert any("voxel AUPRC" in message for message in prepared.messages)


def test_targets_cover_the_pool_in_unit_range(prepared):
    method, context = prepared.method, prepared.context
    rows = torch.as_tensor(context.pool_rows[:4])
    targets = method.lookup_targets(rows)
    assert targets.shape == (4, 1, 32, 32, 32) and 0 <= targets.min() < targets.max() <= 1


def test_a_second_prepare_reuses_both_stages(prepared):
    stages = prepared.context.unit.directory / "stages"
    stamps = {path: path.stat().st_mtime_ns for path in stages.iterdir()}
    method, context, messages = _context(prepared.context.unit.directory.parents[3])
    assert context.unit.directory == prepared.context.unit.directory
    method.prepare(context)
    assert any("reusing stage 'residuals'" in m for m in messages)
    assert not any("training" in m for m in messages)
    assert stamps == {path: path.stat().st_mtime_ns for path in stages.iterdir()}
    assert torch.equal(method.target_table, prepared.method.target_table)


def test_an_autoencoder_of_other_preprocessing_is_rebuilt_and_said_so(prepared):
    root = prepared.context.unit.directory.parents[3]
    overrides = ["data.clip_percentiles=[0.5,99.5]", "method.residual.cae.epochs=1"]
    method, context, messages = _context(root, overrides)
    method.cae_stage(context)
    rebuilt = [m for m in messages if "training the residual autoencoder" in m]
    assert rebuilt and "other epochs, preprocessing" in rebuilt[0]


def _all_anomalous(data):
    table = data.cohort.table.copy()
    table.loc[table["label"].notna(), "label"] = 1
    return dataclasses.replace(data, cohort=dataclasses.replace(data.cohort, table=table))


@pytest.mark.parametrize(
    "setting, where",
    [
        ("training", "label fraction 1"),
        ("current_fraction", "label fraction 0.5"),
        ("smallest_fraction", "label fraction 0.5"),
    ],
)
def test_no_normal_volumes_is_an_error_naming_the_setting(tmp_path, setting, where):
    data = _all_anomalous(smoke_data()[1])
    method, context, _ = _context(tmp_path, [f"method.residual.cae.normals={setting}"], data)
    with pytest.raises(MethodConfigError, match=f"cae.normals={setting} \\({where}"):
        method.prepare(context)


def test_current_fraction_pretrains_once_per_fraction_on_that_fractions_normals(tmp_path):
    cfg = load_config("smoke", ["method.residual.cae.normals=current_fraction"], ["residual"])
    data = smoke_data()[1]
    units = pretraining_units(cfg, "residual", tmp_path)
    fractions = [float(f) for f in cfg.splits.fractions]
    assert [(u.seed, u.fold, u.fraction) for u in units] == [
        (seed, fold, f) for seed in cfg.splits.seeds for fold in range(2) for f in fractions
    ]
    method = build_method(cfg, "residual")
    rows, _ = data.pretraining_pool("unlabelled")
    seen = {}
    for unit in units[: len(fractions)]:  # seed 0, fold 0
        assert unit_for(units, 0, 0, unit.fraction) is unit
        context = pretraining_context(cfg, unit, data, torch.device("cpu"), rows=rows)
        training = data.training_rows(0, 0, unit.fraction)
        seen[unit.fraction] = set(method.cae_normal_rows(context))
        assert seen[unit.fraction] == set(training[data.labels(training).numpy() == 0])
    assert seen[fractions[0]] < seen[fractions[-1]]  # nested, and fewer labels at 50 %


def test_by_default_the_autoencoder_uses_no_label_outside_any_cell_it_serves(tmp_path):
    """cae.normals=smallest_fraction: the CAE's rows of a unit lie inside the labelled training
    subset of every cell that starts from the unit, the 50 % cells' too."""
    cfg = load_config("smoke", methods=["residual"])
    assert cfg.method.residual.cae.normals == "smallest_fraction"
    data = smoke_data()[1]
    units = pretraining_units(cfg, "residual", tmp_path)
    assert len(units) == len(cfg.splits.seeds) * cfg.splits.folds
    method = build_method(cfg, "residual")
    rows, _ = data.pretraining_pool("unlabelled")
    for unit in units:
        context = pretraining_context(cfg, unit, data, torch.device("cpu"), rows=rows)
        normals = set(method.cae_normal_rows(context))
        assert normals
        for fraction in cfg.splits.fractions:
            assert unit_for(units, unit.seed, unit.fold, fraction) is unit
            assert normals <= set(data.training_rows(unit.seed, unit.fold, fraction))


def test_a_grid_with_current_fraction_starts_each_fraction_from_its_own_encoder(tmp_path):
    overrides = [
        "method.residual.cae.normals=current_fraction",
        "method.residual.cae.epochs=2",
        "finetune.protocols=[linear]",
        "pretrain.max_epochs=1",
    ]
    run_grid(load_config("smoke", overrides, ["residual"]), tmp_path, quiet=True)
    encoders = sorted((tmp_path / "pretrain" / "residual").rglob("encoder.pt"))
    assert len(encoders) == 8 and {e.parent.name for e in encoders} == {"f0.5", "f1"}
    for cell in read_cells(tmp_path):
        assert cell["status"] == "done"
        assert cell["config"]["pretraining"]["fraction"] == cell["fraction"]
    write_report(tmp_path)  # one configuration, although each fraction has its own units


def test_impossible_settings_are_refused_before_training():
    cfg = load_config(
        "smoke",
        ["method.residual.loss=hinge", "method.residual.residual.median_filter=4"],
        methods=["residual"],
    )
    with pytest.raises(MethodConfigError, match="loss must be one of.*median_filter must be"):
        build_method(cfg, "residual").check_settings(8)


class _Broken(nn.Module):
    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, volumes):
        return self.output(volumes)


def test_nonfinite_and_constant_residuals_fail_the_stage_with_the_reason():
    volumes = torch.rand(3, 1, 8, 8, 8)
    nan_at_one = _Broken(
        lambda v: torch.where(torch.arange(3).view(3, 1, 1, 1, 1) == 1, v * torch.nan, v * 0.5)
    )
    with pytest.raises(ResidualTargetError, match="1 volume.*not finite.*positions \\[1\\]"):
        residual_targets(nan_at_one, volumes, 3, (1, 99), torch.device("cpu"))
    with pytest.raises(ResidualTargetError, match="3 residual map\\(s\\) are constant"):
        residual_targets(_Broken(lambda v: v), volumes, 3, (1, 99), torch.device("cpu"))


@pytest.mark.parametrize("size", [3, 5])
def test_median_filter_equals_scipy(size):
    volumes = torch.rand(2, 1, 9, 10, 11)
    expected = [ndimage.median_filter(v[0].numpy(), size=size, mode="nearest") for v in volumes]
    assert torch.equal(median_filter3d(volumes, size)[:, 0], torch.from_numpy(np.stack(expected)))


def test_localisation_auprc_equals_sklearn_on_the_stored_levels():
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 1, 6, 6, 6, generator=generator) < 0.2
    targets = (torch.rand(3, 1, 6, 6, 6, generator=generator) * 120 + masks * 80).to(torch.uint8)
    check = localisation(targets, masks)
    expected = average_precision_score(masks.flatten().numpy(), targets.flatten().numpy())
    assert check["auprc"] == pytest.approx(expected)
    assert check["chance"] == pytest.approx(float(masks.float().mean()))


def test_spatial_views_move_the_target_and_intensity_views_do_not_touch_it(prepared):
    cfg = load_config(
        "smoke",
        [
            "method.residual.views.preset=none",
            "method.residual.views.flip_probability=1.0",
            "method.residual.views.noise_probability=1.0",
            "method.residual.views.noise_std_range=[0.1,0.1]",
        ],
        methods=["residual"],
    )
    method = build_method(cfg, "residual")
    images = prepared.context.data.images(prepared.context.pool_rows[:4])
    view, target = method.augment(images, images.clone())
    flipped = images.flip(2, 3, 4)
    assert torch.equal(target, flipped)  # every axis flipped with probability 1
    assert (view - target).std() == pytest.approx(0.1, rel=0.05)


@pytest.mark.parametrize("method", ["residual", "autoencoder", "denoising_autoencoder"])
def test_the_reconstruction_loss_falls(method):
    losses = pretrain_briefly(method, steps=30).losses
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6


@pytest.fixture(scope="module")
def residual_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("residual-run")
    cfg = load_config(
        "smoke",
        ["finetune.protocols=[linear]"],
        methods=["residual", "autoencoder", "denoising_autoencoder"],
    )
    run_grid(cfg, out, quiet=True)
    return cfg, out


def test_the_grid_runs_every_stage_and_exports_plain_encoders(residual_run):
    cfg, out = residual_run
    widths = stage_widths(cfg.backbone.width_multiplier)
    for method in ("residual", "autoencoder", "denoising_autoencoder"):
        for encoder in (out / "pretrain" / method).rglob("encoder.pt"):
            state = torch.load(encoder, weights_only=True)
            monai_resnet18(widths).load_state_dict(state, strict=True)
        cells = list((out / "cells" / method).rglob("*.json"))
        assert cells and all('"status": "done"' in cell.read_text() for cell in cells)
    record = json.loads(next((out / "pretrain" / "residual").rglob("pretrain.json")).read_text())
    check = record["notes"]["residual_localisation"]
    assert check["auprc"] > check["chance"]


def test_the_residual_figure_is_drawn_from_a_finished_run(residual_run, tmp_path):
    _, out = residual_run
    method, context = open_pretrained(out, "residual", seed=0, fold=0, log=lambda m: None)
    checks = draw_residual_figure(method, context, tmp_path / "residuals.png", examples=2)
    assert (tmp_path / "residuals.png").stat().st_size > 10_000
    # The targets localise; the U-Net's prediction after two smoke epochs need not (it is
    # reported next to them, to be read on real runs).
    assert checks["target"]["auprc"] > checks["target"]["chance"]
    assert set(checks) == {"target", "prediction"}


def test_an_ablation_runs_each_variant_once_and_shares_the_autoencoder(residual_run, tmp_path):
    cfg, out = residual_run
    manifest = out / "data" / "phantom" / "manifest.csv"
    table = run_ablation(
        "residual",
        tmp_path,
        "smoke",
        [f"data.manifest={manifest}", "finetune.protocols=[linear]"],
        grids=["cae_labels"],
        quiet=True,
        log=lambda m: None,
    )
    assert len(list((tmp_path / "variants").iterdir())) == 3  # training, current, smallest
    assert len(table) > 0
    # settings are chosen by validation AUPRC, shown beside the test AUPRC
    assert table["validation_auprc_mean"].between(0, 1).all()
    markdown = (tmp_path / "tables" / "ablation_residual.md").read_text()
    assert "validation AUPRC" in markdown and "Choose a setting by validation AUPRC" in markdown
