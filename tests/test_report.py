"""scripts/report.py: a study's table with its over-all row, and two studies sharing one README."""

import importlib.util
import statistics
import sys

from conftest import ROOT

spec = importlib.util.spec_from_file_location("report", ROOT / "scripts" / "report.py")
report = importlib.util.module_from_spec(spec)
sys.modules["report"] = report  # its dataclasses look their module up
spec.loader.exec_module(report)


def _study(**kw):
    return report.Study("one_class_anomaly", "t", "repro_anomaly", "anomaly/auroc", "p", None, "cmd",
                        rows=["data.normal_class"], **kw)


def test_the_over_all_row_is_the_mean_and_std_of_every_run():
    import json

    values = [json.loads(p.read_text())["anomaly/auroc"]
              for p in (ROOT / "results" / "repro_anomaly").rglob("summary.json")]
    block = report.study_block(_study(over_all=True))
    row = next(line for line in block.splitlines() if line.startswith("| **all 10**"))
    assert row == (f"| **all 10** | {report.fmt(statistics.mean(values))} ± "
                   f"{report.fmt(statistics.stdev(values), 2)} ({len(values)}) |")
    assert "**all" not in report.study_block(_study())


def test_a_study_sharing_a_readme_writes_only_its_own_block(tmp_path):
    first, second = _study(), _study(readme="one_class_anomaly")
    second.key = "other"
    assert first.begin == report.BEGIN and second.begin == report.BEGIN.replace(" -->", " other -->")
    path = tmp_path / "README.md"
    path.write_text(f"# x\n\n{first.begin}\nold 1\n{report.END}\n\ntext\n\n"
                    f"{second.begin}\nold 2\n{report.END}\n")
    report.replace_block(path, f"{second.begin}\nnew 2\n{report.END}", second.begin)
    report.replace_block(path, f"{first.begin}\nnew 1\n{report.END}", first.begin)
    assert path.read_text() == (f"# x\n\n{first.begin}\nnew 1\n{report.END}\n\ntext\n\n"
                                f"{second.begin}\nnew 2\n{report.END}\n")
