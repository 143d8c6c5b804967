"""Fair tuning: optuna searches a method's declared space on validation partitions only.

``ssl3d tune --method M`` runs an optuna study over the ``search_space`` of the method's YAML
(``configs/methods/<name>.yaml``): a list of settings of the method's own section, each with a
range (``low``/``high``, optionally ``log``) or ``choices``; integer settings are sampled as
integers. A trial pretrains the method with the sampled settings and evaluates it with
``tune.protocol`` at ``tune.fraction`` on each fold of ``tune.folds``; its value is the mean
validation AUPRC. Intermediate means are reported after every fold, so the median pruner can
stop a trial that is behind after its first folds.

The test set is never looked at: a trial's data (``ValidationAsTest``) puts each fold's
validation partition where its test partition would be, so the protocols score validation
volumes only, while the pretraining pool stays exactly the pool of a real run (test subjects
never in it).

A study is kept in ``--storage`` (any SQLAlchemy URL; default a SQLite file in the tuning
folder), so many workers on many machines can share one study and a killed study resumes: its
trial budget (``--trials``) counts every finished trial, a trial whose process died is marked
failed after the heartbeat's grace period and retried once. Each trial records its wall time
and device, so ``ssl3d run --tuned STORAGE`` can state every method's tuning budget next to
its results, and take each tuned method's best settings.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from omegaconf import DictConfig, OmegaConf

from benchmark.config import config_hash, load_config
from benchmark.errors import UserError
from benchmark.evaluation.protocols import get_protocol
from benchmark.orchestration.lock import run_folder_lock
from benchmark.results import Cell, write_json_atomic
from benchmark.rundata import RunData, prepare_data
from benchmark.training.pretrain import run_pretraining
from benchmark.training.runtime import resolve_device
from benchmark.training.units import pretraining_units, unit_for

FINISHED = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.PRUNED,
    optuna.trial.TrialState.FAIL,
)
# Settings that decide what a study measures; a study is only resumed with the same ones.
STUDY_SECTIONS = ("data", "phantom", "splits", "backbone", "pretrain", "finetune", "probes")


class TuningError(UserError):
    """A search space, tuning setting or study that cannot be used as asked."""


@dataclass(frozen=True)
class Parameter:
    """One entry of a method's ``search_space``: a setting and the values optuna may give it."""

    setting: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None
    integer: bool = False

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.setting, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.setting, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.setting, float(self.low), float(self.high), log=self.log)


def search_space(cfg: DictConfig, method: str) -> list[Parameter]:
    """The checked ``search_space`` of a method (empty when it declares none).

    Only the method's own settings (``method.<name>.*``, its ``pretrain`` overrides included)
    may be tuned: the evaluation protocol is one for every method, which is what makes their
    results comparable.
    """
    entries = cfg.method[method].get("search_space")
    entries = OmegaConf.to_container(entries, resolve=True) if entries else []
    origin = f"method.{method}.search_space"
    space = []
    for index, entry in enumerate(entries):
        where = f"{origin}[{index}]"
        if not isinstance(entry, dict) or "setting" not in entry:
            raise TuningError(f"{where}: each entry needs `setting` and `low`/`high` or `choices`")
        unknown = set(entry) - {"setting", "low", "high", "log", "choices"}
        if unknown:
            raise TuningError(f"{where}: unknown key(s) {sorted(unknown)}")
        setting = str(entry["setting"])
        if not setting.startswith(f"method.{method}."):
            raise TuningError(
                f"{where}: '{setting}' is not a setting of method {method}; a search space may "
                f"only change method.{method}.* (the evaluation protocol is common to all methods)"
            )
        default = OmegaConf.select(cfg, setting, default=KeyError)
        if default is KeyError and setting.startswith(f"method.{method}.pretrain."):
            default = OmegaConf.select(cfg, setting.split(".", 2)[2])
        if default is KeyError:
            raise TuningError(f"{where}: '{setting}' is not a known setting")
        space.append(_parameter(entry, setting, default, where))
    return space


def _parameter(entry: dict, setting: str, default: Any, where: str) -> Parameter:
    if "choices" in entry:
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices:
            raise TuningError(f"{where}: `choices` must be a non-empty list")
        return Parameter(setting, choices=tuple(choices))
    if "low" not in entry or "high" not in entry:
        raise TuningError(f"{where}: give `low` and `high`, or `choices`")
    low, high, log = entry["low"], entry["high"], bool(entry.get("log", False))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise TuningError(f"{where}: `low` and `high` must be numbers")
    if not low < high:
        raise TuningError(f"{where}: `low` ({low}) must be below `high` ({high})")
    if log and low <= 0:
        raise TuningError(f"{where}: a log range needs `low` > 0, got {low}")
    integer = isinstance(default, int) and not isinstance(default, bool)
    return Parameter(setting, float(low), float(high), log, integer=integer)


