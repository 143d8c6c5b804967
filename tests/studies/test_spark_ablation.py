"""SparK's mask-cell ablation: three variants at 64^3 input, each named by its cell size."""

import pytest

from benchmark.config import load_config, method_hparams
from benchmark.method import MethodConfigError
from benchmark.registry import get_method
from benchmark.studies.ablation import ablation_settings, ablation_variants, load_ablation
from benchmark.training.pretrain import build_method


@pytest.mark.parametrize("profile", ["smoke", "paper"])
def test_the_variants_resolve_to_8_16_and_32_voxel_cells_of_a_64_cubed_input(profile):
    spec = load_ablation("spark")
    variants = ablation_variants(spec)
    resolved = []
    for variant in variants:
        cfg = load_config(
            profile, [*ablation_settings(spec), *variant.overrides], methods=["spark"]
        )
        assert (cfg.data.size, cfg.data.crop) == (64, 65)
        assert cfg.phantom.size >= cfg.data.crop
        cell = cfg.method.spark.mask_cell_size
        method = build_method(cfg, "spark")
        method.check_geometry(cfg.data.size)  # every variant tiles the input
        label = get_method("spark").display_name(method_hparams(cfg, "spark"))
        resolved.append((cell, (cfg.data.size // cell) ** 3, label))
    assert resolved == [
        (8, 512, "spark (mask 8^3)"),
        (16, 64, "spark (mask 16^3)"),
        (32, 8, "spark (mask 32^3)"),
    ]


def test_a_cell_that_leaves_no_masked_and_visible_cells_is_refused_naming_the_setting():
    cfg = load_config("smoke", ["method.spark.mask_cell_size=32"], methods=["spark"])
    method = build_method(cfg, "spark")
    with pytest.raises(MethodConfigError, match=r"method\.spark\.mask_cell_size=32"):
        method.check_geometry(32)


def test_other_methods_keep_their_registered_name():
    cfg = load_config("smoke")
    assert get_method("moco").display_name(method_hparams(cfg, "moco")) == "moco"
