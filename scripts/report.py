"""Write the generated tables of the READMEs from the runs under results/: `python scripts/report.py`.

Each study's README (experiments/<study>/README.md) keeps its hand-written protocol; the
part between the GENERATED markers is rewritten from the run records (tables.load /
tables.aggregate: mean ± std (n) over seeds), and so is the paper-vs-ours summary in the
top-level README. The README's other generated blocks are `scripts/make_table.py` tables,
each printed under the command that made it. A study without runs says so; nothing is typed in.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from aeflax import kept, tables
from aeflax.tracking import TRAINED, read_metrics

ROOT = Path(__file__).resolve().parent.parent

BEGIN, END = "<!-- BEGIN GENERATED: scripts/report.py -->", "<!-- END GENERATED -->"


@dataclass
class Study:
    key: str  # experiments/<key>/README.md
    title: str
    results: str  # the sweep directory under results/
    metric: str
    paper: str  # the published number as printed
    paper_value: Optional[float]
    command: str
    rows: list[str] = field(default_factory=list)  # group rows by these config keys
    transform: Callable[[float], float] = lambda v: v  # ours -> the paper's quantity
    quantity: str = ""
    extra_metrics: list[str] = field(default_factory=list)
    not_run: str = ""  # why the study has no runs here
    compare_row: Optional[tuple] = None  # the row the published number is for (e.g. class 0)
    reference: Optional[Reference] = None  # the published code's own runs, seeded, on our data
    readme: str = ""  # experiments/<readme>/README.md holds the table; default the key (one study a README)
    over_all: bool = False  # a last row: mean ± std over every run of every row (e.g. over classes)
    published: dict = field(default_factory=dict)  # row key -> (label, published as printed, value): a
    # table whose rows each have their own published number, shown in this order, run or not

    @property
    def folder(self) -> str:
        return self.readme or self.key

    @property
    def begin(self) -> str:
        """The block's opening marker; a study sharing another's README names itself in it."""
        return BEGIN if self.folder == self.key else BEGIN.replace(" -->", f" {self.key} -->")


@dataclass
class Reference:
    """Runs of the reference's own code (each `<results>/seed=<s>/summary.json`), so a study
    shows both spreads over seeds and whether the gap between the means is more than noise."""
    results: str  # under results/
    label: str
    command: str


STUDIES = [
    Study("tf_dense_ae", "TF tutorial: dense AE, code 64", "repro_tf_dense", "test/mse", "0.0088", 0.0088,
          "python experiments/train.py -m experiment=repro_tf_dense seed=0,1,2 "
          "hydra.sweep.dir=results/repro_tf_dense", quantity="test MSE"),
    Study("tf_conv_denoising", "TF tutorial: conv denoising AE (noise 0.2)", "repro_tf_conv_denoising",
          "test/mse", "≈ 0.0068", 0.0068,
          "python experiments/train.py -m experiment=repro_tf_conv_denoising seed=0,1,2,3,4 "
          "hydra.sweep.dir=results/repro_tf_conv_denoising", quantity="test MSE (noisy in, clean target)",
          reference=Reference("keras_tf_conv_denoising", "the tutorial's Keras code on TensorFlow",
                              "python experiments/tf_conv_denoising/keras_reference.py --seeds 0 1 2 3 4 "
                              "--out results/keras_tf_conv_denoising")),
    Study("exemplar_vae", "Exemplar VAE, Table 1: VAE, Gaussian prior, dyn. binarized Fashion-MNIST",
          "repro_exemplar_vae_cpu", "test/nll_k5000", "−228.70 ± 0.15", -228.70,
          "python experiments/train.py -m experiment=repro_exemplar_vae_cpu seed=0 "
          "hydra.sweep.dir=results/repro_exemplar_vae_cpu",
          transform=lambda v: -v, quantity="test log-likelihood, nats (k = 5000)",
          extra_metrics=["test/elbo", "test/active_units"]),
    Study("exemplar_table", "Exemplar VAE, Table 1, Fashion-MNIST column: the full protocol, row by row",
          "exemplar_table", "test/nll_k5000", "per row", None,
          "python experiments/train.py experiment=<the row's experiment> "
          "hydra.run.dir=runs/exemplar_table/<row> (again to resume); once finished, "
          "cp -r runs/exemplar_table/<row> results/exemplar_table/<row>",
          rows=["name"], transform=lambda v: -v, quantity="test log-likelihood, nats (k = 5000)",
          extra_metrics=["test/elbo", "test/active_units"], readme="exemplar_vae",
          published={("repro_exemplar_vae",): ("VAE, Gaussian prior", "−228.70 ± 0.15", -228.70),
                     ("repro_exemplar_vamp",): ("VAE, VampPrior", "−227.35 ± 0.05", -227.35),
                     ("repro_exemplar_hvae_vamp",): ("HVAE, VampPrior", "−226.72 ± 0.08", -226.72),
                     ("repro_exemplar_vae_exemplar",): ("Exemplar VAE", "−226.75 ± 0.07", -226.75)}),
    Study("fmnist_probe", "Fashion-MNIST benchmark: linear probe (paper: raw-pixel logistic regression)",
          "repro_probe", "probe/accuracy", "0.842 (raw pixels)", 0.842,
          "python experiments/train.py experiment=repro_probe hydra.sweep.dir=results/repro_probe",
          rows=["variant"], quantity="test accuracy of a logistic regression on the codes",
          extra_metrics=["probe/raw_accuracy", "probe/knn_accuracy", "test/mse"]),
    Study("one_class_anomaly", "One-class anomaly detection: Deep SAD's CAE baseline (Ruff et al. 2020), "
          "Fashion-MNIST, 10 classes x 5 seeds", "repro_anomaly_deepsad", "anomaly/auroc",
          "not transcribed yet (the paper's CAE row, F-MNIST; see the study README)", None,
          "python experiments/train.py experiment=repro_anomaly_deepsad "
          "hydra.sweep.dir=results/repro_anomaly_deepsad",
          rows=["data.normal_class"], quantity="AUROC (normal class vs the other nine)", over_all=True),
    Study("one_class_anomaly_small", "One-class anomaly detection, a small conv AE (no paper protocol), "
          "one seed", "repro_anomaly", "anomaly/auroc", "none (the third-party 0.9037 is dropped)", None,
          "python experiments/train.py experiment=repro_anomaly hydra.sweep.dir=results/repro_anomaly",
          rows=["data.normal_class"], quantity="AUROC (normal class vs the other nine)",
          readme="one_class_anomaly"),
    Study("burda_iwae_mnist", "Burda et al. 2015, Table 1: VAE k=1 / IWAE k=50 on MNIST", "repro_burda_mnist",
          "test/nll_k5000", "86.76 (VAE) / 84.78 (IWAE k=50)", 86.76,
          "python experiments/train.py experiment=repro_burda_vae hydra.run.dir=results/repro_burda_mnist/vae"
          "; python experiments/train.py experiment=repro_burda_iwae "
          "hydra.run.dir=results/repro_burda_mnist/iwae",
          quantity="test NLL, nats (k = 5000)", not_run="not run (needs the MNIST download)"),
]


def machine() -> str:
    cpus = len(__import__("os").sched_getaffinity(0))
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpus}-core CPU ({model or platform.processor()}), no GPU"


def fmt(v: float, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.2f}"


def has_runs(path: Path) -> bool:
    """Whether `path` holds a run record; a folder can exist without one (a finished row moved out of
    runs/, a sweep's first job removed), and tables.load refuses such a folder."""
    return path.exists() and bool(tables.find_runs(path))


def study_rows(study: Study):
    """Aggregated rows (one per group) of the study's runs, or None when there are none."""
    path = ROOT / "results" / study.results
    if study.not_run or not has_runs(path):
        return None
    runs = tables.load([path])
    metrics = [study.metric, *study.extra_metrics]
    out = []
    for metric in metrics:
        if metric not in runs:
            continue
        agg = tables.aggregate(runs, study.rows, metric)
        for _, r in agg.iterrows():
            key = tuple(r[k] for k in study.rows)
            out.append((key, metric, r["mean"], r["std"], int(r["n"]), int(r["failed"] + r["unfinished"])))
    summaries = [json.loads(p.read_text()) for p in path.rglob("summary.json")]
    finished = [s for s in summaries if s.get("status") == "finished"]
    timing = {k: sum(s.get(k, 0) for s in finished) / max(1, len(finished))
              for k in ("wall_seconds", "time/epoch_seconds")}
    return out, timing, len(finished)


def ours(study: Study, rows, key=None) -> str:
    for k, metric, mean, std, n, bad in rows:
        if metric == study.metric and (key is None or k == key):
            if n == 0:
                return f"no finished run ({bad} failed or unfinished)"
            m, s = study.transform(mean), std
            return f"{fmt(m)} ± {fmt(s, 2)} (n={n})" if n > 1 else f"{fmt(m)} (n=1)"
    return "–"


def row_summary(study: Study, rows) -> str:
    """A one-cell summary of a study with one row per variant or class: the best row, the
    mean over rows, and the raw-pixel probe where there is one."""
    main = [(k, mean) for k, m, mean, _, n, _ in rows if m == study.metric and n > 0]
    if not main:
        return "no finished run"
    best_key, best = max(main, key=lambda r: r[1])
    name = "/".join(map(str, best_key))
    text = ""
    if study.compare_row is not None:
        same = [v for k, v in main if k == study.compare_row]
        if same:
            text = f"{study.rows[0]}={study.compare_row[0]}: {fmt(study.transform(same[0]))}; "
    text += (f"best ({study.rows[0]}={name}): {fmt(study.transform(best))}; "
            f"mean over {len(main)}: {fmt(sum(v for _, v in main) / len(main))}")
    for _k, m, mean, _, n, _ in rows:
        if m == "probe/raw_accuracy" and n > 0:
            text += f"; raw pixels (ours): {fmt(mean)}"
            break
    return text


def study_block(study: Study) -> str:
    result = study_rows(study)
    lines = [study.begin, "", f"Published: **{study.paper}** ({study.quantity}).", ""]
    if result is None:
        lines += [f"Ours: {study.not_run or 'not run yet'}.", "", f"Command: `{study.command}`", "", END]
        return "\n".join(lines)
    rows, timing, n_runs = result
    keys = sorted({k for k, *_ in rows}, key=str)
    if study.published:  # the paper's rows in its order, then any other rows
        keys = [*study.published, *(k for k in keys if k not in study.published)]
    metrics = [m for m in [study.metric, *study.extra_metrics] if any(r[1] == m for r in rows)]
    head = [*(study.rows or []), *(["row", "published", "ours"] if study.published else []), *metrics]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ran = {k for k, *_ in rows}
    progress = in_progress(study) if study.published else {}
    for key in keys:
        cells = [str(v) for v in key]
        if study.published:
            label, paper, _ = study.published.get(key, ("", "–", None))
            cells += [label, paper,
                      ours(study, rows, key) if key in ran else progress.get(key, "not run yet")]
        for metric in metrics:
            cell = next(((mean, std, n) for k, m, mean, std, n, _ in rows if k == key and m == metric), None)
            if cell is None or cell[2] == 0:
                cells.append("–")
            else:
                mean, std, n = cell
                cells.append(f"{fmt(mean)} ± {fmt(std, 2)} ({n})" if n > 1 else f"{fmt(mean)} (1)")
        lines.append("| " + " | ".join(cells) + " |")
    if study.over_all:  # while a sweep runs, say over how many of its planned rows
        done = sum(1 for k, m, *_, n, _ in rows if m == study.metric and n > 0)
        label = f"**all {len(keys)}**" if done == len(keys) else f"**all runs: {done} of {len(keys)} rows**"
        lines.append("| " + " | ".join([label, *[""] * (len(study.rows) - 1),
                                        *(over_all(study, m) for m in metrics)]) + " |")
    lines += ["", f"mean ± std (n runs) over seeds; {n_runs} finished runs; per run on average "
              f"{timing['time/epoch_seconds']:.1f} s per epoch and {timing['wall_seconds']:.0f} s wall "
              f"(start-up, training, evaluation), on {machine()}.", ""]
    if study.reference is not None:
        lines += reference_lines(study)
    lines += [f"Command: `{study.command}`, then `python scripts/report.py`.", "", END]
    return "\n".join(lines)


def in_progress(study: Study) -> dict[tuple, str]:
    """Where each row's run in runs/<results>/ stands (long runs in progress, committed between
    sessions), by row key: its last epoch and best validation loss so far."""
    path = ROOT / "runs" / study.results
    runs = tables.load([path]) if has_runs(path) else []
    progress = {}
    for _, run in (runs.iterrows() if len(runs) else ()):
        run_dir = Path(run["run"])
        where = run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir
        epochs = [r for r in read_metrics(run_dir) if "val/loss" in r]  # none before the first epoch ends
        best = min(epochs, key=lambda r: r["val/loss"]) if epochs else None
        progress[tuple(run[k] for k in study.rows)] = (
            evaluating(run_dir, best, where) if (run_dir / TRAINED).exists() else
            f"in progress: epoch {epochs[-1]['epoch']}, best val/loss {best['val/loss']:.2f} at epoch "
            f"{best['epoch']} (`{where}`)" if best else f"started, no epoch yet (`{where}`)")
    return progress


def evaluating(run_dir: Path, best: Optional[dict], where) -> str:
    """A run whose training ended (its TRAINED file) and whose evaluation has not finished:
    where its training stopped and how far its kept passes got (aeflax.kept)."""
    trained = json.loads((run_dir / TRAINED).read_text())
    text = f"trained: stopped after epoch {trained['epochs']}"
    if best is not None:
        text += f", best val/loss {best['val/loss']:.2f} at epoch {trained['kept_epoch']}"
    text += "; evaluating"
    done = kept.images_done(run_dir)
    if done:
        text += " (" + ", ".join(f"{name}: {n} test images done" for name, n in done.items()) + ")"
    return f"{text} (`{where}`)"


def seed_values(results: Path, metric: str) -> list[float]:
    """The metric of every finished run under `results`, in seed order."""
    runs = tables.load([results])
    runs = runs[(runs["status"] == "finished") & runs[metric].notna()] if metric in runs else runs.iloc[:0]
    return [float(v) for v in runs.sort_values("run")[metric]]


def spread(values: list[float]) -> str:
    """mean ± std (n=...) of values, the sample standard deviation as in the study tables."""
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return f"{fmt(mean)} ± {fmt(std, 2)} (n={len(values)})"


def reference_lines(study: Study) -> list[str]:
    """Ours and the reference's code side by side: every seed's value, mean ± std, Welch's t-test."""
    from scipy import stats

    ref = study.reference
    path = ROOT / "results" / ref.results
    if not has_runs(path):
        return [f"The reference ({ref.label}): not run yet; `{ref.command}`.", ""]
    theirs = seed_values(path, study.metric)
    mine = seed_values(ROOT / "results" / study.results, study.metric)
    timing = [json.loads(p.read_text()) for p in path.rglob("summary.json")]
    per_epoch = sum(t.get("time/epoch_seconds", 0) for t in timing) / max(1, len(timing))

    lines = ["| code | " + study.metric + " per seed | mean ± std |", "|---|---|---|"]
    for name, values in (("aeflax", mine), (ref.label, theirs)):
        if values:
            lines.append(f"| {name} | {', '.join(fmt(v) for v in values)} | {spread(values)} |")
    if len(mine) > 1 and len(theirs) > 1:
        t = stats.ttest_ind(mine, theirs, equal_var=False)
        lines += ["", f"Welch's t-test, aeflax vs {ref.label}: t = {t.statistic:.2f}, p = {t.pvalue:.3g} "
                  f"({'below' if t.pvalue < 0.05 else 'not below'} 0.05: the means differ "
                  f"{'by more than' if t.pvalue < 0.05 else 'no more than by'} seed noise). The reference "
                  f"ran {per_epoch:.1f} s per epoch on the same machine; its command: `{ref.command}`."]
    return [*lines, ""]


def over_all(study: Study, metric: str) -> str:
    """mean ± std (n) over every finished run of the study, whatever its row (ddof=1, as per row)."""
    agg = tables.aggregate(tables.load([ROOT / "results" / study.results]), [], metric)
    mean, std, n = (agg.iloc[0][k] for k in ("mean", "std", "n")) if len(agg) else (None, None, 0)
    return "–" if not n else f"{fmt(mean)} ± {fmt(std, 2)} ({int(n)})" if n > 1 else f"{fmt(mean)} (1)"


def replace_block(path: Path, block: str, begin: str = BEGIN) -> None:
    text = path.read_text() if path.exists() else f"# {path.parent.name}\n\n{begin}\n{END}\n"
    if begin not in text:
        text = text.rstrip() + f"\n\n{begin}\n{END}\n"
    head, rest = text.split(begin, 1)
    tail = rest.split(END, 1)[1] if END in rest else ""
    path.write_text(head + block + tail)


def summary_block() -> str:
    lines = [BEGIN, "", "| study | published | ours | details |", "|---|---|---|---|"]
    for study in STUDIES:
        result = study_rows(study)
        if result is None:
            value = study.not_run or "not run yet"
        elif study.published:
            ran, progress = {k for k, *_ in result[0]}, in_progress(study)
            value = "; ".join(f"{label}: {ours(study, result[0], key)} vs {paper}" if key in ran
                              else f"{label}: {progress.get(key, 'not run yet')}"
                              for key, (label, paper, _) in study.published.items())
        elif study.rows:
            value = row_summary(study, result[0])
        else:
            value = ours(study, result[0])
        if study.reference is not None and has_runs(ROOT / "results" / study.reference.results):
            theirs = seed_values(ROOT / "results" / study.reference.results, study.metric)
            if theirs:
                value += f"; {study.reference.label}: {spread(theirs)}"
        lines.append(f"| {study.title} | {study.paper} | {value} | [experiments/{study.folder}]"
                     f"(experiments/{study.folder}/README.md) |")
    lines += ["", "Generated by `python scripts/report.py` from the runs under results/ "
              f"({machine()}).",
              "", END]
    return "\n".join(lines)


# --- the top-level README's blocks: make_table.py tables under their commands ----------

README_TABLES = {
    "default-run": [
        ("results/default", "--metric test/mse test/psnr time/startup_seconds time/first_epoch_seconds "
         "time/epoch_seconds time/eval_seconds"),
    ],
    "variants": [
        ("results/repro_probe", "--rows variant --metric test/mse test/ssim test/elbo test/nll_k100 "
         "probe/accuracy gen/fd_fashion_mnist gen/precision gen/recall time/epoch_seconds"),
    ],
    "evaluation": [
        ("results/repro_probe", "--rows variant --metric probe/accuracy probe/knn_accuracy "
         "probe/raw_accuracy time/eval/probe_seconds"),
        ("results/repro_exemplar_vae_cpu", "--metric test/nll_k5000 test/elbo test/active_units "
         "time/eval/likelihood_seconds"),
        ("results/denoising_eval", "--metric " + " ".join(
            f"denoise/{m}@{level}" for level in (0.1, 0.2, 0.3, 0.5)
            for m in ("noisy_psnr", "psnr", "psnr_gain"))),
        ("results/repro_anomaly", "--rows data.normal_class --metric anomaly/auroc"),
    ],
    "sweeps": [
        ("results/sweep_latent", "--rows variant --cols bottleneck.code_size --metric test/mse"),
        ("results/sweep_noise", "--rows variant --cols noise.std --metric test/mse"),
    ],
    "objective-sweeps": [
        ("results/sweep_mmd", "--rows penalty.mmd --metric test/mse test/ssim train/mmd"),
        ("results/sweep_tc", "--rows penalty.tc --metric test/mse test/elbo train/mi train/tc "
         "train/dimwise_kl"),
        ("results/sweep_dip", "--rows penalty.dip_offdiag --metric test/mse test/elbo train/dip"),
        ("results/sweep_factor", "--rows penalty.factor_gamma --metric test/mse test/elbo train/factor_tc "
         "train/factor_disc_accuracy"),
    ],
}


def make_table(dirs: str, options: str) -> str:
    """The table `scripts/make_table.py <dirs> <options>` prints, under its command."""
    import shlex
    import subprocess

    paths = [p for p in dirs.split() if (ROOT / p).exists()]
    command = f"python scripts/make_table.py {dirs} {options}"
    if not paths:
        return f"`{command}`: not run yet ({dirs} has no runs).\n"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_table.py"), *paths,
                           *shlex.split(options)], capture_output=True, text=True, cwd=ROOT)
    body = proc.stdout if proc.returncode == 0 else f"(make_table failed: {proc.stderr.strip()})\n"
    return f"```bash\n{command}\n```\n\n{body}"


