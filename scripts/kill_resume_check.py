"""Kill a training run with SIGKILL at random points, resume it, and compare with an uninterrupted run.

    python scripts/kill_resume_check.py --trials 10 [--workdir DIR] [--seed S] [override ...]

One reference run goes through `experiments/train.py` without interruption. Each trial
starts the same command into its own run directory, kills it (kill -9) at a random
moment (a random time into a random epoch after the first, or into the end-of-run
evaluation, while the run is not yet finished), then re-runs the same command there.
A trial passes when the resumed run is finished, its metrics.jsonl holds every epoch
exactly once, and its final summary and every epoch's metrics equal the reference's bit
for bit (timings aside), under the same W&B id.
Prints one line per trial and exits non-zero if any fails.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aeflax.tracking import read_metrics, read_summary

ROOT = Path(__file__).resolve().parent.parent

DEFAULTS = ["data.train_limit=4000", "data.test_limit=1000", "train.epochs=8", "train.batch_size=32",
            "train.checkpoint_every=1", "logger=offline", "eval.figures=false"]
VOLATILE = ("seconds", "resumed_from_epoch")  # keys that may differ between identical runs


def command(run_dir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "experiments" / "train.py"), f"hydra.run.dir={run_dir}", *overrides]


def stable(point: dict) -> dict:
    return {k: v for k, v in point.items() if not any(s in k for s in VOLATILE)}


def first_epoch_done(run_dir: Path) -> bool:
    path = run_dir / "metrics.jsonl"
    return path.exists() and path.stat().st_size > 0


def run(run_dir: Path, overrides: list[str], env: dict) -> float:
    """Run to the end; return the seconds from the first epoch's point to the finished summary."""
    proc = subprocess.Popen(command(run_dir, overrides), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    first = finished = None
    while proc.poll() is None:
        if first is None and first_epoch_done(run_dir):
            first = time.monotonic()
        if finished is None and (read_summary(run_dir) or {}).get("status") == "finished":
            finished = time.monotonic()
        time.sleep(0.01)
    if proc.returncode != 0 or first is None:
        raise SystemExit(f"run in {run_dir} failed:\n{proc.stderr.read()[-3000:]}")
    return (finished or time.monotonic()) - first


def start_and_kill(run_dir: Path, overrides: list[str], env: dict, epochs: int, epoch_wall: float,
                   rng: random.Random) -> tuple[int, float]:
    """Start the run; SIGKILL it a random time into a random epoch (or into the end-of-run
    evaluation). A draw that lands after the run finished is drawn again, in a clean directory."""
    while True:
        shutil.rmtree(run_dir, ignore_errors=True)
        after, delay = rng.randint(1, epochs), rng.uniform(0, epoch_wall)
        proc = subprocess.Popen(command(run_dir, overrides), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while proc.poll() is None and len(epoch_points(run_dir)) < after:
            time.sleep(0.005)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (read_summary(run_dir) or {}).get("status") != "finished":
            return after, delay


def epoch_points(run_dir: Path) -> list[dict]:
    return [p for p in read_metrics(run_dir) if "epoch_seconds" in p]  # not the end-of-run evaluation


def trial(i: int, run_dir: Path, overrides: list[str], env: dict, epoch_wall: float, rng: random.Random,
          reference: dict, reference_points: list[dict]) -> bool:
    after, delay = start_and_kill(run_dir, overrides, env, len(reference_points), epoch_wall, rng)
    at_kill = read_summary(run_dir) or {}
    logged = [p["epoch"] for p in epoch_points(run_dir)]
    ckpts = sorted((run_dir / "checkpoints").glob("[0-9]*"), key=lambda p: (len(p.name), p.name))
    ckpts = [p.name.replace(".orbax-checkpoint-tmp", " (half-written)") for p in ckpts]
    wandb_before = at_kill.get("wandb_id")

    resumed = subprocess.run(command(run_dir, overrides), env=env, capture_output=True, text=True)
    final = read_summary(run_dir) or {}
    points = epoch_points(run_dir)
    problems = []
    if resumed.returncode != 0:
        problems.append(f"resume exited {resumed.returncode}: {resumed.stderr.strip().splitlines()[-1:]}")
    if at_kill.get("status") == "finished" and stable(final) != stable(at_kill):
        problems.append("a finished run was not left as it was")
    if final.get("status") != "finished":
        problems.append(f"status {final.get('status')}")
    if [p["epoch"] for p in points] != [p["epoch"] for p in reference_points]:
        problems.append(f"epochs logged {[p['epoch'] for p in points]}")
    elif [stable(p) for p in points] != [stable(p) for p in reference_points]:
        problems.append("per-epoch metrics differ from the reference")
    ours, theirs = stable(final), stable(reference)
    ours.pop("wandb_id", None), theirs.pop("wandb_id", None)  # each run directory has its own W&B run
    if ours != theirs:
        diff = {k: (theirs.get(k), ours.get(k)) for k in set(ours) | set(theirs)
                if ours.get(k) != theirs.get(k)}
        problems.append(f"final summary differs (reference, resumed): {diff}")
    if wandb_before and final.get("wandb_id") != wandb_before:
        problems.append(f"W&B id changed {wandb_before} -> {final.get('wandb_id')}")
    state = (f"killed {delay:4.2f} s after epoch {after} was logged (epochs logged {logged}, "
             f"checkpoints {ckpts}, status {at_kill.get('status')})")
    print(f"trial {i:2d}: {'FAIL' if problems else 'PASS'}  {state}; "
          f"resumed from epoch {final.get('resumed_from_epoch', 0)}"
          + (f"; {'; '.join(problems)}" if problems else ""), flush=True)
    return not problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill times (default: random)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temporary directory")
    parser.add_argument("overrides", nargs="*", help=f"Hydra overrides (default: {' '.join(DEFAULTS)})")
    args = parser.parse_args()
    overrides = args.overrides or DEFAULTS
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    rng = random.Random(seed)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kill_resume_"))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TF_CPP_MIN_LOG_LEVEL": "2"}
    print(f"workdir {workdir}; kill-time seed {seed}; overrides {' '.join(overrides)}", flush=True)

    window = run(workdir / "reference", overrides, env)
    reference = read_summary(workdir / "reference") or {}
    reference_points = epoch_points(workdir / "reference")
    epoch_wall = window / max(1, len(reference_points) - 1)
    print(f"reference: {len(reference_points)} epochs, test/loss {reference.get('test/loss')!r}, "
          f"{epoch_wall:.2f} s per epoch (wall)", flush=True)
    passed = sum(trial(i, workdir / f"trial-{i}", overrides, env, epoch_wall, rng, reference,
                       reference_points) for i in range(1, args.trials + 1))
    print(f"{passed}/{args.trials} trials passed", flush=True)
    return 0 if passed == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
