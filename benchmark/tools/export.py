"""``ssl3d export``: a pretrained encoder of a run folder as a shareable model folder.

Writes, for one finished pretraining unit of a method (docs/contracts.md, "Shared encoder"):
- ``model.safetensors``: the state dict of ``encoder.pt`` (MONAI's names, loads strictly into
  ``monai.networks.nets.ResNet``) in the safetensors format, which holds tensors only;
- ``config.json``: the MONAI constructor arguments, widths, input size and the preprocessing a
  volume needs before it enters the encoder, the method, its settings and the pretraining;
- ``README.md``: a model card with the method and its citation, the pretraining data and
  settings, the run's AUPRC table rows for the method (with CIs, when ``ssl3d report`` ran),
  how to load it in MONAI, and the licence.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from benchmark.errors import UserError
from benchmark.nn.backbone import (
    describe_backbone,
    load_encoder,
    resnet18_arguments,
    save_encoder_safetensors,
    stage_widths,
)
from benchmark.registry import get_method
from benchmark.results import read_json, versions, write_json_atomic
from benchmark.training.units import PretrainingUnit, method_hparams, pretraining_units

PREPROCESSING_STEPS = (
    "load the NIfTI file (nibabel) and reorient it to RAS+ (nib.as_closest_canonical)",
    "crop a `crop`-voxel cube around the centroid when the cohort gives one",
    "mirror axis 0 of right-side volumes when `mirror_right` is true",
    "clip to the `clip_percentiles` of the volume and rescale to [0, 1]",
    "resize trilinearly to `size`^3 and add a channel axis: [1, 1, size, size, size]",
)


# The columns of tables/auprc.csv the card shows (the CSV has every test's details).
RESULT_COLUMNS = (
    "protocol", "fraction", "mean", "std", "n", "ci_low", "ci_high", "reference", "difference",
    "p_bootstrap_holm",
)  # fmt: skip


class ExportError(UserError):
    """A run folder, method or unit that cannot be exported as asked."""


def export_encoder(
    run: str | Path,
    method: str,
    out: str | Path,
    seed: int | None = None,
    fold: int | None = None,
    fraction: float | None = None,
    license: str = "unspecified",
) -> list[Path]:
    """Write the shareable folder of ``method``'s encoder in run folder ``run``; returns its
    files. ``seed``/``fold``/``fraction`` choose among the units of fold- or fraction-scoped
    methods."""
    run, out = Path(run).absolute(), Path(out)
    if not (run / "run.yaml").is_file():
        raise ExportError(f"{run}: no run.yaml; give a folder written by `ssl3d run --out`")
    cfg = OmegaConf.load(run / "run.yaml")
    if method not in cfg.methods:
        raise ExportError(f"{run} did not run {method!r} (methods: {', '.join(cfg.methods)})")
    unit = _chosen_unit(pretraining_units(cfg, method, run), method, seed, fold, fraction)
    widths = stage_widths(float(cfg.backbone.width_multiplier))
    encoder = load_encoder(unit.encoder_path, widths)  # strict: a wrong file fails here
    record = read_json(unit.record_path) or {}
    config = _model_config(cfg, method, unit, widths, record)
    out.mkdir(parents=True, exist_ok=True)
    model = out / "model.safetensors"
    save_encoder_safetensors(encoder, model, {"format": "pt", "method": method})
    write_json_atomic(out / "config.json", config)
    card = out / "README.md"
    card.write_text(_model_card(run, config, license), encoding="utf-8")
    return [model, out / "config.json", card]


def _chosen_unit(
    units: list[PretrainingUnit], method: str, seed, fold, fraction
) -> PretrainingUnit:
    if not units:
        raise ExportError(f"{method} is not pretrained (it has no encoder to export)")
    chosen = [
        unit
        for unit in units
        if unit.encoder_path.is_file()
        and (seed is None or unit.seed in (None, seed))
        and (fold is None or unit.fold in (None, fold))
        and (fraction is None or unit.fraction is None or abs(unit.fraction - fraction) < 1e-9)
    ]
    if len(chosen) == 1:
        return chosen[0]
    finished = [unit.title for unit in units if unit.encoder_path.is_file()]
    if not chosen:
        raise ExportError(
            f"no finished {method} pretraining matches (finished: {', '.join(finished) or 'none'});"
            " run `ssl3d run` first, or choose another --seed/--fold/--fraction"
        )
    raise ExportError(
        f"{method} has {len(chosen)} matching pretrained encoders ({', '.join(finished)}); "
        "choose one with --seed, --fold and --fraction"
    )


def _model_config(
    cfg: DictConfig, method: str, unit: PretrainingUnit, widths: tuple[int, ...], record: dict
) -> dict:
    size = int(cfg.data.size)
    return {
        "architecture": "monai.networks.nets.ResNet",
        "monai_arguments": resnet18_arguments(widths),
        "backbone": describe_backbone(widths),
        "widths": list(widths),
        "feature_dim": widths[-1],
        "input_shape": [1, size, size, size],
        "preprocessing": {
            "size": size,
            "crop": int(cfg.data.crop),
            "clip_percentiles": list(cfg.data.clip_percentiles),
            "mirror_right": bool(cfg.data.mirror_right),
            "steps": list(PREPROCESSING_STEPS),
        },
        "method": method,
        "method_settings": OmegaConf.to_container(method_hparams(cfg, method), resolve=True),
        "pretraining": {
            "unit": unit.title,
            "settings": record.get("config", {}).get("pretrain"),
            "pool": record.get("pool"),
            "epochs": record.get("epochs"),
            "best_epoch": record.get("best_epoch"),
            "seconds": record.get("seconds"),
            "data": OmegaConf.to_container(cfg.data) if cfg.data.manifest else "ssl3d phantom",
            "phantom": None if cfg.data.manifest else OmegaConf.to_container(cfg.phantom),
            "profile": cfg.profile,
            "versions": record.get("versions"),
        },
        "exported_with": versions(),
    }


def _model_card(run: Path, config: dict, license: str) -> str:
    method = config["method"]
    cls = get_method(method)
    arguments = ", ".join(f"{k}={v!r}" for k, v in config["monai_arguments"].items())
    pretraining = config["pretraining"]
    settings = json.dumps(
        {"method": config["method_settings"], "pretrain": pretraining["settings"]}, indent=2
    )
    data = (
        f"the manifest `{pretraining['data']['manifest']}`"
        if isinstance(pretraining["data"], dict)
        else "the ssl3d phantom (synthetic sinus volumes): " + json.dumps(pretraining["phantom"])
    )
    return "\n".join(
        [
            f"# {method}: a pretrained 3D ResNet18 encoder (ssl3d)",
            "",
            f"- **Method**: {method}: {cls.summary()}",
            f"- **Citation**: {cls.reference or 'none given by the method'}",
            f"- **Backbone**: {config['backbone']}; input {config['input_shape']} per volume, "
            f"pooled feature of {config['feature_dim']}",
            f"- **Licence**: {license}",
            f"- **Made by**: ssl3d, run folder `{run}`, unit {pretraining['unit']}, profile "
            f"{pretraining['profile']}",
            "",
            "## Pretraining data and settings",
            "",
            f"Pretrained on {data}; pool: {pretraining['pool']}. Epochs: "
            f"{pretraining['epochs']} (best {pretraining['best_epoch']}), "
            f"{pretraining['seconds']} s.",
            "",
            "```json",
            settings,
            "```",
            "",
            "## Preprocessing (config.json)",
            "",
            *(f"{i}. {step}" for i, step in enumerate(config["preprocessing"]["steps"], 1)),
            "",
            "## Results of the run (tables/auprc.csv)",
            "",
            _results_table(run, method),
            "",
            "## Loading it in MONAI",
            "",
            "```python",
            "from monai.networks.nets import ResNet",
            "from safetensors.torch import load_file",
            "",
            f"encoder = ResNet({arguments})",
            'encoder.load_state_dict(load_file("model.safetensors"), strict=True)',
            "```",
            "",
            "`encoder(volume)` maps a preprocessed `[B, 1, S, S, S]` batch to pooled features. "
            "With ssl3d installed, `benchmark.nn.backbone.load_encoder(path, widths)` reads it.",
            "",
        ]
    )


def _results_table(run: Path, method: str) -> str:
    """The method's rows of the run's AUPRC table as Markdown, or why there are none."""
    path = run / "tables" / "auprc.csv"
    if not path.is_file():
        return f"No report yet: run `ssl3d report {run}` and export again to include results."
    table = pd.read_csv(path)
    columns = [name for name in RESULT_COLUMNS if name in table.columns]
    rows = table.loc[table["method"] == method, columns]
    if rows.empty:
        return f"{path} has no rows for {method}."
    header = "| " + " | ".join(rows.columns) + " |"
    rule = "|" + "---|" * len(rows.columns)
    lines = [
        "| " + " | ".join(_cell(value) for value in row) + " |"
        for row in rows.itertuples(index=False)
    ]
    caption = (
        f"AUPRC of {method} on the run's fixed test set per protocol and label fraction: mean "
        "and std over folds x seeds, ci_low-ci_high its bootstrap CI over test subjects, "
        "difference and Holm-adjusted paired-bootstrap p against the reference method."
    )
    return "\n".join([caption, "", header, rule, *lines])


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.4g}"
    return str(value)
