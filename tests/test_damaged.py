"""Damaged files aeflax reads back: named in one line (nothing changed) or recovered, never a traceback.

One tiny finished run is copied for each case; the data cache case rebuilds the .npz from the
prepared tfds files (slow: it imports tfds)."""

import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_cfg

from aeflax import data, tables, tracking
from aeflax.checkpoint import CheckpointError
from aeflax.config import ConfigError, DataConfig
from aeflax.run import train_and_evaluate

TINY = ["data.train_limit=300", "data.test_limit=100", "train.epochs=2", "train.batch_size=100"]
GARBAGE = b"\x00\xff{not json"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("damaged") / "finished"
    train_and_evaluate(make_cfg(*TINY), run_dir, progress=False)
    return run_dir


def files(run_dir: Path) -> dict:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("name,error,message", [
    ("summary.json", ConfigError, "summary.json is damaged (UnicodeDecodeError"),
    ("settings.json", ConfigError, "settings.json is damaged (UnicodeDecodeError"),
    ("checkpoint_digests.json", CheckpointError, "checkpoint_digests.json is damaged (UnicodeDecodeError"),
])
def test_a_damaged_record_file_is_named_in_one_line_and_nothing_changes(finished, tmp_path, name, error,
                                                                          message):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    (run_dir / name).write_bytes(GARBAGE)
    if name == "checkpoint_digests.json":  # a resumed run reads the digests
        summary = tracking.read_summary(run_dir)
        tracking.write_json_atomic(run_dir / "summary.json", {**summary, "status": "running"})
    before = files(run_dir)
    with pytest.raises(error) as caught:
        train_and_evaluate(make_cfg(*TINY), run_dir, progress=False)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    after = files(run_dir)
    if name == "checkpoint_digests.json":  # found when resuming: the unfinished run's record says why
        assert tracking.read_summary(run_dir)["error"] == f"CheckpointError: {caught.value}"
        before.pop("summary.json"), after.pop("summary.json")
    assert after == before  # no earlier record overwritten by the failure


def test_a_damaged_metrics_line_is_named_and_left_out(finished, tmp_path, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    lines = (run_dir / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (run_dir / "metrics.jsonl").write_bytes(lines[0] + GARBAGE + b"\n" + b"".join(lines[1:]))
    with caplog.at_level(logging.WARNING):
        points = tracking.read_metrics(run_dir)
    assert len(points) == len(lines) and "metrics.jsonl: line 2 is damaged and left out" in caplog.text


def test_a_damaged_summary_is_a_failed_run_in_tables(finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    (run_dir / "summary.json").write_bytes(GARBAGE)
    run = tables.read_run(run_dir)
    assert run["status"] == "failed" and run["error"] == f"{run_dir / 'summary.json'} is damaged"
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_bytes(b"a: [unclosed")
    with pytest.raises(tables.TableError, match=r"config.yaml is damaged \(ParserError"):
        tables.read_run(run_dir)


@pytest.mark.slow
def test_a_data_cache_cut_short_is_rebuilt_from_the_prepared_tfds_data(tmp_path, caplog):
    root = data.default_data_dir()
    cache = data._cache_path("fashion_mnist", root)
    if not (root / "fashion_mnist").is_dir() or not cache.exists():
        pytest.skip("needs fashion_mnist prepared by tfds in the default data dir")
    (tmp_path / "fashion_mnist").symlink_to(root / "fashion_mnist")
    damaged = data._cache_path("fashion_mnist", tmp_path)
    damaged.parent.mkdir()
    damaged.write_bytes(cache.read_bytes()[: 1 << 20])  # a full disk cut it short
    with caplog.at_level(logging.WARNING):
        rebuilt = data.load(DataConfig(data_dir=str(tmp_path)))
    assert "fashion_mnist.v1.npz is damaged (BadZipFile" in caplog.text
    original = data.load(DataConfig())
    assert np.array_equal(rebuilt.train.images, original.train.images)
    assert np.array_equal(rebuilt.test.labels, original.test.labels)
    assert data._read_cache("fashion_mnist", tmp_path) is not None  # the copy is whole again