def as_overrides(params: dict[str, Any]) -> list[str]:
    """``key=value`` command-line settings for a trial's (or a study's best) parameters."""
    return [f"{setting}={json.dumps(value)}" for setting, value in sorted(params.items())]


class ValidationAsTest(RunData):
    """Run data whose ``test`` partition of each fold is that fold's validation partition.

    The protocols score the ``test`` partition; given this data, they score validation
    volumes, and the real test subjects' labels and scores never enter a trial. Everything
    else (the pretraining pool, its leak check, the training subsets) is the real run's.
    """

    def partition_rows(self, seed: int, fold: int, partition: str) -> np.ndarray:
        return super().partition_rows(seed, fold, "val" if partition == "test" else partition)


@dataclass(frozen=True)
class TuningSetup:
    """What a study tunes: the method, the protocol and data it is judged on, the space."""

    method: str
    protocol: str
    fraction: float
    seed: int
    folds: tuple[int, ...]
    profile: str
    overrides: tuple[str, ...]
    space: tuple[Parameter, ...]
    out: Path

    @property
    def study_name(self) -> str:
        return study_name(self.method, self.protocol)


def study_name(method: str, protocol: str) -> str:
    """The study of a method tuned for a protocol (one per storage)."""
    return f"{method}-{protocol}"


def tuning_setup(
    cfg: DictConfig, method: str, out: Path, overrides: Sequence[str] = ()
) -> TuningSetup:
    """Checks the ``tune`` settings against the run's splits and the method's search space."""
    protocol = str(cfg.tune.protocol)
    get_protocol(protocol)
    fraction = float(cfg.tune.fraction)
    if not any(abs(fraction - float(f)) < 1e-9 for f in cfg.splits.fractions):
        raise TuningError(
            f"tune.fraction={fraction:g} is not one of splits.fractions "
            f"{list(cfg.splits.fractions)}; tune at a fraction the run evaluates"
        )
    folds = list(range(int(cfg.splits.folds))) if cfg.tune.folds is None else list(cfg.tune.folds)
    bad = [fold for fold in folds if not 0 <= int(fold) < int(cfg.splits.folds)]
    if bad or not folds:
        raise TuningError(
            f"tune.folds={folds}: give folds between 0 and {int(cfg.splits.folds) - 1} "
            "(or null for all)"
        )
    space = search_space(cfg, method)
    if not space:
        raise TuningError(
            f"method {method} declares no search_space in its YAML "
            f"(configs/methods/{method}.yaml); nothing to tune"
        )
    return TuningSetup(
        method=method,
        protocol=protocol,
        fraction=fraction,
        seed=int(cfg.splits.seeds[0]),
        folds=tuple(int(f) for f in folds),
        profile=str(cfg.profile),
        overrides=tuple(overrides),
        space=tuple(space),
        out=Path(out),
    )


def study_fingerprint(cfg: DictConfig, setup: TuningSetup) -> dict:
    """What a study's values depend on, apart from the parameters it searches."""
    sections = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in STUDY_SECTIONS}
    own = OmegaConf.to_container(cfg.method[setup.method], resolve=True)
    searched = {p.setting for p in setup.space}
    return {
        "method": setup.method,
        "protocol": setup.protocol,
        "fraction": setup.fraction,
        "seed": setup.seed,
        "folds": list(setup.folds),
        "profile": setup.profile,
        "space": [vars(p) for p in setup.space],
        "settings_hash": config_hash(
            {"sections": sections, "method": _without(own, searched, f"method.{setup.method}.")}
        ),
    }


def _without(section: dict, settings: set[str], prefix: str) -> dict:
    """``section`` with the searched settings (dotted, under ``prefix``) left out."""
    kept = json.loads(json.dumps(section))
    for setting in settings:
        *parents, leaf = setting[len(prefix) :].split(".")
        node = kept
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    return kept


def storage_url(out: Path, storage: str | None) -> str:
    """``--storage`` or the default: ``OUT/tuning.db`` (SQLite)."""
    return storage or f"sqlite:///{(Path(out) / 'tuning.db').resolve()}"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The study database, with heartbeats so a killed worker's trial is failed and retried."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=30,
                grace_period=120,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(1),
            )
    except Exception as error:  # SQLAlchemy raises many kinds for a bad URL
        raise TuningError(f"--storage {url}: cannot open it ({error})") from None


