"""ssl3d tune: search spaces, resumable studies, validation-only trials, tuned runs."""

import json

import numpy as np
import optuna
import pytest
from omegaconf import OmegaConf

from benchmark.cli import main
from benchmark.config import load_config
from benchmark.registry import get_method
from benchmark.reporting.tables import budget_markdown
from benchmark.rundata import prepare_data
from benchmark.studies.tuning import (
    TuningError,
    ValidationAsTest,
    open_storage,
    open_study,
    optimise,
    record_budgets,
    run_tuning,
    search_space,
    tuned_overrides,
)


def _toy_objective(trial: optuna.Trial) -> float:
    """Best at x = 0.3; a stand-in for a trial's validation AUPRC."""
    return 1.0 - (trial.suggest_float("x", -1.0, 1.0) - 0.3) ** 2


def test_a_study_finds_a_better_trial_than_its_first_and_resumes(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_study(open_storage(url), "toy", {"objective": "toy"}, startup_trials=3)
    assert optimise(study, _toy_objective, trials=10) == 10
    first, best = study.trials[0].value, study.best_value
    assert best > first
    assert best > 0.95
    explored = [t.params for t in study.trials]

    resumed = open_study(open_storage(url), "toy", {"objective": "toy"}, startup_trials=3)
    assert optimise(resumed, _toy_objective, trials=14) == 4
    assert len(resumed.trials) == 14
    assert [t.params for t in resumed.trials[:10]] == explored
    assert optimise(resumed, _toy_objective, trials=14) == 0


def test_failed_trials_count_against_the_budget(tmp_path):
    study = open_study(open_storage(f"sqlite:///{tmp_path / 's.db'}"), "fails", {})

    def diverges(trial):
        trial.suggest_float("lr", 0.1, 1.0)
        raise RuntimeError("non-finite loss")

    assert optimise(study, diverges, trials=3) == 3
    assert all(t.state == optuna.trial.TrialState.FAIL for t in study.trials)


def test_a_study_made_with_other_settings_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    open_study(open_storage(url), "simclr-linear", {"fraction": 1.0, "profile": "smoke"})
    with pytest.raises(TuningError, match="other settings.*fraction"):
        open_study(open_storage(url), "simclr-linear", {"fraction": 0.5, "profile": "smoke"})


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"setting": "finetune.lr", "low": 1e-5, "high": 1e-3}, "not a setting of method simclr"),
        ({"setting": "method.simclr.temprature", "low": 0.1, "high": 1}, "not a known setting"),
        ({"setting": "method.simclr.temperature", "low": 0.5, "high": 0.1}, "must be below"),
        ({"setting": "method.simclr.temperature", "low": 0, "high": 1, "log": True}, "low` > 0"),
        ({"setting": "method.simclr.temperature"}, "give `low` and `high`"),
        ({"setting": "method.simclr.temperature", "choices": []}, "non-empty list"),
        ({"setting": "method.simclr.temperature", "low": 0.1, "high": 1, "step": 2}, "unknown"),
    ],
)
def test_bad_search_space_entries_name_the_entry(entry, message):
    cfg = load_config("smoke", methods=["simclr"])
    OmegaConf.set_struct(cfg, False)
    cfg.method.simclr.search_space = [entry]
    with pytest.raises(TuningError, match=message) as error:
        search_space(cfg, "simclr")
    assert "method.simclr.search_space[0]" in str(error.value)


def test_every_pretrained_method_declares_a_search_space_and_integers_stay_integers():
    cfg = load_config("smoke")
    for method in cfg.methods:
        space = search_space(cfg, method)
        assert bool(space) == get_method(method).needs_pretraining, method
    OmegaConf.set_struct(cfg, False)
    cfg.method.simsiam.search_space = [
        {"setting": "method.simsiam.prediction_hidden_dim", "low": 32, "high": 256}
    ]
    (parameter,) = search_space(cfg, "simsiam")
    assert parameter.integer


def test_validation_partitions_stand_in_for_the_test_set(tmp_path):
    cfg = load_config("smoke", methods=["simclr"])
    data = prepare_data(cfg, tmp_path, lambda message: None)
    tuning = ValidationAsTest(data.manifest, data.cohort, data.splits, data.fingerprint)
    real_test = data.partition_rows(0, 0, "test")
    assert np.array_equal(tuning.partition_rows(0, 0, "test"), data.partition_rows(0, 0, "val"))
    assert not set(tuning.partition_rows(0, 0, "test")) & set(real_test)
    assert np.array_equal(tuning.training_rows(0, 0, 0.5), data.training_rows(0, 0, 0.5))
    assert np.array_equal(
        tuning.pretraining_pool("unlabelled+train")[0], data.pretraining_pool("unlabelled+train")[0]
    )


