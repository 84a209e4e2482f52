"""scripts/report.py: a study's table with its over-all row, two studies sharing one README, and a
study beside its reference code's own seeded runs."""

import importlib.util
import json
import statistics
import sys
from pathlib import Path

from conftest import ROOT
from scipy import stats

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


def test_the_over_all_row_of_a_sweep_in_progress_says_how_many_rows_it_covers(tmp_path, monkeypatch):
    for c, status in ((0, "finished"), (1, "running")):
        d = tmp_path / "results" / "sweep" / f"data.normal_class={c},seed=0"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"status": status, "anomaly/auroc": 0.9}))
        (d / ".hydra").mkdir()
        (d / ".hydra" / "config.yaml").write_text(f"data:\n  normal_class: {c}\nseed: 0\n")
    monkeypatch.setattr(report, "ROOT", tmp_path)
    study = report.Study("x", "t", "sweep", "anomaly/auroc", "p", None, "cmd", rows=["data.normal_class"],
                         over_all=True)
    block = report.study_block(study)
    assert "| **all runs: 1 of 2 rows** | 0.9 (1) |" in block, block


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


def _runs(root: Path, values, status="finished"):
    for seed, v in enumerate(values):
        d = root / f"seed={seed}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"status": status, "test/mse": v,
                                                     "time/epoch_seconds": 2.0}))


def test_reference_lines_list_both_spreads_and_welch_test(tmp_path, monkeypatch):
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
    monkeypatch.setattr(report, "ROOT", tmp_path)
    study = report.Study("s", "t", "mine", "test/mse", "x", 1.0, "cmd",
                         reference=report.Reference("absent", "their code", "their cmd"))
    assert "not run yet; `their cmd`" in report.reference_lines(study)[0]


def _named_run(run_dir: Path, name: str, summary: dict, epochs=()):
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(f"name: {name}\n")
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))


def test_a_table_of_published_rows_shows_each_finished_in_progress_or_not_run(tmp_path, monkeypatch):
    _named_run(tmp_path / "results" / "table" / "a", "a", {"status": "finished", "test/nll": 228.5,
                                                           "time/epoch_seconds": 2.0})
    _named_run(tmp_path / "runs" / "table" / "b", "b", {"status": "running"},
               [{"epoch": e, "val/loss": v} for e, v in ((1, 300.0), (2, 290.5), (3, 291.0))])
    monkeypatch.setattr(report, "ROOT", tmp_path)
    study = report.Study("s", "t", "table", "test/nll", "per row", None, "cmd", rows=["name"],
                         transform=lambda v: -v,
                         published={("c",): ("row C", "−1", -1.0), ("a",): ("row A", "−228.70", -228.7),
                                    ("b",): ("row B", "−227.35", -227.35)})
    rows = [line for line in report.study_block(study).splitlines() if line.startswith("| ")][1:]
    assert rows == ["| c | row C | −1 | not run yet | – |",  # the published order, run or not
                    "| a | row A | −228.70 | -228.50 (n=1) | 228.50 (1) |",
                    "| b | row B | −227.35 | in progress: epoch 3, best val/loss 290.50 at epoch 2 "
                    "(`runs/table/b`) | – |"]
    monkeypatch.setattr(report, "STUDIES", [study])
    assert ("row C: not run yet; row A: -228.50 (n=1) vs −228.70; row B: in progress: epoch 3"
            in report.summary_block())


def test_a_row_started_before_its_first_epoch_ended_says_so(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "table" / "b"
    _named_run(run_dir, "b", {"status": "running"})
    (run_dir / "metrics.jsonl").unlink()  # the first epoch has not ended
    monkeypatch.setattr(report, "ROOT", tmp_path)
    study = report.Study("s", "t", "table", "test/nll", "per row", None, "cmd", rows=["name"],
                         published={("b",): ("row B", "−227.35", -227.35)})
    assert report.in_progress(study) == {("b",): "started, no epoch yet (`runs/table/b`)"}


def test_a_runs_folder_left_empty_when_its_last_row_moved_to_results_means_no_row_in_progress(
        tmp_path, monkeypatch):
    (tmp_path / "runs" / "table").mkdir(parents=True)
    monkeypatch.setattr(report, "ROOT", tmp_path)
    study = report.Study("s", "t", "table", "test/nll", "per row", None, "cmd", rows=["name"],
                         published={("b",): ("row B", "−227.35", -227.35)})
    assert report.in_progress(study) == {}


def test_a_results_folder_without_a_run_record_is_a_study_not_run_yet(tmp_path, monkeypatch):
    (tmp_path / "results" / "table" / "wandb").mkdir(parents=True)  # a sweep whose first job was removed
    (tmp_path / "results" / "table" / "multirun.yaml").write_text("{}\n")
    monkeypatch.setattr(report, "ROOT", tmp_path)
    study = report.Study("s", "t", "table", "test/nll", "per row", None, "cmd", rows=["name"])
    assert report.study_rows(study) is None
    assert "Ours: not run yet." in report.study_block(study)


def test_a_row_whose_training_ended_says_how_far_its_evaluation_got(tmp_path, monkeypatch):
    import numpy as np

    from aeflax import kept, tracking

    run_dir = tmp_path / "runs" / "table" / "b"
    _named_run(run_dir, "b", {"status": "interrupted"},
               [{"epoch": e, "val/loss": v} for e, v in ((1, 300.0), (2, 290.5), (3, 291.0), (4, 292.0))])
    (run_dir / tracking.TRAINED).write_text(json.dumps({"epochs": 4, "kept_epoch": 2}))
    monkeypatch.setattr(report, "ROOT", tmp_path)
    study = report.Study("s", "t", "table", "test/nll", "per row", None, "cmd", rows=["name"],
                         published={("b",): ("row B", "−227.35", -227.35)})
    assert report.in_progress(study) == {
        ("b",): "trained: stopped after epoch 4, best val/loss 290.50 at epoch 2; evaluating "
                "(`runs/table/b`)"}
    (run_dir / kept.DIRNAME).mkdir()
    np.savez(run_dir / kept.DIRNAME / "likelihood_nll.npz", fingerprint=np.array("{}"), nll=np.zeros(1500))
    shown = report.in_progress(study)[("b",)]
    assert shown.endswith("evaluating (likelihood_nll: 1500 test images done) (`runs/table/b`)")


def test_a_trained_row_without_validation_losses_says_where_its_training_stopped(tmp_path, monkeypatch):
    from aeflax import tracking

    run_dir = tmp_path / "runs" / "table" / "b"
    _named_run(run_dir, "b", {"status": "interrupted"}, [{"epoch": e, "train/loss": 1.0} for e in (1, 2)])
    (run_dir / tracking.TRAINED).write_text(json.dumps({"epochs": 2, "kept_epoch": 2}))
    monkeypatch.setattr(report, "ROOT", tmp_path)
    study = report.Study("s", "t", "table", "test/nll", "per row", None, "cmd", rows=["name"],
                         published={("b",): ("row B", "−227.35", -227.35)})
    shown = report.in_progress(study)[("b",)]
    assert shown == "trained: stopped after epoch 2; evaluating (`runs/table/b`)"
