"""Process-wide runtime settings, applied by an explicit `configure()` call.

Importing aeflax changes nothing in the process (a notebook or a host program keeps its own
XLA flags and cache). The entry points call `configure()` before their first JAX computation:
experiments/train.py and evaluate.py (in every launcher worker too, as the task runs there),
the vmap launcher, scripts/bench.py's workers and tests/conftest.py. In a notebook, call it
first to train at the same speed.
"""

from __future__ import annotations

import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-reduce"


def configure() -> None:
    """XLA flags, JAX's compilation cache and TensorFlow's log level for this process;
    idempotent. Speed and noise only: a run computes the same numbers with or without it.

    - XLA's CPU backend hands reductions to YNNPACK by default; inside a training scan
      those calls cost more than the matmuls, so reductions stay in XLA's own fused loops
      (identical metrics). A user's own `--xla_cpu_experimental_ynn_fusion_type` in
      XLA_FLAGS wins. XLA reads the flags when the backend starts: call this before the
      first JAX computation of the process.
    - JAX's persistent compilation cache (~/.cache/aeflax/jax, or $AEFLAX_JAX_CACHE;
      "" turns it off; JAX_COMPILATION_CACHE_DIR wins): a repeated run or sweep member
      skips XLA compilation, of every program, the small ones too (the end-of-run
      evaluation's programs compile in a fraction of a second each, together about a second).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow, when tfds prepares a dataset
    flags = os.environ.get("XLA_FLAGS", "")
    if "ynn_fusion_type" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
    cache = os.environ.get("AEFLAX_JAX_CACHE", os.path.expanduser("~/.cache/aeflax/jax"))
    if cache and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        import jax

        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
