"""Settings: YAML defaults, a profile, per-method files and `key=value` overrides (OmegaConf).

Order of precedence (later wins): ``configs/defaults.yaml``, every method's
``configs/methods/<name>.yaml`` placed under ``method.<name>``, the profile
``configs/profiles/<profile>.yaml``, then command-line overrides. Profiles and overrides may
change values but never add keys, so a typo is an error naming the key instead of a silently
ignored setting.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from benchmark.datasets.views import PRESETS
from benchmark.errors import UserError
from benchmark.registry import available_methods, method_config_file


class ConfigError(UserError):
    """An unknown profile, an unknown key or a value of the wrong type."""


def configs_root():
    """The installed ``configs/`` folder (mapped to the package ``benchmark.configs``)."""
    return resources.files("benchmark.configs")


def available_profiles() -> list[str]:
    """Names of the profiles shipped in ``configs/profiles``."""
    folder = configs_root() / "profiles"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def default_profile() -> tuple[str, str]:
    """``paper`` on a machine with a GPU, ``quick`` otherwise, and the reason for the choice."""
    if torch.cuda.is_available():
        return "paper", f"a GPU is present ({torch.cuda.get_device_name(0)})"
    return "quick", "no GPU found; the quick profile is the CPU-sized grid"


def _read_yaml(source, origin: str) -> DictConfig:
    try:
        loaded = OmegaConf.create(source.read_text())
    except OmegaConfBaseException as error:
        raise ConfigError(f"{origin}: not valid YAML ({error})") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{origin}: expected a mapping of settings at the top level")
    return loaded


def base_config() -> DictConfig:
    """Defaults plus the YAML of every registered method, frozen against new keys."""
    base = _read_yaml(configs_root() / "defaults.yaml", "configs/defaults.yaml")
    for name, method in available_methods().items():
        path = method_config_file(name, method)
        section = _read_yaml(path, str(path)) if path is not None else OmegaConf.create({})
        unknown = set(section.get("pretrain", {}) or {}) - set(base.pretrain)
        if unknown:
            raise ConfigError(
                f"{path}: unknown pretraining setting(s) {sorted(unknown)} under `pretrain`; "
                f"known: {sorted(base.pretrain)}"
            )
        section.pretrain = section.get("pretrain") or {}
        base.method[name] = section
    OmegaConf.set_struct(base, True)
    _open_view_sections(base)
    for name in base.method:
        OmegaConf.set_struct(base.method[name].pretrain, False)
    return base


def _open_view_sections(node: DictConfig) -> None:
    """Let ``views`` mappings take any key; the views module validates their names."""
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            if key == "views":
                OmegaConf.set_struct(child, False)
            else:
                _open_view_sections(child)


def _global_default(key: str) -> str | None:
    """``method.<name>.pretrain.<k>`` is checked against the global ``pretrain.<k>``."""
    parts = key.split(".")
    if len(parts) == 4 and parts[0] == "method" and parts[2] == "pretrain":
        return f"pretrain.{parts[3]}"
    return None


def _parse_overrides(overrides: Iterable[str]) -> DictConfig:
    items = list(overrides)
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ConfigError(
                f"command-line setting {item!r} is not of the form key=value "
                "(for example finetune.lr=3e-4)"
            )
    try:
        return OmegaConf.from_dotlist(items)
    except OmegaConfBaseException as error:
        raise ConfigError(f"command-line settings {items}: {error}") from None


def setting_leaves(node: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, value) for every setting below ``node`` (a plain dict or a DictConfig)."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node)
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from setting_leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def _is_view_setting(key: str) -> bool:
    """View settings are free-form here and validated by the views module, which knows them."""
    return "views" in key.split(".")[:-1]


def _explain_unknown_key(base: DictConfig, key: str, origin: str) -> ConfigError:
    parent, _, leaf = key.rpartition(".")
    siblings = OmegaConf.select(base, parent) if parent else base
    known = sorted(siblings) if isinstance(siblings, DictConfig) else []
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f" Did you mean '{parent + '.' if parent else ''}{close[0]}'?" if close else ""
    where = f"under '{parent}'" if parent else "at the top level"
    return ConfigError(
        f"unknown setting '{key}' ({origin}).{hint} Known settings {where}: {', '.join(known)}"
    )


def _merge(base: DictConfig, layer: DictConfig, origin: str) -> DictConfig:
    """``layer`` over ``base``; a key ``base`` lacks, or a value of another type, is an error."""
    missing = object()
    for key, value in setting_leaves(layer):
        if _is_view_setting(key):
            continue
        default = OmegaConf.select(base, _global_default(key) or key, default=missing)
        if default is missing:
            raise _explain_unknown_key(base, key, origin)
        if not _same_kind(key, default, value):
            raise ConfigError(
                f"setting '{key}' ({origin}) must be {_kind(default)} like its default "
                f"{default!r}, got {value!r}"
            )
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{origin}: {error}") from None


# Integer settings that Ray also accepts as fractions of a GPU or CPU.
FRACTIONAL_COUNTS = ("executor.pretrain_gpus", "executor.cell_gpus")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple, ListConfig)):
        return "a list"
    return "a mapping"


def _same_kind(key: str, default: Any, value: Any) -> bool:
    """Whole numbers replace whole numbers (``batch_size=2.5`` is refused, not truncated),
    numbers numbers, text text, lists lists; null goes anywhere.

    Two settings take two kinds: ``methods`` (the text ``all`` or a list of names) and
    ``runtime.precision`` (``auto``, ``bf16-mixed``... or the number 32).
    """
    if default is None or value is None or default == "all":
        return True
    kinds = {_kind(default), _kind(value)}
    if kinds == {"a number", "a whole number"}:
        return _kind(default) == "a number" or key in FRACTIONAL_COUNTS
    return len(kinds) == 1 or (key == "runtime.precision" and kinds == {"text", "a whole number"})


def _whole(low: int, high: float = math.inf) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _number(low: float, high: float, low_open: bool = False, high_open: bool = False):
    def check(value: Any) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        return (low < value if low_open else low <= value) and (
            value < high if high_open else value <= high
        )

    return check


def _one_of(*choices: Any) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), "one of " + ", ".join(str(c) for c in choices)


def _non_empty_list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (list, ListConfig)) and len(v) > 0 and all(map(check, v))


def _ordered_percentiles(value: Any) -> bool:
    pair = isinstance(value, (list, ListConfig)) and len(value) == 2
    return pair and all(map(_number(0, 100), value)) and value[0] < value[1]


def _distinct(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: _non_empty_list_of(check)(v) and len(set(v)) == len(v)


# What each setting may hold beyond its type, checked whenever settings are built, so a bad
# value is refused with its name before anything runs. Per-method `pretrain` overrides are
# checked with the `pretrain.*` rules. Method hyper-parameters are the methods' own checks.
SETTING_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.size": (_whole(8), "a whole number of voxels >= 8"),
    "data.crop": (_whole(1), "a whole number of voxels >= 1"),
    "data.clip_percentiles": (_ordered_percentiles, "two percentiles 0-100, low before high"),
    "data.on_bad_rows": _one_of("error", "exclude"),
    "data.allow_small_volumes": _one_of(True, False),
    "data.workers": (lambda v: v is None or _whole(1)(v), "null (all cores) or >= 1"),
    "phantom.labelled": (_whole(4), "a whole number of subjects >= 4"),
    "phantom.unlabelled": (_whole(0), "a whole number of subjects >= 0"),
    "phantom.size": (_whole(8), "a whole number of voxels >= 8"),
    "phantom.prevalence": (_number(0, 1, True, True), "a share between 0 and 1 (exclusive)"),
    "phantom.difficulty": (_number(0, 1), "a number from 0 (easy) to 1 (hard)"),
    "phantom.layout": _one_of("sinus", "head"),
    "phantom.test_subjects": (lambda v: v is None or _whole(2)(v), "null or a count >= 2"),
    "splits.test_mode": _one_of("fixed", "rotating"),
    "splits.test": (_number(0, 1, True, True), "a share of subjects between 0 and 1"),
    "splits.test_subjects": (lambda v: v is None or _whole(2)(v), "null or a count >= 2"),
    "splits.folds": (
        _whole(1),
        "a whole number of folds >= 1 (a split file of one fold, e.g. MedMNIST's official split; at least 2 to make splits)",
    ),
    "splits.seeds": (_distinct(_whole(0)), "a non-empty list of distinct whole numbers >= 0"),
    "splits.fractions": (
        _distinct(_number(0, 1, low_open=True)),
        "a non-empty list of distinct label fractions in (0, 1]",
    ),
    "backbone.width_multiplier": (_number(0, 16, low_open=True), "a number > 0 (1 = ResNet18)"),
    "pretrain.pool": _one_of("unlabelled", "unlabelled+train"),
    "pretrain.val_fraction": (_number(0, 1, high_open=True), "a share from 0 to below 1"),
    "pretrain.max_epochs": (_whole(1), "a whole number of epochs >= 1"),
    "pretrain.max_steps": (lambda v: v == -1 or _whole(1)(v), "-1 (no cap) or a number >= 1"),
    "pretrain.patience": (_whole(0), "a whole number of epochs >= 0 (0 = off)"),
    "pretrain.batch_size": (_whole(2), "a whole number of volumes >= 2"),
    "pretrain.lr": (_number(0, math.inf, low_open=True), "a learning rate > 0"),
    "pretrain.weight_decay": (_number(0, math.inf), "a number >= 0"),
    "pretrain.momentum": (_number(0, 1, high_open=True), "a number from 0 to below 1"),
    "pretrain.warmup_epochs": (_whole(0), "a whole number of epochs >= 0"),
    "pretrain.export": _one_of("last", "best"),
    "finetune.protocols": (
        _distinct(lambda v: isinstance(v, str) and bool(v)),
        "a non-empty list of protocol names (ssl3d methods lists them), e.g. [linear, knn]",
    ),
    "finetune.max_epochs": (_whole(1), "a whole number of epochs >= 1"),
    "finetune.patience": (_whole(0), "a whole number of epochs >= 0"),
    "finetune.batch_size": (_whole(2), "a whole number of volumes >= 2"),
    "finetune.lr": (_number(0, math.inf, low_open=True), "a learning rate > 0"),
    "finetune.head_hidden": (_whole(1), "a whole number of units >= 1"),
    "finetune.localisation.stage": (_whole(1, 4), "a ResNet stage from 1 to 4"),
    "finetune.encoder": (
        lambda v: v is None or (isinstance(v, str) and bool(v)),
        "null or the path of an encoder file (.safetensors or .pt)",
    ),
    "finetune.allow_pickle": (lambda v: isinstance(v, bool), "true or false"),
    "probes.linear.C": (
        _non_empty_list_of(_number(0, math.inf, low_open=True)),
        "a non-empty list of inverse strengths > 0",
    ),
    "probes.linear.max_iter": (_whole(1), "a whole number >= 1"),
    "probes.knn.k": (_whole(1), "a whole number of neighbours >= 1"),
    "probes.knn.metric": _one_of("cosine", "euclidean"),
    "probes.knn.weights": _one_of("uniform", "distance"),
    "runtime.device": _one_of("auto", "cpu", "cuda"),
    "runtime.precision": _one_of("auto", 32, "32", "bf16-mixed", "16-mixed"),
    "runtime.cohort_on_device": _one_of("auto", "always", "never"),
    "runtime.threads": (lambda v: v is None or _whole(1)(v), "null or a whole number >= 1"),
    "runtime.devices": (_whole(1), "a whole number >= 1"),
    "runtime.num_nodes": (_whole(1), "a whole number >= 1"),
    "runtime.logger": _one_of("none", "csv", "tensorboard", "mlflow"),
    "executor.max_retries": (_whole(0), "a whole number >= 0"),
    "tune.trials": (_whole(1), "a whole number >= 1"),
}


def validate_settings(cfg: DictConfig) -> None:
    """Refuse the first setting outside its range (``SETTING_RULES``), naming it."""
    checks = [(key, OmegaConf.select(cfg, key), rule) for key, rule in SETTING_RULES.items()]
    for method in cfg.methods:
        own = cfg.method[method].get("pretrain")
        own = OmegaConf.to_container(own, resolve=True) if own else {}
        for key, value in setting_leaves(own, "pretrain."):
            if key in SETTING_RULES:
                checks.append((f"method.{method}.{key}", value, SETTING_RULES[key]))
    for key, value, (check, allowed) in checks:
        if not check(value):
            raise ConfigError(f"setting '{key}' must be {allowed}; got {value!r}")


def load_config(
    profile: str | None = None,
    overrides: Sequence[str] = (),
    methods: Sequence[str] | None = None,
) -> DictConfig:
    """The resolved settings of a run: defaults, methods, profile, overrides (later wins).

    ``profile=None`` picks ``paper`` when a GPU is present and ``quick`` otherwise; the choice
    and its reason are stored in ``profile`` and ``profile_reason`` is printed by the CLI.
    ``methods`` (names) replaces the ``methods`` setting.
    """
    base = base_config()
    reason = "chosen on the command line"
    if profile is None:
        profile, reason = default_profile()
    if profile not in available_profiles():
        raise ConfigError(
            f"unknown profile '{profile}'; known profiles: {', '.join(available_profiles())}"
        )
    profile_file = configs_root() / "profiles" / f"{profile}.yaml"
    cfg = _merge(base, _read_yaml(profile_file, str(profile_file)), f"profile {profile}")
    cfg = _merge(cfg, _parse_overrides(overrides), "command line")
    OmegaConf.set_struct(cfg, False)
    cfg.profile = profile
    cfg.profile_reason = reason
    if methods is not None:
        cfg.methods = list(methods)
    cfg.methods = selected_methods(cfg)
    _apply_common_views(cfg)
    OmegaConf.set_struct(cfg, True)
    validate_settings(cfg)
    return cfg


def _apply_common_views(cfg: DictConfig) -> None:
    """``pretrain.views_preset`` (null: each method's own views): every method that draws views
    pretrains with that one preset instead of its ``views`` section, so a comparison can hold
    the augmentations fixed (issue 22, item 6). A method's own ``pretrain.views_preset`` wins."""
    for name in cfg.method:
        preset = pretraining_settings(cfg, name).get("views_preset")
        if preset is None or "views" not in cfg.method[name]:
            continue
        if preset not in PRESETS.names():
            raise ConfigError(
                f"pretrain.views_preset={preset!r} (for {name}) is not a views preset; choose "
                f"one of {', '.join(PRESETS.names())}, or null for each method's own views"
            )
        cfg.method[name].views = {"preset": preset}


def selected_methods(cfg: DictConfig) -> list[str]:
    """The method names a run covers, validated against the registry. ``all`` includes the
    methods that evaluate a shared encoder (``external``) only when ``finetune.encoder`` names
    one."""
    known = available_methods()
    chosen = cfg.methods
    encoder = cfg.finetune.encoder
    if chosen == "all":
        names = [name for name, cls in known.items() if encoder or not cls.shared_encoder]
    else:
        names = [chosen] if isinstance(chosen, str) else list(chosen)
    if not names:
        raise ConfigError("no methods chosen (--methods or methods=[]); name at least one, or all")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(
            f"unknown method(s) {', '.join(unknown)}; known methods: {', '.join(sorted(known))}"
        )
    sharing = [name for name in names if known[name].shared_encoder]
    if sharing and not encoder:
        raise ConfigError(
            f"{sharing[0]} evaluates the encoder file that finetune.encoder names, and it is "
            f"null; add finetune.encoder=PATH (a model.safetensors of `ssl3d export`)"
        )
    if encoder and not sharing:
        shared = [name for name, cls in known.items() if cls.shared_encoder]
        raise ConfigError(
            f"finetune.encoder={encoder} is evaluated by the {' or '.join(shared)} method only, "
            f"which the run does not include; add it to --methods, or set finetune.encoder=null"
        )
    return names


def pretraining_settings(cfg: DictConfig, method: str) -> DictConfig:
    """The global ``pretrain`` section with the method's own ``pretrain`` overrides applied."""
    own = cfg.method[method].get("pretrain") or {}
    return OmegaConf.merge(cfg.pretrain, own)


def method_hparams(cfg: DictConfig, method: str) -> DictConfig:
    """A method's own hyper-parameters (its YAML without the ``pretrain`` overrides and the
    ``search_space`` that ``ssl3d tune`` reads)."""
    section = OmegaConf.to_container(cfg.method[method], resolve=True)
    section.pop("pretrain", None)
    section.pop("search_space", None)
    return OmegaConf.create(section)


def config_hash(settings: Any) -> str:
    """A stable 16-hex-digit fingerprint of settings (mappings, lists, numbers, strings)."""
    if isinstance(settings, (DictConfig, ListConfig)):
        settings = OmegaConf.to_container(settings, resolve=True)
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (identifies a manifest in result fingerprints)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
