"""The companion figure of a sweep table: a metric against the swept value, one line per
variant, mean ± std over seeds as error bars, from the same runs (PNG).

    python scripts/plot_sweep.py multirun/sweep_latent --x bottleneck.code_size --line variant \
        --metric test/mse --out figures/latent.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from aeflax import tables  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweeps", nargs="*", help="sweep directories, e.g. multirun/sweep_latent")
    p.add_argument("--x", required=True, help="the swept config key on the x axis, e.g. bottleneck.code_size")
    p.add_argument("--line", default="", help="config key with one line per value, e.g. variant")
    p.add_argument("--metric", default="test/mse")
    p.add_argument("--logx", choices=["auto", "yes", "no"], default="auto",
                   help="log-scale x (auto: positive values spanning more than a factor 20)")
    p.add_argument("--logy", action="store_true")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from the W&B API (online)")
    p.add_argument("--group", help="with --wandb: only this W&B group")
    p.add_argument("--out", type=Path, default=Path("sweep.png"))
    return p.parse_args(argv)


def lines(runs: pd.DataFrame, x: str, line: str, metric: str) -> dict[str, pd.DataFrame]:
    """{line value: rows of x, mean, std, n} with at least one finished run, x ascending."""
    keys = [line, x] if line else [x]
    tables.check_keys(runs, keys, "--x/--line")
    agg = tables.aggregate(runs, keys, metric)
    agg = agg[agg["n"] > 0]
    groups = agg.groupby(line, sort=False) if line else [(metric, agg)]
    return {str(name): part.sort_values(x)[[x, "mean", "std", "n"]].reset_index(drop=True)
            for name, part in groups}


def plot(curves: dict[str, pd.DataFrame], x: str, line: str, metric: str, out: Path,
         logx: str = "auto", logy: bool = False) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=150)
    for name, c in curves.items():
        label = f"{line}={name}" if line else name
        ax.errorbar(c[x].astype(float), c["mean"], yerr=c["std"].fillna(0), marker="o", ms=4, capsize=3,
                    label=label)
    xs = np.concatenate([c[x].astype(float).to_numpy() for c in curves.values()])
    if logx == "yes" or (logx == "auto" and len(xs) and xs.min() > 0 and xs.max() / xs.min() > 20):
        ax.set_xscale("log", base=2 if np.allclose(np.log2(xs), np.round(np.log2(xs))) else 10)
    if logy:
        ax.set_yscale("log")
    n = sorted({int(v) for c in curves.values() for v in c["n"]})
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: mean ± std over seeds (n = {', '.join(map(str, n))})", fontsize=9)
    ax.grid(alpha=0.3)
    if len(curves) > 1 or line:
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        runs = tables.load(args.sweeps, args.wandb, args.group)
        warnings = tables.check_metrics(runs, [args.metric])
        curves = lines(runs, args.x, args.line, args.metric)
        for warning in warnings + tables.pooled(runs, [args.x, args.line] if args.line else [args.x]):
            print(f"warning: {warning}", file=sys.stderr)
    except tables.TableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {plot(curves, args.x, args.line, args.metric, args.out, args.logx, args.logy)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
