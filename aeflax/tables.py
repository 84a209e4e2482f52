"""Run records -> paper-style tables: mean ± std (n) over seeds, the best per column in bold.

A run is a directory with Hydra's `.hydra/config.yaml` and, once started, `summary.json`
(runs read from the W&B API stand in for them). Runs are grouped by config keys: dotted
config paths (`bottleneck.code_size`) or group choices (`variant`). Nothing is dropped
silently: failed and unfinished runs, runs without the metric, and jobs a sweep planned
but never started (from its multirun.yaml) are counted in their cells.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import yaml

from aeflax import tracking
from aeflax.flat import flatten
from aeflax.sweep_plan import BASIC_SWEEPER, planned_values  # noqa: F401 - part of this module's API
from aeflax.tracking import RunLock

HIGHER_IS_BETTER = ("psnr", "ssim", "accuracy", "auroc", "auc", "elbo", "usage", "precision", "recall")


class TableError(ValueError):
    """Input a table cannot be built from; the message says what to change."""


# ---------------------------------------------------------------- reading runs


def config_columns(tree: dict) -> dict:
    """A run's config as flat columns; lists become their text (hashable, readable cells)."""
    return {k: str(v) if isinstance(v, list) else v for k, v in flatten(tree).items()}


def override_key(override: str) -> str:
    """`+group@pkg=value` -> `group`; `a.b=1` -> `a.b`."""
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def find_runs(root: str | Path) -> list[Path]:
    """Run directories under `root` (itself included): those with .hydra/config.yaml or summary.json."""
    root = Path(root)
    found = {p.parent.parent for p in root.rglob(".hydra/config.yaml")}
    found |= {p.parent for p in root.rglob("summary.json") if "wandb" not in p.parts}
    return sorted(found)


