#!/usr/bin/env bash
# The first minutes on an accelerator, one command: the bench subset (aeflax's epochs against the
# device's matmul limit measured in the same process, the default run's phases), a sweep of 8 and
# one of 64 configs of the seed model with the basic and the vmap launcher, then the ratios.
# Planned to end within 10 minutes on one GPU (each part gets what is left of $BUDGET seconds, and
# what would not fit is skipped with a line); not yet run on one.
#
#   scripts/device_check.sh --prepare   # here, first: the data and the Python packages the device
#                                       # image lacks (Hydra, OmegaConf, ANTLR) into .device/ (git-ignored)
#   scripts/device_check.sh             # there: the device tool's run, carry [".device"], timeout 600
#   scripts/device_check.sh --quick     # tiny sizes, sweeps of 2 and 4 configs: every step, on a CPU
#
# Tables go to $OUT (the device tool brings that folder back) or a new temporary folder. Without
# wandb importable (the device image has none) the runs log no W&B run: the times then leave it out.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
DEV=.device
QUICK=0
PREPARE=0
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    --prepare) PREPARE=1 ;;
    *) echo "usage: scripts/device_check.sh [--prepare | --quick]" >&2; exit 2 ;;
  esac
done

if [ "$PREPARE" = 1 ]; then
  mkdir -p "$DEV/data/aeflax_arrays" "$DEV/site"
  exclude=$(git rev-parse --git-path info/exclude)
  grep -qx "/$DEV/" "$exclude" 2>/dev/null || echo "/$DEV/" >> "$exclude"
  "$PY" - "$DEV" <<'EOF'
import importlib, shutil, sys
from pathlib import Path

import numpy as np

from aeflax import data

dev = Path(sys.argv[1])
data.load(data.DataConfig())  # prepares the arrays here if they are not yet
source = data._cache_path("fashion_mnist", data.default_data_dir())
with np.load(source) as f:  # compressed: about 31 MB of the 64 MiB the device tool carries
    np.savez_compressed(dev / "data" / "aeflax_arrays" / source.name, **{k: f[k] for k in f.files})
for name in ("hydra", "omegaconf", "antlr4"):  # pure Python: they run under the device's python3
    package = Path(importlib.import_module(name).__file__).parent
    shutil.copytree(package, dev / "site" / name, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
print(f"prepared {dev}: {sum(p.stat().st_size for p in dev.rglob('*') if p.is_file()) / 2**20:.0f} MiB")
EOF
  exit 0
fi

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ -d "$DEV/site" ]; then export PYTHONPATH="$PYTHONPATH:$ROOT/$DEV/site"; fi
if [ -d "$DEV/data" ]; then export TFDS_DATA_DIR="$ROOT/$DEV/data"; fi
export PYTHONUNBUFFERED=1
OUT_DIR=${OUT:-$(mktemp -d)}
mkdir -p "$OUT_DIR"

"$PY" - <<'EOF'
import importlib, sys

missing = [m for m in ("jax", "flax", "optax", "orbax.checkpoint", "hydra", "omegaconf", "matplotlib", "tqdm")
           if importlib.util.find_spec(m.split(".")[0]) is None]
if missing:
    sys.exit(f"device_check: missing Python packages: {', '.join(missing)} (run --prepare here and carry .device)")
import jax

from aeflax import data

try:
    data.load(data.DataConfig(train_limit=1, test_limit=1))
except data.DataError as err:
    sys.exit(f"device_check: no Fashion-MNIST arrays ({err}); run --prepare here and carry .device")
wandb = importlib.util.find_spec("wandb") is not None
print(f"device_check: jax {jax.__version__}, {jax.default_backend()} backend, {jax.devices()[0].device_kind}; "
      f"W&B {'offline' if wandb else 'not installed: the runs log no W&B run'}")
EOF

if [ "$QUICK" = 1 ]; then SMOKE=--smoke; SMALL=2; LARGE=4; else SMOKE=; SMALL=8; LARGE=64; fi
BUDGET=${BUDGET:-560}
started=$SECONDS
part() {  # part NAME BENCH-ARGS...: one bench.py run within what is left of the budget
  local name=$1; shift
  local left=$((BUDGET - (SECONDS - started)))
  if [ "$left" -lt 30 ]; then echo "device_check: $name skipped: ${left} s of the budget left"; return; fi
  echo "device_check: $name (at most ${left} s)"
  timeout "$left" "$PY" scripts/bench.py $SMOKE "$@" --out "$OUT_DIR/$name.md" > /dev/null \
    || echo "device_check: $name failed or ran out of time (its output above)"
}
part train --only train --frameworks aeflax --rounds 1
part sweep$SMALL --only sweep --sweeps $SMALL --launchers basic,vmap
part run --only run
part sweep$LARGE --only sweep --sweeps $LARGE --launchers basic,vmap

echo
echo "device_check: the ratios ($(( SECONDS - started )) s; tables in $OUT_DIR)"
for name in train sweep$SMALL run sweep$LARGE; do
  [ -f "$OUT_DIR/$name.md" ] || continue
  grep -E "^\| (dense|conv|vae) \| [0-9]|^Matmul rate|^\| [0-9]+ configs|^\| (start-up|end of|whole run)" \
    "$OUT_DIR/$name.md" || true
done
