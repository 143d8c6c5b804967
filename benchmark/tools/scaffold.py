"""``ssl3d new-method NAME``: a working plugin template, its YAML and its test."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from string import Template

from benchmark.errors import UserError
from benchmark.registry import available_methods


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def write_method_template(name: str, root: Path) -> list[Path]:
    """Write ``methods/NAME.py``, ``configs/methods/NAME.yaml`` and ``tests/test_method_NAME.py``
    under the repository ``root``; refuses to overwrite anything."""
    if not name.isidentifier() or name != name.lower():
        raise UserError(
            f"method name {name!r} must be a lower-case Python identifier, e.g. my_method"
        )
    if name in available_methods():
        raise UserError(f"a method called '{name}' is already registered; pick another name")
    if not (root / "methods").is_dir() or not (root / "configs" / "methods").is_dir():
        raise UserError(
            f"{root} is not the ssl3d repository root (no methods/ and configs/methods/)"
        )
    targets = {
        "method.py.tmpl": root / "methods" / f"{name}.py",
        "method.yaml.tmpl": root / "configs" / "methods" / f"{name}.yaml",
        "test_method.py.tmpl": root / "tests" / f"test_method_{name}.py",
    }
    existing = [str(path) for path in targets.values() if path.exists()]
    if existing:
        raise UserError(f"refusing to overwrite {', '.join(existing)}")
    templates = resources.files("benchmark.tools") / "templates"
    for template, target in targets.items():
        text = Template((templates / template).read_text())
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text.substitute(name=name, class_name=_class_name(name)))
    return list(targets.values())
