"""The shared ResNet18: MONAI-compatible weights, multi-scale maps, width multiplier."""

import pytest
import torch
from monai.networks.nets import resnet18
from torch import nn

from benchmark.nn.backbone import (
    PAPER_WIDTHS,
    OneVoxelAwareConv3d,
    ResNet18,
    load_encoder,
    monai_resnet18,
    save_encoder,
    stage_widths,
)


def test_paper_encoder_loads_strict_into_plain_monai_resnet18(tmp_path):
    backbone = ResNet18(PAPER_WIDTHS)
    save_encoder(backbone, tmp_path / "encoder.pt")
    plain = resnet18(spatial_dims=3, n_input_channels=1, conv1_t_stride=2, feed_forward=False)
    plain.load_state_dict(torch.load(tmp_path / "encoder.pt", weights_only=True), strict=True)
    x = torch.randn(2, 1, 32, 32, 32)
    backbone.eval(), plain.eval()
    assert torch.allclose(backbone(x), plain(x), atol=1e-5)
    assert sum(p.numel() for p in plain.parameters()) == pytest.approx(33.2e6, rel=0.01)


def test_feature_maps_have_strides_2_to_32():
    backbone = ResNet18(stage_widths(0.125))
    maps = backbone.feature_maps(torch.randn(2, 1, 64, 64, 64))
    assert [m.shape[-1] for m in maps] == [32, 16, 8, 4, 2]
    assert [m.shape[1] for m in maps] == [8, 8, 16, 32, 64]
    assert backbone(torch.randn(2, 1, 64, 64, 64)).shape == (2, backbone.feature_dim)


def test_narrow_encoder_round_trip(tmp_path):
    widths = stage_widths(0.25)
    assert widths == (16, 32, 64, 128)
    backbone = ResNet18(widths)
    save_encoder(backbone, tmp_path / "e.pt")
    loaded = load_encoder(tmp_path / "e.pt", widths)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    assert "narrow" in loaded.description and "16/32/64/128" in loaded.description


def test_width_multiplier_is_checked():
    with pytest.raises(ValueError, match="width_multiplier must be in"):
        stage_widths(1.5)


def test_one_voxel_maps_give_the_full_kernels_outputs_and_gradients():
    """16^3 inputs leave stages 3 and 4 at 1^3, where only the kernels' centres are applied."""
    torch.manual_seed(0)
    widths = stage_widths(0.125)
    backbone = ResNet18(widths).double()
    plain = monai_resnet18(widths).double()
    plain.load_state_dict(backbone.state_dict(), strict=True)
    assert any(type(m) is OneVoxelAwareConv3d for m in backbone.modules())
    assert not any(type(m) is OneVoxelAwareConv3d for m in plain.modules())
    x = torch.randn(3, 1, 16, 16, 16, dtype=torch.float64)
    maps = backbone.feature_maps(x)
    assert [m.shape[-1] for m in maps] == [8, 4, 2, 1, 1]
    outputs = [backbone(x), plain(x)]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-12, atol=1e-12)
    for output in outputs:
        (output * torch.arange(output.shape[1], dtype=output.dtype)).sum().backward()
    for mine, reference in zip(backbone.parameters(), plain.parameters()):
        torch.testing.assert_close(mine.grad, reference.grad, rtol=1e-8, atol=1e-10)
    conv = OneVoxelAwareConv3d(2, 3, 3, stride=2, padding=1)
    one_voxel = torch.randn(2, 2, 1, 1, 1)
    torch.testing.assert_close(conv(one_voxel), nn.Conv3d.forward(conv, one_voxel))