def read_run(run_dir: str | Path) -> dict:
    """One run as a flat record: config keys, group choices, status, metrics (slash names)."""
    run_dir = Path(run_dir)
    hydra_dir = run_dir / ".hydra"
    record: dict = {}
    if (hydra_dir / "config.yaml").exists():
        record.update(config_columns(_yaml(hydra_dir / "config.yaml", dict)))
    if (hydra_dir / "hydra.yaml").exists():
        hydra = _yaml(hydra_dir / "hydra.yaml", dict)
        choices = ((hydra.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
        record.update({k: v for k, v in choices.items() if v is not None and not k.startswith("hydra/")})
    overrides = []
    if (hydra_dir / "overrides.yaml").exists():
        overrides = _yaml(hydra_dir / "overrides.yaml", list)
    summary = read_summary(run_dir)
    if (summary or {}).get("status") == "running" and RunLock.held(run_dir) is False:
        summary["status"] = "stale"  # its process died without a word (kill -9, a lost node)
    return _record(record, summary, overrides, str(run_dir))


def _yaml(path: Path, kind: type):
    """A YAML file Hydra wrote (empty: an empty `kind`); a damaged one is one clear error."""
    try:
        value = yaml.safe_load(path.read_bytes()) or kind()
        if not isinstance(value, kind):
            raise ValueError(f"a {type(value).__name__}, not a {kind.__name__}")
        return value
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise TableError(f"{path} is damaged ({type(err).__name__}: {' '.join(str(err).split())[:100]}); "
                         "repair or delete it (or leave its run directory out)") from None


def read_summary(run_dir: Path) -> Optional[dict]:
    """summary.json; None before a run starts; a damaged one becomes a failed run that names it."""
    path = run_dir / "summary.json"
    if not path.exists():
        return None
    summary = tracking.read_summary(run_dir)
    return summary if summary is not None else {"status": "failed", "error": f"{path} is damaged"}


def stale_warnings(runs: pd.DataFrame) -> list[str]:
    """A line for each run whose record says running but whose process is gone."""
    return [f"{run} says running but no process holds it (killed, or its node lost); not counted as running; "
            "the same command resumes it" for run in runs.loc[runs["status"] == "stale", "run"]]


def _record(config: dict, summary: Optional[dict], overrides: Sequence[str], run: str) -> dict:
    status = (summary or {}).get("status", "not started")
    status = {"running": "unfinished", "crashed": "failed"}.get(status, status)
    metrics = {k: v for k, v in (summary or {}).items() if "/" in k and _is_number(v)}
    return {**config, **metrics, "run": run, "status": status, "error": (summary or {}).get("error"),
            "_overrides": tuple(override_key(o) for o in overrides)}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_runs(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Every run under the given directories, one row each; `attrs["planned"]` holds the sweeps' grids."""
    runs, planned = [], {}
    for path in map(Path, paths):
        if not path.exists():
            raise TableError(f"{path} does not exist; give a sweep directory such as multirun/<name>")
        runs += find_runs(path)
        for key, values in planned_values(path).items():
            planned[key] = _unique(planned.get(key, []) + values)
    if not runs:
        raise TableError(f"no runs found under {', '.join(map(str, paths))} (a run directory holds "
                         ".hydra/config.yaml or summary.json); did the sweep start?")
    frame = pd.DataFrame([read_run(r) for r in runs])
    frame.attrs["planned"] = planned
    return frame


def load_wandb_runs(path: str, group: Optional[str] = None, api: Optional[Any] = None) -> pd.DataFrame:
    """The runs of a W&B project `entity/project` (optionally one group), as load_runs gives them."""
    try:
        if api is None:
            import wandb

            api = wandb.Api(timeout=30)
        runs = list(api.runs(path, filters={"group": group} if group else None))
    except Exception as err:  # noqa: BLE001 - any API failure is one line with the way out
        raise TableError(f"could not read runs of {path} from W&B ({type(err).__name__}: {err}); it needs "
                         "the network and `wandb login`; read the sweep directories instead, or `wandb sync` "
                         "them") from None
    if not runs:
        raise TableError(f"no W&B runs in {path}" + (f" with group {group!r}" if group else ""))
    records = []
    for run in runs:
        config = {k: v for k, v in dict(run.config).items() if not k.startswith("_")}
        summary = dict(getattr(run, "summary_metrics", None) or run.summary)  # a plain dict in the API
        summary.setdefault("status", {"finished": "finished", "crashed": "failed",
                                      "failed": "failed"}.get(run.state, "unfinished"))
        records.append(_record(config_columns(config), summary, config.get("overrides", []),
                               f"{path}/{run.id}"))
    frame = pd.DataFrame(records)
    frame.attrs["planned"] = {}
    return frame


def load(sweeps: Sequence[str | Path], wandb: Optional[str] = None,
         group: Optional[str] = None) -> pd.DataFrame:
    """The runs a command line names: W&B project `wandb` (and `group`), else the sweep directories."""
    if wandb:
        return load_wandb_runs(wandb, group=group)
    if not sweeps:
        raise TableError("give sweep directories (multirun/<name>) or --wandb ENTITY/PROJECT")
    return load_runs(sweeps)


def log_to_wandb(sweep_dir, runs: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str],
                 cells: Optional[pd.DataFrame] = None, mode: Optional[str] = None) -> Path:
    """Log the runs' final metrics (one row per run: its swept keys, status and `metrics`) and
    the table's cells as `wandb.Table`s into the sweep's W&B workspace (`<sweep>/wandb`), in one
    run named `table` of the sweep's group. Its id is fixed per sweep, so logging again replaces
    the table (one W&B run) rather than adding one. Returns the W&B folder written."""
    import hashlib

    import wandb

    from aeflax.config import LoggerConfig
    from aeflax.tracking import WandbRun

    sweep_dir = Path(sweep_dir)
    group_file = sweep_dir / "wandb_group.txt"
    group = group_file.read_text().strip() if group_file.exists() else sweep_dir.resolve().name
    run_id = "table" + hashlib.sha1(group.encode()).hexdigest()[:10]
    mode = mode or os.environ.get("WANDB_MODE", "offline")
    columns = ["run", *keys, "status", *[m for m in metrics if m in runs]]
    rows = runs.reindex(columns=columns).astype(object).where(runs.reindex(columns=columns).notna(), None)
    rows["run"] = [Path(r).name for r in runs["run"]]
    tracker = WandbRun(LoggerConfig(mode=mode, dir=str(sweep_dir), job_type="table"), sweep_dir / "table",
                       {"keys": list(keys), "metrics": list(metrics)}, name="table", group=group,
                       run_id=run_id)
    if tracker.run is None:
        raise TableError(f"W&B could not start a run in {sweep_dir / 'wandb'} (see the warning above)")
    tracker.continue_from([])  # the table's earlier folders go: one table run per sweep
    logged = {"runs": wandb.Table(dataframe=rows)}
    if cells is not None:
        logged["cells"] = wandb.Table(dataframe=cells.astype(object).where(cells.notna(), None))
    tracker.log(logged)
    folder = Path(tracker.run.settings.sync_dir)
    tracker.finish()
    return folder


# ---------------------------------------------------------------- grouping


def swept_keys(runs: pd.DataFrame) -> list[str]:
    """Keys a sweep varied (overridden and taking more than one value), seed last."""
    keys = _unique([k for keys in runs["_overrides"] for k in keys] + list(runs.attrs.get("planned", {})))
    keys = [k for k in keys if k in runs and runs[k].astype(str).nunique() > 1]
    return sorted(keys, key=lambda k: (k == "seed", keys.index(k)))


def check_keys(runs: pd.DataFrame, keys: Sequence[str], option: str) -> None:
    for key in keys:
        if key not in runs.columns:
            varying = ", ".join(swept_keys(runs)) or "none"
            raise TableError(f"unknown key {key!r} for {option}: no run has it; keys the sweep varies: "
                             f"{varying} (any config key works, dotted: bottleneck.code_size)")


def pooled(runs: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """A warning line for each swept key (the seed aside) left out of `keys`: its runs share cells."""
    values = lambda k: ", ".join(map(str, _sorted(_unique(runs[k].tolist()))))  # noqa: E731
    return [f"the cells pool runs of different {k} ({values(k)}); add it to --rows or --cols to keep them "
            "apart" for k in swept_keys(runs) if k != "seed" and k not in keys]


def check_metrics(runs: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """Raise if no run has a metric; return a warning line for each metric some finished runs lack."""
    warnings = []
    finished = runs[runs["status"] == "finished"]
    for metric in metrics:
        if metric not in runs.columns or runs[metric].isna().all():
            known = sorted(c for c in runs.columns if "/" in c and runs[c].notna().any())
            raise TableError(f"no run has the metric {metric!r}; the runs have: {', '.join(known) or 'none'}")
        lacking = finished[finished[metric].isna()]
        if len(lacking):
            warnings.append(f"{len(lacking)} of {len(finished)} finished runs have no {metric!r} "
                            f"(e.g. {lacking['run'].iloc[0]}); their cells say so")
    return warnings


def aggregate(runs: pd.DataFrame, keys: Sequence[str], metric: str) -> pd.DataFrame:
    """One row per combination of `keys`: mean, std (ddof=1), n over finished runs with the metric,
    and the counts of the others (failed, unfinished, no metric, missing from the plan)."""
    keys = list(keys)
    planned = runs.attrs.get("planned", {})
    rows = []
    for combo in _grid(runs, keys, planned):
        mask = np.ones(len(runs), dtype=bool)
        for key, value in zip(keys, combo, strict=True):
            mask &= runs[key].map(lambda v, value=value: _same(v, value)).to_numpy()
        cell = runs[mask]
        done = cell[cell["status"] == "finished"]
        values = done[metric].dropna().astype(float).to_numpy()
        expected = math.prod(len(v) for k, v in planned.items() if k not in keys and k in runs)
        rows.append({**dict(zip(keys, combo, strict=True)), "metric": metric,
                     "mean": float(values.mean()) if len(values) else math.nan,
                     "std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                     "n": len(values),
                     "failed": int((cell["status"] == "failed").sum()),
                     "unfinished": int((~cell["status"].isin(["finished", "failed", "stale"])).sum()),
                     "stale": int((cell["status"] == "stale").sum()),
                     "no_metric": int(len(done) - len(values)),
                     "missing": max(0, expected - len(cell)) if planned else 0})
    return pd.DataFrame(rows)


def _grid(runs: pd.DataFrame, keys: list[str], planned: dict) -> list[tuple]:
    """Every combination of the keys' values (planned or seen): an absent one becomes a visible cell."""
    if not keys:
        return [()]
    values = [_sorted(_unique(planned.get(k, []) + runs[k].tolist())) for k in keys]
    return [tuple(c) for c in pd.MultiIndex.from_product(values).tolist()] if len(keys) > 1 else \
        [(v,) for v in values[0]]


def _same(a, b) -> bool:
    if _is_number(a) and _is_number(b):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return (a is None and b is None) or (a is not None and b is not None and str(a) == str(b))


def _unique(values: list) -> list:
    out = []
    for v in values:
        if not (isinstance(v, float) and math.isnan(v)) and not any(_same(v, u) for u in out):
            out.append(v)
    return out


def _sorted(values: list) -> list:
    return sorted(values, key=lambda v: (0, v, "") if _is_number(v) else (1, 0, str(v)))


# ---------------------------------------------------------------- the table


def higher_is_better(metric: str) -> bool:
    return any(word in metric.lower() for word in HIGHER_IS_BETTER)


def format_mean_std(mean: float, std: float, digits: int = 3) -> tuple[str, str]:
    """The mean to `digits` significant digits, the std to two, both with the same decimals."""
    def decimals(x, sig):
        return sig - 1 - math.floor(math.log10(abs(x))) if x and math.isfinite(x) else 0

    d = min(8, max(0, decimals(mean, digits), decimals(std, 2) if std == std else 0))
    return f"{mean:.{d}f}", (f"{std:.{d}f}" if std == std else "")


def build(runs: pd.DataFrame, rows: Sequence[str], cols: Sequence[str], metrics: Sequence[str],
          goal: Optional[str] = None, digits: int = 3) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The table as (cell texts, bold mask, the aggregated numbers in long form).

    Columns are the values of `cols` (one metric) or the metrics (no `cols`)."""
    rows, cols, metrics = list(rows), list(cols), list(metrics)
    if cols and len(metrics) > 1:
        raise TableError("give one --metric together with --cols, or several metrics without --cols")
    if not metrics:
        raise TableError("give at least one --metric, e.g. --metric test/mse")
    check_keys(runs, rows, "--rows")
    check_keys(runs, cols, "--cols")
    long = pd.concat([aggregate(runs, rows + cols, m) for m in metrics], ignore_index=True)
    col_of = (lambda r: ", ".join(f"{k.rsplit('.', 1)[-1]}={r[k]}" for k in cols)) if cols else \
        (lambda r: r["metric"])
    row_of = lambda r: tuple(r[k] for k in rows)  # noqa: E731
    long["_col"] = long.apply(col_of, axis=1)
    long["_row"] = long.apply(row_of, axis=1) if rows else [()] * len(long)
    col_names = _unique(long["_col"].tolist())
    row_names = _unique(long["_row"].tolist())
    text = pd.DataFrame("", index=pd.Index(range(len(row_names))), columns=col_names)
    bold = pd.DataFrame(False, index=text.index, columns=col_names)
    for c in col_names:
        part = long[long["_col"] == c]
        metric = part["metric"].iloc[0]
        maximize = goal == "max" if goal else higher_is_better(metric)
        best = part["mean"].max() if maximize else part["mean"].min()
        for _, r in part.iterrows():
            i = row_names.index(r["_row"])
            text.loc[i, c] = _cell(r, digits)
            bold.loc[i, c] = bool(r["n"]) and r["mean"] == best and part["mean"].notna().sum() > 1
    index = pd.DataFrame(row_names, columns=rows) if rows else pd.DataFrame(index=text.index)
    return pd.concat([index, text], axis=1), bold, long.drop(columns=["_col", "_row"])


NOTES = {"failed": "failed", "unfinished": "unfinished", "stale": "stale", "no_metric": "without the metric",
         "missing": "missing"}


def _cell(r, digits: int) -> str:
    notes = [f"{r[k]} {label}" for k, label in NOTES.items() if r[k]]
    if not r["n"]:
        return "— (" + ", ".join(notes or ["missing"]) + ")"
    mean, std = format_mean_std(r["mean"], r["std"], digits)
    value = f"{mean} ± {std}" if std else mean
    return f"{value} ({'; '.join([str(r['n'])] + notes)})"


def caption(rows: Sequence[str], cols: Sequence[str], metrics: Sequence[str],
            goal: Optional[str] = None) -> str:
    parts = []
    for m in metrics:
        better = "higher" if (goal == "max" if goal else higher_is_better(m)) else "lower"
        parts.append(f"{m} ({better} is better)")
    where = f"rows: {', '.join(rows) or '-'}" + (f"; columns: {', '.join(cols)}" if cols else "")
    return (f"{'; '.join(parts)}: mean ± std (n runs) over seeds; {where}; best per column in bold; "
            "failed, unfinished and missing runs are counted in their cells")


def to_markdown(table: pd.DataFrame, bold: pd.DataFrame) -> str:
    header = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for i, row in table.iterrows():
        cells = [_bold(str(v), bool(bold.loc[i, c]) if c in bold.columns else False, "**", "**")
                 for c, v in row.items()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame, bold: pd.DataFrame) -> str:
    esc = lambda s: str(s).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&").replace("#", r"\#")  # noqa: E731
    lines = [r"\begin{tabular}{" + "l" * len(table.columns) + "}", r"\toprule",
             " & ".join(esc(c) for c in table.columns) + r" \\", r"\midrule"]
    for i, row in table.iterrows():
        cells = []
        for c, v in row.items():
            v = esc(v).replace("±", r"$\pm$").replace("—", "--")
            cells.append(_bold(v, bool(bold.loc[i, c]) if c in bold.columns else False, r"\textbf{", "}"))
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _bold(cell: str, on: bool, left: str, right: str) -> str:
    """Bold the value (the part before the count in parentheses)."""
    if not on:
        return cell
    value, sep, rest = cell.partition(" (")
    return f"{left}{value}{right}{sep}{rest}"


def to_csv(long: pd.DataFrame) -> str:
    """The numbers behind the table, one line per cell and metric (full precision)."""
    return long.to_csv(index=False)
