"""The report warns when a run folder's cells were made with different package versions."""

from benchmark.cli import main
from benchmark.reporting.versions import mixed_versions_warning
from benchmark.results import Cell, write_json_atomic

SAME = {"python": "3.11.7", "torch": "2.14.1", "monai": "1.5.0", "numpy": "2.3.0"}


def _write_cell(out, method, fold, versions):
    record = {
        "method": method,
        "protocol": "finetune",
        "fraction": 1.0,
        "fold": fold,
        "seed": 0,
        "status": "done",
        "prevalence": 0.5,
        "backbone": "3D ResNet18 (narrow), widths 8/8/16/32",
        "profile": "smoke",
        "config_hash": "x",
        "metrics": {"auprc": 0.6 + 0.1 * fold, "auroc": 0.5, "f1": 0.5},
        "versions": versions,
    }
    write_json_atomic(Cell(method, "finetune", 1.0, fold, 0).path(out), record)


def test_mixed_versions_are_named_with_their_cell_counts(tmp_path, capsys):
    newer = {**SAME, "torch": "2.15.0", "monai": "1.6.0"}
    for fold in range(3):
        _write_cell(tmp_path, "scratch", fold, SAME)
        _write_cell(tmp_path, "simclr", fold, newer if fold == 2 else SAME)
    main(["report", str(tmp_path), "--bootstrap", "10"])
    warning = "warning: the cells of this folder were made with different package versions"
    assert warning in capsys.readouterr().err
    report = (tmp_path / "report.md").read_text()
    assert report.index("## Warnings") < report.index("## Notes") < report.index("## AUPRC")
    assert "monai 1.5.0 (5 cells), 1.6.0 (1 cell); torch 2.14.1 (5 cells), 2.15.0 (1 cell)" in (
        report
    )
    assert "numpy" not in report.split("## Warnings")[1].split("##")[0]


def test_one_environment_gives_no_warning_and_a_missing_field_counts(tmp_path, capsys):
    records = [{"versions": SAME}, {"versions": dict(SAME)}]
    assert mixed_versions_warning(records) is None
    old_cell = {"method": "scratch"}  # written before cells recorded versions
    assert "torch 2.14.1 (2 cells), not recorded (1 cell)" in mixed_versions_warning(
        [*records, old_cell]
    )
    for fold in range(2):
        _write_cell(tmp_path, "scratch", fold, SAME)
    main(["report", str(tmp_path), "--bootstrap", "10"])
    assert "warning:" not in capsys.readouterr().err
    assert "## Warnings" not in (tmp_path / "report.md").read_text()
