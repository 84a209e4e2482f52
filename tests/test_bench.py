"""scripts/bench.py runs end to end in its smoke mode and writes a Markdown table."""

import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow  # a subprocess that trains and times every part


def test_bench_smoke_writes_a_table(tmp_path):
    out_md = tmp_path / "bench.md"
    command = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--smoke", "--frameworks", "aeflax",
               "--only", "train,nll", "--out", str(out_md)]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out_md.read_text()
    assert "cores, cpu backend" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    trained = {r.split("|")[1].strip(): r for r in rows if "| aeflax |" in r}
    assert set(trained) == {"dense", "conv", "vae"}
    for row in trained.values():  # seconds per epoch and samples per second are real numbers
        seconds, per_second = (float(c.replace(",", "")) for c in row.split("|")[4:6])
        assert seconds > 0 and abs(seconds * per_second - 60000) < 0.02 * 60000
    limits = [r for r in rows if r.split("|")[1].strip() in ("dense", "conv", "vae") and "aeflax" not in r]
    assert len(limits) == 4 and all(float(r.split("|")[5]) > 0 for r in limits)  # conv at batch 32 and 256
    assert "images / s" in text and "time / limit" in text


def test_bench_peers_smoke_trains_each_peer_and_aeflax_alike(tmp_path):
    pytest.importorskip("pythae")  # the [bench] extra
    out_md = tmp_path / "bench.md"
    command = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--smoke", "--only", "peers", "--out",
               str(out_md)]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out_md.read_text().splitlines()
    rows = [line.split("|") for line in lines if line.startswith(("| pythae", "| flax"))]
    assert [r[3].strip() for r in rows] == ["pythae", "aeflax", "flax", "aeflax"]
    for r in rows:  # seconds per epoch, its ratio to the matmul limit, a test -ELBO in nats (a few hundred)
        assert float(r[4]) > 0 and float(r[6]) > 0 and 100 < float(r[7]) < 800


def test_a_peer_step_counts_three_matmuls_a_layer_but_the_first_layer_input_gradient():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    b, weights = 128, [784 * 500, 500 * 40, 20 * 500, 500 * 784]  # the Flax example: 784-500-z20
    assert bench.flops(bench.peer_step_matmuls(500, 20, b)) == 2 * b * (3 * sum(weights) - weights[0])