def open_study(
    storage: optuna.storages.RDBStorage,
    name: str,
    fingerprint: dict,
    sampler_seed: int = 0,
    pruner: str = "median",
    startup_trials: int = 3,
) -> optuna.Study:
    """Create the study or resume it; a study made with other settings is refused."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # ssl3d logs each trial once
    if pruner not in ("median", "none"):
        raise TuningError(f"tune.pruner must be median or none, got {pruner!r}")
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=startup_trials),
        pruner=(
            optuna.pruners.MedianPruner(n_startup_trials=startup_trials)
            if pruner == "median"
            else optuna.pruners.NopPruner()
        ),
    )
    stored = study.user_attrs.get("ssl3d")
    if stored is None:
        study.set_user_attr("ssl3d", fingerprint)
    elif stored != fingerprint:
        changed = sorted(k for k in fingerprint if stored.get(k) != fingerprint[k])
        raise TuningError(
            f"study '{name}' in {storage.url} was made with other settings ({', '.join(changed)} "
            "differ); resume it with the same settings, or use another --storage or --out"
        )
    return study


def optimise(study: optuna.Study, objective: Callable[[optuna.Trial], float], trials: int) -> int:
    """Run trials until the study has ``trials`` finished ones (complete, pruned or failed);
    returns how many this call ran. Failed trials count: they spent budget too."""
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    if finished >= trials:
        return 0
    study.optimize(
        objective,
        callbacks=[optuna.study.MaxTrialsCallback(trials, states=FINISHED)],
        catch=(RuntimeError, ValueError, FloatingPointError),
        gc_after_trial=True,
    )
    return len(study.get_trials(deepcopy=False, states=FINISHED)) - finished


def trial_objective(
    setup: TuningSetup, data: RunData, log: Callable[[str], None]
) -> Callable[[optuna.Trial], float]:
    """The objective: mean validation AUPRC of the sampled settings over the tuned folds."""
    validation_data = ValidationAsTest(data.manifest, data.cohort, data.splits, data.fingerprint)

    def objective(trial: optuna.Trial) -> float:
        params = {p.setting: p.suggest(trial) for p in setup.space}
        cfg = load_config(setup.profile, [*setup.overrides, *as_overrides(params)], [setup.method])
        device = resolve_device(cfg.runtime)
        trial.set_user_attr("device", device.type)
        directory = setup.out / "trials" / setup.study_name / f"trial{trial.number:04d}"
        started = time.perf_counter()
        scores = []
        try:
            units = pretraining_units(cfg, setup.method, directory)
            for step, fold in enumerate(setup.folds):
                unit = unit_for(units, setup.seed, fold, setup.fraction)
                encoder = run_pretraining(cfg, unit, data, log) if unit else None
                cell = Cell(setup.method, setup.protocol, setup.fraction, fold, setup.seed)
                workdir = directory / "work" / f"fold{fold}"
                result = get_protocol(setup.protocol)(cell, cfg, validation_data, encoder, workdir)
                scores.append(float(result["metrics"]["auprc"]))
                trial.report(float(np.mean(scores)), step)
                if trial.should_prune():
                    log(
                        f"trial {trial.number}: pruned after fold {fold} (mean validation "
                        f"AUPRC {np.mean(scores):.3f}, below the median) with {params}"
                    )
                    raise optuna.TrialPruned()
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
            trial.set_user_attr("fold_auprc", scores)
            shutil.rmtree(directory, ignore_errors=True)
        value = float(np.mean(scores))
        log(f"trial {trial.number}: validation AUPRC {value:.3f} with {params}")
        return value

    return objective


@dataclass
class Budget:
    """A study's effort and outcome, as the report states it."""

    study: str
    method: str
    protocol: str
    complete: int
    pruned: int
    failed: int
    hours: float
    device: str
    best_value: float | None
    best_params: dict[str, Any]

    @classmethod
    def of(cls, study: optuna.Study) -> Budget:
        trials = study.get_trials(deepcopy=False)
        counts = {state: sum(t.state == state for t in trials) for state in FINISHED}
        devices = sorted({t.user_attrs.get("device", "?") for t in trials}) or ["-"]
        complete = counts[optuna.trial.TrialState.COMPLETE]
        attrs = study.user_attrs.get("ssl3d", {})
        return cls(
            study=study.study_name,
            method=attrs.get("method", study.study_name),
            protocol=attrs.get("protocol", "?"),
            complete=complete,
            pruned=counts[optuna.trial.TrialState.PRUNED],
            failed=counts[optuna.trial.TrialState.FAIL],
            hours=sum(t.user_attrs.get("seconds", 0.0) for t in trials) / 3600,
            device="+".join(devices),
            best_value=study.best_value if complete else None,
            best_params=dict(study.best_params) if complete else {},
        )


