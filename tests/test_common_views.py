"""pretrain.views_preset: one views preset for every method, named in the report's captions."""

import pytest
from benchmark.datasets.views import Views

from benchmark.config import ConfigError, load_config
from benchmark.reporting.collect import RunResults
from benchmark.reporting.report import views_clause
from benchmark.training.pretrain import build_method


def test_by_default_each_method_keeps_its_own_views():
    cfg = load_config("smoke")
    assert cfg.pretrain.views_preset is None
    assert cfg.method.moco.views.preset == "contrastive"
    assert cfg.method.spark.views.preset == "paper"
    assert "preset" not in cfg.method.drasclr.views  # DrasCLR's own settings


def test_a_common_preset_is_what_every_method_draws_its_views_with():
    cfg = load_config("smoke", ["pretrain.views_preset=light"])
    light = Views.from_config({"preset": "light"}).settings
    drawing = [name for name in cfg.methods if cfg.method[name].get("views") is not None]
    assert {"moco", "drasclr", "spark", "residual", "denoising_autoencoder"} <= set(drawing)
    for name in drawing:  # the whole section is replaced: no own setting survives
        assert build_method(cfg, name).views.settings == light, name


def test_an_unknown_common_preset_is_refused_naming_the_setting():
    with pytest.raises(ConfigError, match=r"pretrain\.views_preset='sharp'.*contrastive"):
        load_config("smoke", ["pretrain.views_preset=sharp"])


def _record(method, views):
    settings = {} if views is None else {"views": views}
    return {"method": method, "config": {"pretraining": {"settings": settings}}}


def test_the_caption_names_the_presets_the_cells_record():
    common = {(m,): _record(m, {"preset": "light"}) for m in ("moco", "spark", "drasclr")}
    common[("scratch",)] = {"method": "scratch", "config": {"pretraining": None}}
    results = RunResults(None, None, common, None)
    assert results.view_presets == {"moco": "light", "spark": "light", "drasclr": "light"}
    assert views_clause(results.view_presets) == (
        "; every pretrained method used the light views preset"
    )
    own = {
        ("moco",): _record("moco", {"preset": "contrastive"}),
        ("simclr",): _record("simclr", {"preset": "contrastive"}),
        ("drasclr",): _record("drasclr", {"affine_probability": 1.0}),
    }
    clause = views_clause(RunResults(None, None, own, None).view_presets)
    assert clause == "; pretraining views: contrastive for moco, simclr | own settings for drasclr"
