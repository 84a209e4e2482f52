"""Tables and sweep plots from run records: known values, visible gaps, clear errors.

The runs here are written by hand (the files a Hydra job leaves), so every number is known;
tests/test_sweeps.py builds tables from real sweeps.
"""

import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from aeflax import tables

ROOT = Path(__file__).resolve().parent.parent
MSE = {("ae", 8): [0.010, 0.012, 0.017], ("ae", 32): [0.006, 0.007, 0.008],
       ("vae", 8): [0.020, 0.021, 0.025], ("vae", 32): [0.015, 0.014, 0.016]}


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_table, plot_sweep = _script("make_table"), _script("plot_sweep")


def write_run(sweep: Path, variant: str, code: int, seed: int, summary: dict | None) -> Path:
    """The files a Hydra multirun job leaves: .hydra/{config,hydra,overrides}.yaml and summary.json."""
    run = sweep / f"bottleneck.code_size={code},seed={seed},variant={variant}"
    (run / ".hydra").mkdir(parents=True)
    config = {"seed": seed, "name": "toy", "bottleneck": {"code_size": code, "kind": "deterministic"},
              "model": {"hidden": [512, 256]}}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    choices = {"variant": variant, "experiment": None, "hydra/launcher": "basic"}
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    overrides = [f"variant={variant}", f"bottleneck.code_size={code}", f"seed={seed}", "train.epochs=1"]
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if summary is not None:
        (run / "summary.json").write_text(json.dumps({"seed": seed, **summary}))
    return run


def write_sweep(tmp_path: Path, mse=MSE) -> Path:
    sweep = tmp_path / "multirun" / "toy"
    for (variant, code), values in mse.items():
        for seed, v in enumerate(values):
            metrics = {"test/mse": v, "test/psnr": -10 * math.log10(v)}
            write_run(sweep, variant, code, seed, {"status": "finished", **metrics})
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "sweeper": {"_target_": tables.BASIC_SWEEPER, "params": {"variant": "ae,vae", "seed": "0,1,2"}},
        "overrides": {"task": ["bottleneck.code_size=8,32", "train.epochs=1"]}}}))
    return sweep


def test_seed_aggregation_equals_hand_computed_mean_and_std(tmp_path):
    runs = tables.load_runs([write_sweep(tmp_path)])
    assert len(runs) == 12 and tables.swept_keys(runs) == ["variant", "bottleneck.code_size", "seed"]
    agg = tables.aggregate(runs, ["variant", "bottleneck.code_size"], "test/mse").set_index(
        ["variant", "bottleneck.code_size"])
    # ae, code 8: 0.010, 0.012, 0.017 -> mean 0.013, sample std sqrt((9 + 1 + 16) e-6 / 2)
    assert agg.loc[("ae", 8), "mean"] == pytest.approx(0.013, abs=1e-15)
    assert agg.loc[("ae", 8), "std"] == pytest.approx(math.sqrt(13e-6), rel=1e-12)
    assert agg.loc[("vae", 32), ["mean", "std"]].tolist() == pytest.approx([0.015, 0.001])
    assert (agg["n"] == 3).all() and (agg[["failed", "unfinished", "no_metric", "missing"]] == 0).all().all()
    table, bold, _ = tables.build(runs, ["variant"], ["bottleneck.code_size"], ["test/mse"])
    assert table.columns.tolist() == ["variant", "code_size=8", "code_size=32"]
    assert table.loc[0].tolist() == ["ae", "0.0130 ± 0.0036 (3)", "0.00700 ± 0.00100 (3)"]
    assert bold.loc[0].tolist() == [True, True] and bold.loc[1].tolist() == [False, False]  # lower mse wins
    md = tables.to_markdown(table, bold)
    assert "| ae | **0.0130 ± 0.0036** (3) | **0.00700 ± 0.00100** (3) |" in md


def test_higher_is_better_metrics_bold_the_maximum(tmp_path):
    runs = tables.load_runs([write_sweep(tmp_path)])
    table, bold, _ = tables.build(runs, ["variant"], [], ["test/mse", "test/psnr"])
    assert table.columns.tolist() == ["variant", "test/mse", "test/psnr"]
    assert bold["test/mse"].tolist() == [True, False] and bold["test/psnr"].tolist() == [True, False]
    latex = tables.to_latex(table, bold)
    assert r"\textbf{" in latex and r"$\pm$" in latex and r"\begin{tabular}{lll}" in latex
    _, bold_max, _ = tables.build(runs, ["variant"], [], ["test/mse"], goal="max")
    assert bold_max["test/mse"].tolist() == [False, True]


def test_failed_unfinished_and_missing_runs_are_visible(tmp_path):
    sweep = write_sweep(tmp_path, {("ae", 8): [0.010, 0.012, 0.017], ("vae", 8): [0.02, 0.021, 0.025]})
    (sweep / "bottleneck.code_size=8,seed=0,variant=ae" / "summary.json").write_text(
        json.dumps({"status": "failed", "error": "NonFiniteLoss: train/loss is nan at epoch 3"}))
    (sweep / "bottleneck.code_size=8,seed=1,variant=ae" / "summary.json").write_text('{"status": "running"}')
    (sweep / "bottleneck.code_size=8,seed=0,variant=vae" / "summary.json").unlink()  # never started
    runs = tables.load_runs([sweep])
    table, _, long = tables.build(runs, ["variant"], ["bottleneck.code_size"], ["test/mse"])
    cells = dict(zip(table["variant"], table["code_size=8"], strict=True))
    assert cells["ae"] == "0.0170 (1; 1 failed; 1 unfinished)"
    assert cells["vae"] == "0.0230 ± 0.0028 (2; 1 unfinished)"  # no summary.json: not started, counted
    assert table["code_size=32"].tolist() == ["— (3 missing)", "— (3 missing)"]  # planned, never launched
    assert long.set_index(["variant", "bottleneck.code_size"]).loc[("ae", 32), "missing"] == 3


