"""Tables and figures from cell files, including failed cells."""

import pandas as pd
import pytest

from benchmark.report import EmptyReportError, write_report
from benchmark.results import Cell, write_json_atomic


def _write_cell(out, method, fraction, fold, auprc, status="done"):
    record = {
        "method": method,
        "protocol": "finetune",
        "fraction": fraction,
        "fold": fold,
        "seed": 0,
        "status": status,
        "prevalence": 0.5,
        "backbone": "3D ResNet18 (narrow), widths 8/8/16/32",
        "profile": "smoke",
        "config_hash": "x",
    }
    if status == "done":
        record["metrics"] = {"auprc": auprc, "auroc": 0.5, "f1": 0.5}
    else:
        record["error"] = "pretraining failed: NonFiniteLossError"
    write_json_atomic(Cell(method, "finetune", fraction, fold, 0).path(out), record)


def test_report_tables_and_figure(tmp_path):
    for fold, (a, b) in enumerate([(0.6, 0.7), (0.8, 0.9)]):
        _write_cell(tmp_path, "scratch", 0.5, fold, a)
        _write_cell(tmp_path, "simclr", 0.5, fold, b)
        _write_cell(tmp_path, "scratch", 1.0, fold, b)
    _write_cell(tmp_path, "simclr", 1.0, 0, None, status="failed")

    report = write_report(tmp_path)
    table = pd.read_csv(tmp_path / "tables" / "auprc.csv")
    assert list(table.columns[:5]) == ["method", "fraction", "mean", "std", "n"]
    simclr_half = table[(table.method == "simclr") & (table.fraction == 0.5)].iloc[0]
    assert simclr_half["mean"] == pytest.approx(0.8) and simclr_half["n"] == 2
    assert simclr_half["std"] == pytest.approx(pd.Series([0.7, 0.9]).std(), abs=1e-6)
    failed = table[(table.method == "simclr") & (table.fraction == 1.0)].iloc[0]
    assert failed["n"] == 0 and failed["failed"] == 1 and pd.isna(failed["mean"])

    markdown = (tmp_path / "tables" / "auprc.md").read_text()
    assert "**0.800 ± 0.141**" in markdown  # best of its column in bold
    assert "| simclr | **0.800 ± 0.141** | failed |" in markdown
    assert "profile smoke" in markdown and "widths 8/8/16/32" in markdown
    latex = (tmp_path / "tables" / "auprc.tex").read_text()
    assert "\\toprule" in latex and "\\textbf{0.800 $\\pm$ 0.141}" in latex
    assert (tmp_path / "figures" / "auprc_vs_fraction.png").stat().st_size > 10_000
    assert report.markdown == markdown


def test_report_of_an_empty_folder_says_what_to_do(tmp_path):
    with pytest.raises(EmptyReportError, match="run `ssl3d run --out"):
        write_report(tmp_path)
