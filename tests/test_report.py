"""scripts/report.py: a study beside its reference code's own seeded runs."""

import importlib.util
import json
import sys
from pathlib import Path

from scipy import stats

ROOT = Path(__file__).resolve().parent.parent


def _report():
    spec = importlib.util.spec_from_file_location("report", ROOT / "scripts" / "report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["report"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def _runs(root: Path, values, status="finished"):
    for seed, v in enumerate(values):
        d = root / f"seed={seed}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"status": status, "test/mse": v,
                                                     "time/epoch_seconds": 2.0}))


def test_reference_lines_list_both_spreads_and_welch_test(tmp_path, monkeypatch):
    report = _report()
    ours, theirs = [0.0072, 0.0074, 0.0073], [0.0068, 0.0069, 0.0067, 0.0068]
    _runs(tmp_path / "results" / "mine", ours)
    _runs(tmp_path / "results" / "ref", theirs)
    _runs(tmp_path / "results" / "ref_failed", [0.5], status="failed")
    monkeypatch.setattr(report, "ROOT", tmp_path)
    assert report.seed_values(tmp_path / "results" / "ref_failed", "test/mse") == []
    study = report.Study("s", "t", "mine", "test/mse", "0.0068", 0.0068, "cmd",
                         reference=report.Reference("ref", "their code", "their cmd"))
    text = "\n".join(report.reference_lines(study))
    assert "0.0072, 0.0074, 0.0073 |" in text and "0.0068, 0.0069, 0.0067, 0.0068 |" in text
    p = stats.ttest_ind(ours, theirs, equal_var=False).pvalue
    assert f"p = {p:.3g}" in text and p < 0.05
    assert "their cmd" in text


def test_reference_not_run_says_how(tmp_path, monkeypatch):
    report = _report()
    monkeypatch.setattr(report, "ROOT", tmp_path)
    study = report.Study("s", "t", "mine", "test/mse", "x", 1.0, "cmd",
                         reference=report.Reference("absent", "their code", "their cmd"))
    assert "not run yet; `their cmd`" in report.reference_lines(study)[0]
