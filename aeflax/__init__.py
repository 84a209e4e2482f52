"""aeflax: autoencoders in JAX / Flax NNX. `aeflax.load_run(run_dir)` opens a trained run."""


def __getattr__(name):
    # lazy: `import aeflax.config` stays light; JAX and Orbax load when a run is opened
    if name == "load_run":
        from aeflax.api import load_run

        return load_run
    raise AttributeError(f"module 'aeflax' has no attribute {name!r}")
