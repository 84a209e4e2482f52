"""aeflax.load_run on a saved run, and experiments/evaluate.py reproducing a run's metrics."""

import json

import numpy as np
import pytest
from conftest import make_cfg
from omegaconf import OmegaConf

import aeflax
from aeflax import api, training
from aeflax.run import train_and_evaluate
from aeflax.tracking import read_metrics, read_summary
from experiments import evaluate


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished seed run on a small subset, laid out as experiments/train.py leaves it."""
    path = tmp_path_factory.mktemp("run")
    cfg = make_cfg("data.train_limit=2000", "data.test_limit=500", "train.epochs=2", "train.batch_size=64")
    train_and_evaluate(cfg, path, progress=False)
    (path / ".hydra").mkdir()
    OmegaConf.save(cfg, path / ".hydra" / "config.yaml")
    return path


@pytest.mark.slow
def test_load_run_gives_the_trained_model(run_dir, fmnist_small):
    run = aeflax.load_run(run_dir)
    assert run.epoch == 2 and run.image_shape == (28, 28, 1)
    images = fmnist_small.test.images  # the run's own 500 test images
    codes = run.encode(images)
    assert codes.shape == (500, 64) and codes.dtype == np.float32
    recon = run.reconstruct(images)
    assert recon.shape == (500, 28, 28, 1) and 0 <= recon.min() and recon.max() <= 1
    # the restored model reproduces the run's final test MSE
    mse = np.mean((recon - images / 255.0) ** 2)
    assert mse == pytest.approx(run.summary["test/mse"], rel=1e-5)
    np.testing.assert_allclose(run.decode(codes), recon, atol=1e-6)
    # grey images without the channel axis, or flat float vectors, are the same images: the same
    # batch in another layout gives the same codes to the bit (uint8) or to float32 rounding (floats)
    five = run.encode(images[:5])
    np.testing.assert_array_equal(run.encode(images[:5, ..., 0]), five)
    np.testing.assert_allclose(run.encode(images[:5].reshape(5, -1) / 255.0), five, atol=1e-5)
    # and a batch of 5 the codes of the 500: XLA:CPU blocks a matmul by its batch size, so their float32
    # sums round differently by CPU (4e-6 on codes of about 4 on an AVX2 machine, within 1e-6 on AVX-512)
    np.testing.assert_allclose(five, codes[:5], rtol=2e-6, atol=1e-6)
    with pytest.raises(ValueError, match="no prior"):
        run.sample(4)
    assert run.sample(4, like=images[:100]).shape == (4, 28, 28, 1)


def test_vae_samples_from_the_prior():
    cfg = make_cfg("bottleneck.kind=gaussian", "bottleneck.code_size=4", "loss.name=elbo")
    graphdef, state = training.init_state(cfg, (28, 28, 1), 1)
    run = api.Run("unused", cfg, graphdef, state, (28, 28, 1))
    a, b = run.sample(6, seed=1), run.sample(6, seed=1)
    assert a.shape == (6, 28, 28, 1) and np.array_equal(a, b)
    assert not np.allclose(a, run.sample(6, seed=2))
    assert run.encode(np.zeros((3, 28, 28), np.uint8)).shape == (3, 4)


def test_load_run_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        aeflax.load_run(tmp_path)


@pytest.mark.slow
def test_evaluate_py_reproduces_the_runs_metrics(run_dir):
    before = read_summary(run_dir)
    lines = len(read_metrics(run_dir))
    metrics = evaluate.main([str(run_dir), "logger.mode=disabled"])
    after = read_summary(run_dir)
    names = [k for k in before if k.startswith("test/")]
    assert {"test/mse", "test/psnr", "test/ssim", "test/bce_per_image"} <= set(names)
    for name in names:
        assert after[name] == pytest.approx(before[name], rel=1e-6), name
        assert metrics[name] == pytest.approx(before[name], rel=1e-6), name
    assert after["status"] == "finished" and "time/evaluate_seconds" in after
    logged = read_metrics(run_dir)
    assert len(logged) == lines + 1 and logged[-1]["test/mse"] == pytest.approx(before["test/mse"])


@pytest.mark.slow
def test_evaluate_py_with_an_eval_option(run_dir, capsys):
    evaluate.main([str(run_dir), "eval=denoising", "eval.denoising_levels=[0.5]", "eval.figures=false",
                   "logger.mode=disabled"])
    summary = read_summary(run_dir)
    assert summary["denoise/psnr@0.5"] > summary["denoise/noisy_psnr@0.5"]
    assert json.loads(capsys.readouterr().out)["denoise/psnr@0.5"] == pytest.approx(
        summary["denoise/psnr@0.5"], abs=1e-5)
    with pytest.raises(SystemExit) as exit_:
        evaluate.main([str(run_dir), "eval=nope"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: eval=nope is not an option") and "denoising" in err and "\n" not in err


def test_every_eval_option_is_valid():
    from aeflax.config import validate

    options = sorted(p.stem for p in (evaluate.CONF / "eval").glob("*.yaml"))
    assert {"default", "full", "likelihood", "denoising", "probe", "anomaly", "none"} <= set(options)
    for name in options:
        cfg = make_cfg()
        cfg.eval = evaluate.eval_option(name)
        validate(cfg)
    assert evaluate.eval_option("likelihood").importance_samples == 5000
