"""The package layout holds what docs/architecture.md promises (the import layers themselves are
checked by import-linter in `make lint`)."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import benchmark
from benchmark import deprecated_paths

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_root_holds_at_most_twelve_modules():
    modules = sorted(path.name for path in Path(benchmark.__file__).parent.glob("*.py"))
    assert len(modules) <= 12, modules


def test_reporting_loads_no_training_code_lightning_or_optuna():
    heavy = ["pytorch_lightning", "lightning", "optuna", "benchmark.training.pretrain"]
    probe = (
        "import sys, benchmark.reporting.report, benchmark.reporting.figures; "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


@pytest.mark.parametrize("old", sorted(deprecated_paths.MOVED))
def test_an_old_module_path_is_the_new_module_with_a_deprecation_warning(old):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=deprecated_paths.MOVED[old].replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is importlib.import_module(deprecated_paths.MOVED[old])


FLAT_LAYOUT_PLUGIN = """
import torch
import torch.nn.functional as F

from benchmark.backbone import ResNet18
from benchmark.method import MethodConfigError, SSLMethod
from benchmark.pretrain import PretrainingContext
from benchmark.registry import register_method
from benchmark.testing import pretraining_losses


@register_method("flat_layout_plugin")
class FlatLayoutPlugin(SSLMethod):
    \"\"\"Predict each view's mean intensity (a plugin written for the flat layout).\"\"\"

    def __init__(self, backbone: ResNet18, settings, training):
        super().__init__(backbone, settings, training)
        if backbone.feature_dim <= 0:
            raise MethodConfigError("no features")
        self.head = torch.nn.Linear(backbone.feature_dim, 1)

    def prepare(self, context: PretrainingContext) -> None:
        assert context.unit.method == "flat_layout_plugin"
        assert int(context.config.data.size) == context.image_size

    def pretraining_loss(self, batch):
        view, _ = self.augment(batch["image"])
        target = view.mean(dim=(1, 2, 3, 4))[:, None]
        return {"loss": F.mse_loss(self.head(self.backbone(view)), target)}


print(len(pretraining_losses("flat_layout_plugin", steps=3)))
"""


def test_a_plugin_written_against_the_flat_layout_still_registers_and_trains(tmp_path):
    """The imports an external plugin of ssl3d 0.1 used keep working for one release."""
    script = tmp_path / "flat_layout_plugin.py"
    script.write_text(FLAT_LAYOUT_PLUGIN)
    done = subprocess.run(
        [sys.executable, "-W", "always::DeprecationWarning", str(script)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "3"
    assert "benchmark.backbone has moved to benchmark.nn.backbone" in done.stderr
    assert "PretrainingContext.config is deprecated" in done.stderr


def test_every_cited_document_is_in_the_repository():
    """Code and docs cite `docs/*.md` and upper-case notes (README.md ...) that must exist."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    cited = re.compile(r"(?<![\w/.-])(docs/[\w.-]+\.md|[A-Z][A-Z_]+\.md)\b")
    missing = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in {".py", ".md", ".yaml", ".tmpl", ".cfg"} or not path.is_file():
            continue
        for document in set(cited.findall(path.read_text(errors="replace"))):
            if not (ROOT / document).exists() and not (path.parent / document).exists():
                missing.append(f"{name} cites {document}")
    assert not missing, "\n".join(missing)
