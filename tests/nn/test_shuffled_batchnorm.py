"""Shuffled BatchNorm: order kept, statistics per group only, running statistics averaged."""

import pytest
import torch
from torch import nn

from benchmark.errors import MethodConfigError
from benchmark.nn.backbone import ResNet18
from benchmark.nn.shuffled_batchnorm import (
    check_groups,
    forward_in_groups,
    forward_shuffled,
    group_count,
)


def small_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3)
    )


def batch(size: int = 8) -> torch.Tensor:
    return torch.randn(size, 1, 4, 4, 4, generator=torch.Generator().manual_seed(1))


def shuffled(network: nn.Module, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return forward_shuffled([network], network, images, 4, generator)


def test_in_evaluation_mode_the_shuffled_forward_is_the_plain_forward_in_order():
    backbone = ResNet18(widths=(4, 8, 8, 8)).eval()
    images = torch.randn(8, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(shuffled(backbone, images), backbone(images))


def test_a_sample_is_normalised_only_by_the_samples_of_its_group():
    network = small_network().train()
    images = batch()
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    group_of_first = order.tensor_split(4)[[0 in g for g in order.tensor_split(4)].index(True)]
    same_group = next(int(i) for i in group_of_first if i != 0)
    other_group = next(i for i in range(8) if i not in group_of_first.tolist())
    before = shuffled(network, images)[0]

    changed = images.clone()
    changed[other_group] *= 5
    assert torch.equal(shuffled(network, changed)[0], before)
    changed = images.clone()
    changed[same_group] *= 5
    assert not torch.allclose(shuffled(network, changed)[0], before, atol=1e-3)
    # With one BatchNorm batch, any sample moves every other one (what the groups stop).
    with torch.no_grad():
        plain, moved = network(images)[0], network(changed)[0]
    assert not torch.allclose(plain, moved, atol=1e-3)


def test_each_group_sees_only_its_rows_in_the_given_order():
    seen = []

    def record(rows):
        seen.append(rows[:, 0].tolist())
        return rows

    rows = torch.arange(10.0).unsqueeze(1)
    order = torch.tensor([3, 1, 4, 0, 5, 9, 2, 6, 8, 7])
    out = forward_in_groups([], record, rows, 3, order)
    assert seen == [[3, 1, 4, 0], [5, 9, 2], [6, 8, 7]]
    assert torch.equal(out, rows)


def test_running_statistics_move_once_towards_the_mean_of_the_groups():
    network = small_network().train()
    norm = network[1]
    images = batch()
    network(images[:2])  # materialise the lazy layer; one update of the running buffers
    start_mean, start_var = norm.running_mean.clone(), norm.running_var.clone()
    tracked = int(norm.num_batches_tracked)

    forward_in_groups([network], network, images, 4)

    with torch.no_grad():
        features = network[0](images)  # [8, 4, 4, 4, 4]
    groups = features.unflatten(0, (4, 2)).transpose(1, 2).flatten(2)  # [4 groups, C, samples]
    m = norm.momentum
    expected_mean = (1 - m) * start_mean + m * groups.mean(dim=2).mean(dim=0)
    expected_var = (1 - m) * start_var + m * groups.var(dim=2).mean(dim=0)
    torch.testing.assert_close(norm.running_mean, expected_mean)
    torch.testing.assert_close(norm.running_var, expected_var)
    assert int(norm.num_batches_tracked) == tracked + 1


def test_gradients_flow_through_the_groups_to_every_sample():
    network = small_network().train()
    images = batch().requires_grad_()
    forward_in_groups([network], network, images, 4).sum().backward()
    assert images.grad is not None and bool((images.grad.flatten(1).abs().sum(1) > 0).all())


@pytest.mark.parametrize(
    ("size", "groups", "expected"), [(8, 4, 4), (7, 4, 3), (3, 4, 1), (8, 1, 1)]
)
def test_every_group_holds_at_least_two_samples(size, groups, expected):
    assert group_count(size, groups) == expected


@pytest.mark.parametrize("groups", [0, -2, 1.5, True])
def test_bad_group_counts_are_refused_naming_the_setting(groups):
    with pytest.raises(MethodConfigError, match=r"method\.moco\.shuffle_bn_groups"):
        check_groups("moco", groups)