@pytest.fixture(scope="module")
def tuned_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    overrides = ["tune.folds=[0,1]", "pretrain.max_epochs=1"]
    budget, files = run_tuning("simclr", out, "smoke", overrides, trials=2, log=lambda m: None)
    return out, budget, files


def test_tuning_on_the_smoke_profile_records_trials_budget_and_figures(tuned_study):
    out, budget, files = tuned_study
    assert (budget.complete, budget.pruned, budget.failed) == (2, 0, 0)
    assert budget.device == "cpu" and budget.hours > 0
    assert set(budget.best_params) == {"method.simclr.temperature", "method.simclr.pretrain.lr"}
    study = optuna.load_study(study_name="simclr-linear", storage=f"sqlite:///{out / 'tuning.db'}")
    for trial in study.trials:
        assert len(trial.user_attrs["fold_auprc"]) == 2
        assert trial.value == pytest.approx(np.mean(trial.user_attrs["fold_auprc"]))
        assert sorted(trial.intermediate_values) == [0, 1]
    assert budget.best_value == max(t.value for t in study.trials)
    names = {path.name for path in files}
    assert {"simclr-linear.json", "tuning_simclr-linear_history.png"} <= names
    assert "tuning_simclr-linear_importances.png" in names
    assert all(path.exists() for path in files)
    assert not list((out / "trials").rglob("encoder.pt"))  # trial folders are scratch space

    again, _ = run_tuning(
        "simclr", out, "smoke", ["tune.folds=[0,1]", "pretrain.max_epochs=1"], trials=2
    )
    assert (again.complete, again.hours) == (2, budget.hours)  # resumed: nothing re-run
    with pytest.raises(TuningError, match="other settings"):
        run_tuning("simclr", out, "smoke", ["tune.folds=[0]", "pretrain.max_epochs=1"], trials=3)


def test_a_run_takes_the_best_settings_and_states_every_budget(tuned_study):
    out, budget, _ = tuned_study
    url = f"sqlite:///{out / 'tuning.db'}"
    cfg = load_config("smoke", methods=["scratch", "simclr"])
    overrides, budgets = tuned_overrides(cfg, url)
    tuned = load_config("smoke", overrides, methods=["scratch", "simclr"])
    best = budget.best_params
    assert tuned.method.simclr.temperature == pytest.approx(best["method.simclr.temperature"])
    assert tuned.method.simclr.pretrain.lr == pytest.approx(best["method.simclr.pretrain.lr"])
    assert [b.method for b in budgets] == ["simclr"]

    path = record_budgets(out / "run", budgets, cfg.methods)
    records = json.loads(path.read_text())["methods"]
    assert [r["method"] for r in records] == ["scratch", "simclr"]
    table = budget_markdown(path)
    assert "| scratch | not tuned (defaults) | 0 |" in table
    assert "| simclr | simclr-linear | 2 / 0 / 0 |" in table

    with pytest.raises(TuningError, match="profile smoke.*uses quick"):
        tuned_overrides(load_config("quick", methods=["simclr"]), url)
    with pytest.raises(TuningError, match="no study of any method.*studies there: simclr-linear"):
        tuned_overrides(load_config("smoke", methods=["byol"]), url)

    assert record_budgets(out / "run", [], cfg.methods) is None
    assert not path.exists()  # a later untuned run must not claim tuning


def test_ssl3d_run_tuned_uses_the_study_and_reports_the_budget(tuned_study, capsys):
    out, budget, _ = tuned_study
    run = out / "tuned-run"
    main(
        [
            "run", "--profile", "smoke", "--methods", "scratch,simclr", "--out", str(run),
            "--tuned", f"sqlite:///{out / 'tuning.db'}",
            "finetune.protocols=[linear]", "pretrain.max_epochs=1",
        ]
    )  # fmt: skip
    settings = OmegaConf.load(run / "run.yaml")
    best = budget.best_params["method.simclr.temperature"]
    assert settings.method.simclr.temperature == pytest.approx(best)
    report = (run / "report.md").read_text()
    assert "## Tuning budget (ssl3d tune)" in report
    assert "| scratch | not tuned (defaults) |" in report
    assert (run / "tables" / "tuning.md").exists()
