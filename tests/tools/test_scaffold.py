"""`ssl3d new-method` writes a plugin that works as written: it registers, learns and runs."""

import importlib.util
import sys

import pytest

from benchmark import registry
from benchmark.cli import main
from benchmark.errors import UserError
from benchmark.testing import pretrain_briefly
from benchmark.tools.scaffold import write_method_template


@pytest.fixture
def scaffolded(tmp_path, monkeypatch):
    for folder in ("methods", "configs/methods", "tests"):
        (tmp_path / folder).mkdir(parents=True)
    main(["new-method", "my_rotations", "--root", str(tmp_path)])
    spec = importlib.util.spec_from_file_location(
        "my_rotations", tmp_path / "methods" / "my_rotations.py"
    )
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(registry, "METHODS", registry.METHODS.copy())
    spec.loader.exec_module(module)
    cls = registry.get_method("my_rotations")
    monkeypatch.setattr(
        cls, "config_file", str(tmp_path / "configs" / "methods" / "my_rotations.yaml")
    )
    yield tmp_path
    sys.modules.pop("my_rotations", None)


def test_template_files_are_written(scaffolded):
    assert (scaffolded / "tests" / "test_method_my_rotations.py").read_text().count(
        "my_rotations"
    ) >= 3
    assert "hidden_dim" in (scaffolded / "configs" / "methods" / "my_rotations.yaml").read_text()


def test_template_method_learns_its_pretext_task(scaffolded):
    result = pretrain_briefly("my_rotations", steps=40)
    early, late = sum(result.losses[:8]) / 8, sum(result.losses[-8:]) / 8
    assert late < early


def test_existing_names_and_files_are_refused(tmp_path):
    with pytest.raises(UserError, match="already registered"):
        write_method_template("simclr", tmp_path)
    with pytest.raises(UserError, match="lower-case Python identifier"):
        write_method_template("My-Method", tmp_path)
    with pytest.raises(UserError, match="not the ssl3d repository root"):
        write_method_template("fresh_name", tmp_path)
