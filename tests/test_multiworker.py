"""--distribute multiworker: MultiWorkerMirroredStrategy across processes configured by TF_CONFIG.

The slow test starts two worker processes of cycle_vae.py on 127.0.0.1, as two machines would run them, and
checks that they train in step (same weights), that only the chief writes, that each trains on its own half of
every global batch (the logged losses equal a one-process run's on the same global batches), and --resume.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import common
import cycle_vae
import data
from conftest import ROOT, SHARED, write_idx, write_mnist

FLAGS = ["--dataset", "mnist", "--batch-size", "16", "--steps-per-epoch", "3", "--no-evaluate"]


def tiny_real_mnist(root):
    """root/mnist/ with the first 320 training and 100 test digits of the real MNIST (random digits without it)."""
    if not (SHARED / "mnist").is_dir():
        write_mnist(root, n_train=320, n_test=100)
        return root
    real = data.load_mnist(SHARED)
    (root / "mnist").mkdir(parents=True)
    for split, count, prefix in (("train", 320, "train"), ("test", 100, "t10k")):
        rows = real.rows(split)[:count]
        write_idx(root / "mnist" / f"{prefix}-images-idx3-ubyte.gz", real.images[rows][..., 0])
        write_idx(root / "mnist" / f"{prefix}-labels-idx1-ubyte.gz", np.asarray(real.labels["digit"])[rows])
    return root


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(args, cwd, scratch, count=2, script="cycle_vae.py"):
    """The script in `count` worker processes of one TF_CONFIG cluster on 127.0.0.1 -> their CompletedProcess-es."""
    cluster = [f"127.0.0.1:{port}" for port in free_ports(count)]
    processes = []
    for index in range(count):
        tf_config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, data.OFFLINE_ENV: "1", "TF_CPP_MIN_LOG_LEVEL": "3",
               "TF_CONFIG": json.dumps(tf_config), "TMPDIR": str(scratch)}
        processes.append(subprocess.Popen([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for process in processes:
        try:
            stdout, stderr = process.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return results


def fingerprint(result):
    lines = [line for line in result.stdout.splitlines() if line.startswith("weights fingerprint ")]
    assert len(lines) == 1, result.stdout[-2000:]
    return lines[0].split()[2]


def losses(run_dir):
    """Every logged value of log.csv but the epoch's seconds (and CSVLogger's empty validation columns), by row."""
    import csv

    with open(run_dir / "log.csv") as file:
        return [{key: float(value) for key, value in row.items() if "time/" not in key and value != "NA"}
                for row in csv.DictReader(file)]


@pytest.mark.slow
def test_two_workers_train_in_step_write_one_run_folder_and_resume(tmp_path, run_script):
    root = tiny_real_mnist(tmp_path / "data")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    flags = [*FLAGS, "--data-dir", str(root)]
    workers = run_workers([*flags, "--epochs", "2", "--distribute", "multiworker", "--out", str(tmp_path / "run")],
                          cwd=tmp_path, scratch=scratch)
    for index, result in enumerate(workers):
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"this is worker {index} of 2" in result.stdout
    assert fingerprint(workers[0]) == fingerprint(workers[1])
    model, _ = common.load_checkpoint(tmp_path / "run" / "model.keras")
    assert common.weights_fingerprint(model) == fingerprint(workers[0])  # the chief saved the trained weights
    # One run folder, written by the chief; the other worker's scratch folder is gone.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "run", "scratch"]
    assert not any(scratch.iterdir())
    assert "Run folder:" in workers[0].stdout and "Run folder:" not in workers[1].stdout

    # Each worker trained on its half of every global batch: the global losses are a one-process run's.
    single = run_script("cycle_vae.py", *flags, "--epochs", "2", "--out", str(tmp_path / "single"), cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    for together, alone in zip(losses(tmp_path / "run"), losses(tmp_path / "single"), strict=True):
        assert together == pytest.approx(alone, rel=1e-4)

    # Both workers restore the chief's backup and continue in step.
    workers = run_workers(["--resume", "--epochs", "3", "--out", str(tmp_path / "run")], cwd=tmp_path,
                          scratch=scratch)
    for result in workers:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Restored epoch 2 from" in result.stdout
    assert fingerprint(workers[0]) == fingerprint(workers[1])
    assert [row["epoch"] for row in losses(tmp_path / "run")] == [0, 1, 2]
    assert not any(scratch.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("script, flags", [
    ("adversarial_disentangle.py", ["--batch-size", "16"]),
    ("mlvae.py", ["--groups", "4", "--group-size", "4"]),
])
def test_every_model_trains_in_step_on_two_workers(tmp_path, run_script, script, flags):
    """The scripts create their strategy before TensorFlow's first op and train as one process would: the gated
    discriminator step (decided in the cross-replica context) and the ML-VAE's groups (split whole)."""
    root = tiny_real_mnist(tmp_path / "data")
    flags = ["--dataset", "mnist", *flags, "--steps-per-epoch", "2", "--epochs", "1", "--no-evaluate",
             "--data-dir", str(root)]
    workers = run_workers([*flags, "--distribute", "multiworker", "--out", str(tmp_path / "run")], cwd=tmp_path,
                          scratch=tmp_path, script=script)
    for result in workers:
        assert result.returncode == 0, result.stderr[-3000:]
    assert fingerprint(workers[0]) == fingerprint(workers[1])
    single = run_script(script, *flags, "--out", str(tmp_path / "single"), cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    for together, alone in zip(losses(tmp_path / "run"), losses(tmp_path / "single"), strict=True):
        assert together == pytest.approx(alone, rel=1e-4)


def test_multiworker_without_tf_config_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(SystemExit, match="TF_CONFIG environment variable, which is not set"):
        common.distribution(cycle_vae.Config(distribute="multiworker", out="run"), 64)


@pytest.mark.parametrize("tf_config, message", [
    ("{not json", "not a cluster description"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}}', "not a cluster description"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}', "task worker 2 is not in"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "task ps 0 is not in"),
])
def test_a_malformed_tf_config_is_refused_with_the_fix(monkeypatch, tf_config, message):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(SystemExit, match=message):
        common.distribution(cycle_vae.Config(distribute="multiworker", out="run"), 64)


def test_multiworker_needs_the_run_folder_named(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}')
    with pytest.raises(SystemExit, match="needs --out"):
        common.distribution(cycle_vae.Config(distribute="multiworker"), 64)