def draw_study(study: optuna.Study, folder: Path) -> list[Path]:
    """``tuning_<study>_history.png`` and, with two or more complete trials,
    ``tuning_<study>_importances.png`` (fANOVA parameter importances)."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    folder.mkdir(parents=True, exist_ok=True)
    drawings = {"history": optuna_plots.plot_optimization_history}
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) >= 2 and len({json.dumps(t.params, sort_keys=True) for t in complete}) > 1:
        drawings["importances"] = optuna_plots.plot_param_importances
    files = []
    for kind, draw in drawings.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axis = draw(study)
        title = axis.get_title(loc="left") or axis.get_title()
        axis.set_title("")
        axis.set_title(f"{study.study_name}: {title}", loc="left")
        if kind == "history":
            axis.set_ylabel(f"mean validation AUPRC ({study.user_attrs['ssl3d']['protocol']})")
        path = folder / f"tuning_{study.study_name}_{kind}.png"
        axis.figure.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(axis.figure)
        files.append(path)
    return files


def run_tuning(
    method: str,
    out: Path,
    profile: str | None = None,
    overrides: Sequence[str] = (),
    trials: int | None = None,
    storage: str | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Budget, list[Path]]:
    """``ssl3d tune``: run (or resume) the study of ``method``; returns its budget and files."""
    out = Path(out)
    with run_folder_lock(out, f"ssl3d tune {method}", log):  # one writer per folder
        out.mkdir(parents=True, exist_ok=True)
        cfg = load_config(profile, overrides, [method])
        setup = tuning_setup(cfg, method, out, overrides)
        url = storage_url(out, storage)
        study = open_study(
            open_storage(url),
            setup.study_name,
            study_fingerprint(cfg, setup),
            int(cfg.tune.sampler_seed),
            str(cfg.tune.pruner),
            int(cfg.tune.startup_trials),
        )
        budget = int(trials if trials is not None else cfg.tune.trials)
        log(
            f"tuning {method} for the {setup.protocol} protocol at fraction {setup.fraction:g} on "
            f"the validation partitions of seed {setup.seed}, folds {list(setup.folds)}; "
            f"study '{setup.study_name}' in {url}"
        )
        data = prepare_data(cfg, out, log)
        ran = optimise(study, trial_objective(setup, data, log), budget)
        result = Budget.of(study)
        log(
            f"{ran} trial(s) run now; the study has {result.complete} complete, {result.pruned} "
            f"pruned and {result.failed} failed trial(s), {result.hours:.3f} {result.device}-hours"
        )
        files = draw_study(study, out / "figures")
        summary = out / "tuning" / f"{setup.study_name}.json"
        write_json_atomic(summary, {"storage": url, **vars(result)})
        return result, [summary, *files]


def tuned_overrides(cfg: DictConfig, storage: str) -> tuple[list[str], list[Budget]]:
    """``ssl3d run --tuned STORAGE``: the best settings of every method of the run that has a
    study for ``tune.protocol`` in the storage, and the budget of each such study.

    A study tuned on another profile or label fraction than the run's is refused.
    """
    protocol = str(cfg.tune.protocol)
    database = open_storage(storage)
    names = set(optuna.get_all_study_names(storage=database))
    overrides, budgets = [], []
    for method in cfg.methods:
        name = study_name(method, protocol)
        if name not in names:
            continue
        study = optuna.load_study(study_name=name, storage=database)
        attrs = study.user_attrs.get("ssl3d", {})
        if attrs.get("profile") != cfg.profile:
            raise TuningError(
                f"study '{name}' in {storage} was tuned on profile {attrs.get('profile')}, but "
                f"this run uses {cfg.profile}; tune on the run's profile"
            )
        budget = Budget.of(study)
        if budget.complete == 0:
            raise TuningError(f"study '{name}' in {storage} has no complete trial yet")
        overrides += as_overrides(budget.best_params)
        budgets.append(budget)
    if not budgets:
        raise TuningError(
            f"--tuned {storage}: no study of any method of this run for the {protocol} protocol "
            f"(studies there: {', '.join(sorted(names)) or 'none'}); run `ssl3d tune` first"
        )
    return overrides, budgets


def record_budgets(out: Path, budgets: list[Budget], methods: Sequence[str]) -> Path | None:
    """``OUT/tuning.json``: every method's tuning budget (untuned methods with none); a run
    without tuned settings removes an earlier run's file, so the report never claims tuning."""
    path = Path(out) / "tuning.json"
    if not budgets:
        path.unlink(missing_ok=True)
        return None
    tuned = {b.method: vars(b) for b in budgets}
    records = [tuned.get(m, {"method": m, "study": None}) for m in methods]
    write_json_atomic(path, {"methods": records})
    return path
