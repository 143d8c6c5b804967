"""Settings: profiles, method files, overrides, and errors that name the problem."""

import pytest

from benchmark.cli import main
from benchmark.config import ConfigError, config_hash, load_config, pretraining_settings


def test_profiles_resolve_and_override():
    cfg = load_config("smoke", ["finetune.lr=3e-4", "splits.seeds=[0,1]"])
    assert cfg.profile == "smoke"
    assert cfg.finetune.lr == pytest.approx(3e-4)
    assert list(cfg.splits.seeds) == [0, 1]
    assert cfg.data.size == 32 and cfg.backbone.width_multiplier == 0.125
    assert "simclr" in cfg.methods and "scratch" in cfg.methods
    assert cfg.method.simclr.temperature == pytest.approx(0.07)


def test_default_profile_is_quick_without_a_gpu():
    cfg = load_config()
    assert cfg.profile == "quick" and "no GPU" in cfg.profile_reason


def test_method_pretraining_overrides_apply_to_that_method_only():
    cfg = load_config("smoke", ["method.simclr.pretrain.lr=0.5"])
    assert pretraining_settings(cfg, "simclr").lr == 0.5
    assert pretraining_settings(cfg, "scratch").lr == cfg.pretrain.lr


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["finetune.lrr=1"],
            "unknown setting 'finetune.lrr' (command line). Did you mean 'finetune.lr'",
        ),
        (["nonsense=1"], "unknown setting 'nonsense'"),
        (["method.simclr.temprature=0.1"], "Did you mean 'method.simclr.temperature'"),
        (["finetune.lr=fast"], "setting 'finetune.lr' (command line) must be a number"),
        (["splits.seeds=3"], "must be a list"),
        (["finetune.lr"], "not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_setting(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config("smoke", overrides)
    assert message in str(error.value)


def test_unknown_profile_and_method_list_the_known_ones():
    with pytest.raises(
        ConfigError, match="unknown profile 'fast'; known profiles: paper, quick, smoke"
    ):
        load_config("fast")
    with pytest.raises(ConfigError, match="unknown method.*byl.*known methods: .*simclr"):
        load_config("smoke", methods=["byl"])


def test_config_hash_is_stable_and_sensitive():
    a = load_config("smoke")
    b = load_config("smoke")
    c = load_config("smoke", ["finetune.lr=0.1"])
    assert config_hash(a.finetune) == config_hash(b.finetune) != config_hash(c.finetune)


def test_config_show_prints_resolved_settings(capsys):
    main(["config", "show", "--profile", "smoke", "finetune.batch_size=4"])
    printed = capsys.readouterr().out
    assert "# profile smoke" in printed and "batch_size: 4" in printed


def test_cli_reports_config_errors_without_traceback(capsys):
    with pytest.raises(SystemExit) as exit_status:
        main(["config", "show", "--profile", "smoke", "finetune.nope=1"])
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown setting 'finetune.nope'")