def readme_block(name: str) -> str:
    parts = [make_table(dirs, options) for dirs, options in README_TABLES[name]]
    return f"<!-- BEGIN GENERATED: {name} -->\n\n" + "\n".join(parts) + "\n<!-- END GENERATED -->"


def fill_readme_block(text: str, name: str) -> str:
    start, end = f"<!-- BEGIN GENERATED: {name} -->", "<!-- END GENERATED -->"
    if start not in text:
        return text
    head, rest = text.split(start, 1)
    return head + readme_block(name) + rest.split(end, 1)[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    args = parser.parse_args()
    for study in STUDIES:
        replace_block(ROOT / "experiments" / study.folder / "README.md", study_block(study), study.begin)
    readme = Path(args.readme)
    text = readme.read_text() if readme.is_file() else ""
    marker = "## Reproductions"
    if marker in text:
        head, rest = text.split(marker, 1)
        section = rest.split("\n## ", 1)
        body = section[0]
        if BEGIN in body:
            pre, post = body.split(BEGIN, 1)
            post = post.split(END, 1)[1] if END in post else ""
            body = pre + summary_block() + post
        else:
            body = body.rstrip() + "\n\n" + summary_block() + "\n\n"
        text = head + marker + body + ("\n## " + section[1] if len(section) > 1 else "")
    for name in README_TABLES:
        text = fill_readme_block(text, name)
    readme.write_text(text)
    print(f"wrote {len(STUDIES)} study READMEs and {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
