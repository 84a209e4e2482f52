"""A paper-style table from sweep directories (or W&B): mean ± std (n) over seeds.

    python scripts/make_table.py multirun/sweep_latent --rows variant --cols bottleneck.code_size \
        --metric test/mse [--format md|latex|csv] [--out table.md]
    python scripts/make_table.py multirun/variants --rows variant --metric test/mse test/psnr
    python scripts/make_table.py --wandb ENTITY/PROJECT --group sweep_latent-2026-... --rows variant ...
    python scripts/make_table.py multirun/sweep_latent --rows variant --log-wandb   # + a wandb.Table

Rows default to the keys the sweep varied (seed aside). Bad input ends with one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aeflax import tables


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweeps", nargs="*", help="sweep (or run) directories, e.g. multirun/sweep_latent")
    p.add_argument("--rows", default=None,
                   help="config keys for the rows, comma-separated (default: the swept keys)")
    p.add_argument("--cols", default="",
                   help="config keys for the columns, comma-separated (default: the metrics)")
    p.add_argument("--metric", nargs="+", default=["test/mse"], help="summary metric(s), e.g. test/mse")
    p.add_argument("--format", choices=["md", "latex", "csv"], default="md")
    p.add_argument("--goal", choices=["min", "max"], default=None,
                   help="which is best (default: by the metric name; psnr/accuracy/auroc/elbo: max)")
    p.add_argument("--digits", type=int, default=3, help="significant digits of the mean")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from the W&B API (online)")
    p.add_argument("--group", help="with --wandb: only this W&B group (a sweep)")
    p.add_argument("--out", type=Path, help="write here instead of stdout")
    p.add_argument("--log-wandb", action="store_true",
                   help="also log the runs' final metrics and the cells as wandb.Tables into the sweep's "
                        "W&B workspace (<sweep>/wandb; offline unless WANDB_MODE=online)")
    return p.parse_args(argv)


def _unique(keys: list[str]) -> list[str]:
    return list(dict.fromkeys(keys))


def split(keys: str) -> list[str]:
    return [k.strip() for k in keys.split(",") if k.strip()]


def make(args: argparse.Namespace) -> str:
    if args.log_wandb and (args.wandb or len(args.sweeps) != 1):
        raise tables.TableError("--log-wandb logs into one sweep's W&B workspace: give one sweep directory")
    runs = tables.load(args.sweeps, args.wandb, args.group)
    cols = split(args.cols)
    rows = split(args.rows) if args.rows is not None else \
        [k for k in tables.swept_keys(runs) if k != "seed" and k not in cols]
    warnings = tables.check_metrics(runs, args.metric)
    table, bold, long = tables.build(runs, rows, cols, args.metric, goal=args.goal, digits=args.digits)
    for warning in warnings + tables.pooled(runs, rows + cols) + tables.stale_warnings(runs):
        print(f"warning: {warning}", file=sys.stderr)
    if args.log_wandb:
        folder = tables.log_to_wandb(args.sweeps[0], runs, _unique(rows + cols + tables.swept_keys(runs)),
                                     args.metric, cells=long)
        print(f"logged the table to W&B: {folder}", file=sys.stderr)
    if args.format == "csv":
        return tables.to_csv(long)
    if args.format == "latex":
        return f"% {tables.caption(rows, cols, args.metric, args.goal)}\n" + tables.to_latex(table, bold)
    return f"{tables.caption(rows, cols, args.metric, args.goal)}\n\n" + tables.to_markdown(table, bold)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        text = make(args)
    except tables.TableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