def test_make_table_cli_writes_each_format(tmp_path, capsys):
    sweep = write_sweep(tmp_path)
    assert make_table.main([str(sweep), "--rows", "variant", "--cols", "bottleneck.code_size"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("test/mse (lower is better): mean ± std (n runs) over seeds; rows: variant;")
    assert "| vae | 0.0220 ± 0.0026 (3) | 0.0150 ± 0.0010 (3) |" in out
    assert make_table.main([str(sweep), "--format", "csv", "--out", str(tmp_path / "t.csv")]) == 0
    csv = pd.read_csv(tmp_path / "t.csv")  # default rows: the swept keys but the seed
    assert csv.columns.tolist()[:3] == ["variant", "bottleneck.code_size", "metric"]
    row = csv[(csv["variant"] == "ae") & (csv["bottleneck.code_size"] == 8)].iloc[0]
    assert row["mean"] == pytest.approx(0.013, abs=1e-15) and row["n"] == 3
    capsys.readouterr()
    assert make_table.main([str(sweep), "--format", "latex", "--rows", "variant"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("% test/mse") and "(6)" in captured.out  # 3 seeds x 2 code sizes
    assert captured.err == ("warning: the cells pool runs of different bottleneck.code_size (8, 32); "
                            "add it to --rows or --cols to keep them apart\n")


@pytest.mark.parametrize("argv,message", [
    ([], "give sweep directories"),
    (["{empty}"], "no runs found under"),
    (["{missing}"], "does not exist"),
    (["{sweep}", "--rows", "bottleneck.size"], "unknown key 'bottleneck.size' for --rows: no run has it; "
                                                "keys the sweep varies: variant, bottleneck.code_size, seed"),
    (["{sweep}", "--metric", "test/nll"],
     "no run has the metric 'test/nll'; the runs have: test/mse, test/psnr"),
    (["{sweep}", "--cols", "seed", "--metric", "test/mse", "test/psnr"],
     "give one --metric together with --cols"),
])
def test_make_table_bad_input_gives_one_clear_line(tmp_path, capsys, argv, message):
    paths = {"sweep": write_sweep(tmp_path), "empty": tmp_path / "empty", "missing": tmp_path / "nope"}
    paths["empty"].mkdir()
    assert make_table.main([a.format(**paths) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_a_metric_some_runs_lack_is_a_warning_and_visible(tmp_path, capsys):
    sweep = write_sweep(tmp_path)
    run = sweep / "bottleneck.code_size=8,seed=2,variant=vae"
    (run / "summary.json").write_text(json.dumps({"status": "finished", "test/psnr": 16.0}))
    assert make_table.main([str(sweep), "--rows", "variant", "--cols", "bottleneck.code_size"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (f"warning: 1 of 12 finished runs have no 'test/mse' (e.g. {run}); "
                            "their cells say so\n")
    assert "| vae | 0.02050 ± 0.00071 (2; 1 without the metric) |" in captured.out


class FakeRun:
    def __init__(self, run_id, config, summary, state="finished"):
        self.id, self.config, self.summary, self.state = run_id, config, summary, state


class FakeApi:
    def __init__(self, runs):
        self._runs, self.calls = runs, []

    def runs(self, path, filters=None):
        self.calls.append((path, filters))
        return self._runs


def test_wandb_runs_give_the_same_table_as_the_directories(tmp_path):
    sweep = write_sweep(tmp_path)
    fake = []
    for i, run in enumerate(tables.find_runs(sweep)):
        config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        variant = overrides[0].split("=")[1]
        summary = json.loads((run / "summary.json").read_text())
        fake.append(FakeRun(f"r{i}", {**config, "variant": variant, "overrides": overrides, "_wandb": {}},
                            {**summary, "_runtime": 3}))
    api = FakeApi(fake)
    from_wandb = tables.load_wandb_runs("me/aeflax", group="toy-2026", api=api)
    assert api.calls == [("me/aeflax", {"group": "toy-2026"})]
    from_dirs = tables.load_runs([sweep])
    a = tables.build(from_wandb, ["variant"], ["bottleneck.code_size"], ["test/mse"])[0]
    b = tables.build(from_dirs, ["variant"], ["bottleneck.code_size"], ["test/mse"])[0]
    pd.testing.assert_frame_equal(a, b.astype(a.dtypes.to_dict()))
    assert tables.swept_keys(from_wandb) == ["variant", "bottleneck.code_size", "seed"]


def test_wandb_unreachable_is_one_clear_line():
    class Down:
        def runs(self, *a, **k):
            raise ConnectionError("no route to host")

    with pytest.raises(tables.TableError, match="could not read runs of me/p from W&B .*`wandb login`"):
        tables.load_wandb_runs("me/p", api=Down())


def test_plot_sweep_draws_the_aggregated_lines(tmp_path):
    runs = tables.load_runs([write_sweep(tmp_path)])
    curves = plot_sweep.lines(runs, "bottleneck.code_size", "variant", "test/mse")
    assert list(curves) == ["ae", "vae"]
    assert curves["ae"]["bottleneck.code_size"].tolist() == [8, 32]
    assert curves["ae"]["mean"].tolist() == pytest.approx([0.013, 0.007])
    assert curves["vae"]["std"].tolist() == pytest.approx([math.sqrt(7e-6), 0.001])
    out = tmp_path / "fig" / "latent.png"
    assert plot_sweep.main([str(tmp_path / "multirun"), "--x", "bottleneck.code_size", "--line", "variant",
                            "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
