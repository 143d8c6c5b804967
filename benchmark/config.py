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
from collections.abc import Iterable, Sequence
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
        if not _same_kind(default, value):
            raise ConfigError(
                f"setting '{key}' ({origin}) must be {_kind(default)} like its default "
                f"{default!r}, got {value!r}"
            )
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{origin}: {error}") from None


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple, ListConfig)):
        return "list"
    return "mapping"


def _same_kind(default: Any, value: Any) -> bool:
    """Numbers replace numbers, text text, lists lists; null goes anywhere.

    The one setting that takes two kinds is ``methods``: the text ``all`` or a list of names.
    """
    if default is None or value is None or default == "all":
        return True
    return _kind(default) == _kind(value)


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
    """The method names a run covers, validated against the registry."""
    known = available_methods()
    chosen = cfg.methods
    names = (
        list(known) if chosen == "all" else [chosen] if isinstance(chosen, str) else list(chosen)
    )
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(
            f"unknown method(s) {', '.join(unknown)}; known methods: {', '.join(sorted(known))}"
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
