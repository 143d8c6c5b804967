"""Linear and k-NN probes, and Grad-CAM localisation, on the smoke phantom and by hand."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from sklearn.metrics import average_precision_score
from torch import nn

from benchmark.config import ConfigError, load_config
from benchmark.evaluation.knn_probe import run_knn
from benchmark.evaluation.linear_probe import run_linear
from benchmark.evaluation.localisation import grad_cam, localise, saliency_scores
from benchmark.evaluation.probes import cohort_features, encoder_features, frozen_encoder
from benchmark.nn.backbone import ResNet18, stage_widths
from benchmark.orchestration.grid import plan_run
from benchmark.results import Cell
from benchmark.testing import smoke_data

CELL_FIELDS = {
    "metrics", "prevalence", "threshold", "n_train", "n_val", "n_test", "predictions",
    "validation_predictions",
}  # fmt: skip


@pytest.fixture(scope="module")
def smoke():
    cfg, data, _ = smoke_data()
    return cfg, data


def _stored_auprc_matches_predictions(result):
    predictions = pd.DataFrame(result["predictions"])
    assert {"subject_id", "side", "label", "pathology", "score"} == set(predictions.columns)
    expected = average_precision_score(predictions["label"], predictions["score"])
    assert result["metrics"]["auprc"] == pytest.approx(expected, abs=1e-6)


def test_linear_probe_keeps_the_best_validation_strength(smoke, tmp_path):
    cfg, data = smoke
    result = run_linear(Cell("scratch", "linear", 1.0, 0, 0), cfg, data, None, tmp_path)
    assert CELL_FIELDS <= set(result)
    _stored_auprc_matches_predictions(result)
    scores = result["validation_auprc"]
    best = max(scores.values())
    assert result["C"] == min(float(c) for c, auprc in scores.items() if auprc == best)
    assert set(scores) == {f"{c:g}" for c in cfg.probes.linear.C}


def test_knn_score_is_the_distance_weighted_share_of_anomalous_neighbours(smoke, tmp_path):
    cfg, data = smoke
    cell = Cell("scratch", "knn", 0.5, 1, 0)
    result = run_knn(cell, cfg, data, None, tmp_path)
    assert CELL_FIELDS <= set(result)
    _stored_auprc_matches_predictions(result)

    encoder = frozen_encoder(cfg, None, seed=0)
    train = data.training_rows(0, 1, 0.5)
    test = data.partition_rows(0, 1, "test")
    train_x, test_x = (encoder_features(encoder, data.images(r)).numpy() for r in (train, test))
    mean, std = train_x.mean(0), train_x.std(0)
    std[std == 0] = 1
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    distance = 1 - unit(test_x) @ unit(train_x).T
    k = min(cfg.probes.knn.k, len(train))
    assert result["k"] == k
    labels = data.labels(train).numpy()
    expected = []
    for row in distance:
        nearest = np.argsort(row, kind="stable")[:k]
        weights = 1 / row[nearest]
        expected.append((weights * labels[nearest]).sum() / weights.sum())
    scores = [p["score"] for p in result["predictions"]]
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6)


def test_a_random_encoder_is_fixed_per_seed_and_features_are_cached(smoke):
    cfg, data = smoke
    first = cohort_features(cfg, data, None, seed=0, method="scratch")
    assert cohort_features(cfg, data, None, seed=0, method="scratch") is first
    other = cohort_features(cfg, data, None, seed=1, method="scratch")
    labelled = torch.tensor(data.cohort.table["label"].notna().to_numpy())
    assert not torch.allclose(first[labelled], other[labelled])
    assert torch.isnan(first[~labelled]).all()


@pytest.mark.parametrize(
    "override",
    ["probes.knn.k=0", "probes.knn.metric=manhattan", "probes.linear.C=[]",
     "finetune.localisation.stage=5"],
)  # fmt: skip
def test_bad_protocol_settings_are_refused_when_built_and_when_the_grid_is_planned(
    smoke, tmp_path, override
):
    """Refused when the settings are built (config.SETTING_RULES); settings changed after that
    (programmatically) meet the same rules when the grid is planned."""
    _, data = smoke
    key, value = override.split("=")
    with pytest.raises(ConfigError, match=f"'{key}' must be"):
        load_config("smoke", [override], methods=["scratch"])
    cfg = load_config("smoke", methods=["scratch"])
    OmegaConf.update(cfg, key, OmegaConf.create(f"v: {value}").v, merge=False)
    with pytest.raises(ConfigError, match=f"'{key}' must be"):
        plan_run(cfg, data, tmp_path)


def test_saliency_scores_of_known_maps():
    mask = torch.zeros(2, 4, 4, 4, dtype=torch.bool)
    mask[:, :2, :2, :2] = True  # 8 of 64 voxels
    perfect = mask.float()
    constant = torch.ones(2, 4, 4, 4)
    outside = torch.zeros(2, 4, 4, 4)
    outside[:, 3, 3, 3] = 1.0
    auprc, hits = saliency_scores(torch.cat([perfect[:1], constant[:1]]), mask)
    assert auprc.tolist() == pytest.approx([1.0, 8 / 64]) and hits.tolist() == [1.0, 8 / 64]
    auprc, hits = saliency_scores(outside, mask)
    assert hits.tolist() == [0.0, 0.0]


def test_grad_cam_of_the_last_stage_is_the_class_activation_map():
    """With global average pooling and a linear head, Grad-CAM of the last stage equals CAM
    (Zhou et al., CVPR 2016): ReLU(sum_c (w_1c - w_0c) A_c) / voxels, upsampled."""
    torch.manual_seed(0)
    backbone = ResNet18(stage_widths(0.125)).eval()
    head = nn.Linear(backbone.feature_dim, 2)
    images = torch.rand(3, 1, 64, 64, 64)
    saliency = grad_cam(backbone, head, images, stage=4)
    assert saliency.shape == (3, 64, 64, 64) and (saliency >= 0).all()
    with torch.no_grad():
        last = backbone.feature_maps(images)[-1]  # [3, C, 2, 2, 2]
        direction = (head.weight[1] - head.weight[0]).view(1, -1, 1, 1, 1)
        cam = F.relu((direction * last).sum(1, keepdim=True)) / last[0, 0].numel()
        expected = F.interpolate(cam, size=(64, 64, 64), mode="trilinear", align_corners=False)
    torch.testing.assert_close(saliency, expected[:, 0], rtol=1e-4, atol=1e-6)


def test_localisation_is_skipped_without_masks_and_scores_every_masked_volume(smoke):
    cfg, data = smoke
    settings = OmegaConf.create({"enabled": True, "stage": 2})
    backbone = ResNet18(stage_widths(float(cfg.backbone.width_multiplier)))
    head = nn.Linear(backbone.feature_dim, 2)
    rows = data.partition_rows(0, 0, "test")
    without = SimpleNamespace(cohort=SimpleNamespace(masks=None))
    assert localise(backbone, head, without, rows, settings, 8) is None
    result = localise(backbone, head, data, rows, settings, 8)
    masked = [r for r in rows if data.cohort.masks[r].any()]
    assert result["n"] == len(masked) > 0 and result["stage"] == "layer2"
    assert {v["pathology"] for v in result["volumes"]} - {""}
    assert 0 <= result["pointing_game"] <= 1 and 0 < result["chance"] < 1


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_grad_cam_of_an_inner_stage_takes_the_gradient_through_the_whole_network(stage):
    """The stage's map as a leaf and the stages after it give the gradient that autograd takes
    through one whole forward pass (what a compiled ResNet18 cannot give: its maps come out of
    one fused graph)."""
    torch.manual_seed(0)
    backbone = ResNet18(stage_widths(0.125)).eval()
    head = nn.Sequential(nn.Linear(backbone.feature_dim, 8), nn.ReLU(), nn.Linear(8, 2))
    images = torch.rand(2, 1, 32, 32, 32)
    maps = backbone.feature_maps(images)
    logits = head(backbone.pool(maps[-1]))
    (gradient,) = torch.autograd.grad((logits[:, 1] - logits[:, 0]).sum(), maps[stage])
    weights = gradient.mean(dim=(2, 3, 4), keepdim=True)
    cam = F.relu((weights * maps[stage].detach()).sum(dim=1, keepdim=True))
    expected = F.interpolate(cam, size=(32, 32, 32), mode="trilinear", align_corners=False)
    torch.testing.assert_close(grad_cam(backbone, head, images, stage), expected[:, 0])
