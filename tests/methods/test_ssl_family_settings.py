"""The two-view SSL family: impossible settings are refused early; momentum copies behave."""

from types import SimpleNamespace

import pytest
import torch
from benchmark.methods.vicreg import VICRegCriterion
from lightly.loss import VICRegLoss
from lightly.models.utils import update_momentum
from lightly.utils.lars import LARS as LightlyLARS
from torch import nn

from benchmark.config import load_config
from benchmark.method import MethodConfigError
from benchmark.nn.lars import LARS
from benchmark.nn.momentum import MomentumCopy, move_towards, scheduled_momentum
from benchmark.training.pretrain import build_method

FAMILY = ["simclr", "byol", "simsiam", "byol_as_released", "moco", "barlow_twins", "vicreg"]


def method(name: str, *overrides: str):
    return build_method(load_config("smoke", overrides, methods=[name]), name)


@pytest.mark.parametrize("name", FAMILY)
def test_a_batch_of_one_is_refused_naming_the_setting(name):
    with pytest.raises(MethodConfigError, match=f"{name} needs at least 2 volumes.*batch_size"):
        method(name).check_settings(1)
    method(name).check_settings(8)


def test_moco_queue_must_be_a_multiple_of_the_batch():
    moco = method("moco", "method.moco.queue_size=1000")
    with pytest.raises(MethodConfigError, match=r"method.moco.queue_size \(1000\).*e.g. 992"):
        moco.check_settings(32)
    moco.check_settings(8)


@pytest.mark.parametrize(
    ("name", "override", "message"),
    [
        ("byol", "method.byol.momentum_start=1.5", "momentum_start"),
        ("byol", "method.byol.momentum_end=0.9", "momentum_start.*<= momentum_end"),
        ("byol", "method.byol.encoder=online_and_target", "method.byol.encoder"),
        ("moco", "method.moco.momentum_start=-0.1", "method.moco.momentum_start"),
        ("moco", "method.moco.temperature=0.0", "method.moco.temperature"),
        ("simclr", "method.simclr.temperature=0.0", "method.simclr.temperature"),
        ("simclr", "method.simclr.temperature=-0.07", "method.simclr.temperature"),
    ],
)
def test_impossible_hyper_parameters_are_refused_when_the_method_is_built(name, override, message):
    with pytest.raises(MethodConfigError, match=message):
        method(name, override)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_momentum_copy_averages_parameters_and_keeps_its_own_batchnorm_statistics():
    torch.manual_seed(0)
    online = _Net()
    target = MomentumCopy(online, ["layer"])
    assert not any(p.requires_grad for p in target.parameters())
    before = [p.clone() for p in target["layer"].parameters()]
    online.layer(torch.randn(8, 3) + 5)  # moves the online running statistics
    for parameter in online.parameters():
        parameter.data.add_(1.0)
    target.update_from(online, 0.9)
    for old, new, current in zip(before, target["layer"].parameters(), online.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * current)
    # Buffers are not averaged: the copy's running mean is still its initial zero...
    assert torch.all(target["layer"][1].running_mean == 0)
    assert not torch.all(online.layer[1].running_mean == 0)
    # ...until the copy itself runs in training mode, where it normalises with batch statistics.
    batch = torch.randn(16, 3) * 3 + 2
    out = target["layer"](batch)
    torch.testing.assert_close(out.mean(0), target["layer"][1].bias, atol=1e-5, rtol=0)
    assert not torch.all(target["layer"][1].running_mean == 0)


def test_scheduled_momentum_is_a_cosine_from_start_to_end_over_the_real_steps():
    def at(global_step: int) -> float:
        fake = SimpleNamespace(
            global_step=global_step, trainer=SimpleNamespace(estimated_stepping_batches=101)
        )
        return scheduled_momentum(fake, 0.99, 1.0)

    assert at(1) == pytest.approx(0.99)  # after the first optimiser step
    assert at(51) == pytest.approx(0.995)  # half-way
    assert at(101) == pytest.approx(1.0)  # after the last one
    assert at(1) < at(30) < at(70) < at(101)


def test_vicreg_criterion_is_lightlys_vicreg_loss_in_value_and_gradient():
    torch.manual_seed(0)
    first, second = torch.randn(2, 16, 96, dtype=torch.float64).unbind(0)
    losses, gradients = [], []
    for criterion in (VICRegLoss(), VICRegCriterion()):
        inputs = [first.clone().requires_grad_(), (second + 0.3 * first).requires_grad_()]
        loss = criterion(*inputs)
        loss.backward()
        losses.append(loss.detach())
        gradients.append(torch.cat([tensor.grad.flatten() for tensor in inputs]))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(gradients[1], gradients[0], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_takes_lightlys_lars_steps(nesterov):
    """benchmark/nn/lars.py against lightly's LARS over several steps: a decayed and an undecayed
    group, a parameter that starts at zero, one whose gradient is zero once, one without one."""
    torch.manual_seed(0)
    start = [torch.randn(4, 3), torch.randn(5), torch.zeros(3), torch.randn(2), torch.randn(6)]
    gradients = torch.randn(5, 20, dtype=torch.float64)
    trajectories = []
    for optimiser_class in (LightlyLARS, LARS):
        params = [nn.Parameter(value.double()) for value in start]
        decayed, undecayed = params[:3] + params[4:], params[3:4]
        optimiser = optimiser_class(
            [{"params": decayed, "weight_decay": 0.05}, {"params": undecayed, "weight_decay": 0}],
            lr=0.3,
            momentum=0.9,
            nesterov=nesterov,
        )
        for step, gradient in enumerate(gradients):
            for param, grad in zip(params[:4], gradient.split([12, 5, 3])):
                param.grad = grad.view_as(param) * (step != 2 or param.dim() != 1)
            optimiser.step()
        trajectories.append(torch.cat([param.detach().flatten() for param in params]))
    torch.testing.assert_close(trajectories[1], trajectories[0], rtol=1e-10, atol=1e-12)
    assert torch.equal(trajectories[1][-6:], start[-1].double())  # no gradient: not moved
    assert (trajectories[1][17:20] != 0).all()  # from zero: plain SGD steps, no LARS scaling


def test_moving_towards_the_online_module_is_lightlys_update_momentum():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Conv3d(1, 4, 3), nn.BatchNorm3d(4), nn.Linear(4, 2)).double()
    ours, lightlys = (
        nn.Sequential(nn.Conv3d(1, 4, 3), nn.BatchNorm3d(4), nn.Linear(4, 2)).double()
        for _ in range(2)
    )
    lightlys.load_state_dict(ours.state_dict())
    for momentum in (0.9, 0.99, 0.5):
        move_towards(ours, online, momentum)
        update_momentum(online, lightlys, momentum)
    for mine, reference in zip(ours.parameters(), lightlys.parameters()):
        torch.testing.assert_close(mine, reference, rtol=1e-14, atol=1e-15)
    with pytest.raises(ValueError, match="parameters"):
        move_towards(ours, nn.Linear(4, 2), 0.9)
