"""A training step under tf.distribute.MirroredStrategy over two logical CPU devices equals the step on one device.

Each model's custom train_step divides its per-replica loss by the number of replicas (the strategy sums their
gradients), draws its noise as one device would (common.replica_normal), and takes the adversarial model's gated
D step in the cross-replica context (common.apply_if). tests/distributed_step.py runs every case in a fresh
process, where two logical CPU devices can still be configured.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

HELPER = pathlib.Path(__file__).with_name("distributed_step.py")
# The cases of distributed_step.CASES (that module configures TensorFlow's devices on import: not imported here).
CASES = ["cycle_vae joint", "cycle_vae separate", "adversarial reference", "adversarial joint",
         "adversarial current gate", "adversarial gate closed", "mlvae member", "mlvae group", "beta_vae"]


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    from conftest import write_mnist

    root = tmp_path_factory.mktemp("mnist-data")
    write_mnist(root, n_train=120, n_test=40)
    result = subprocess.run([sys.executable, str(HELPER), str(root)], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "DISENTANGLE_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-4000:]
    steps = {line["case"]: line for line in map(json.loads, result.stdout.splitlines())}
    assert sorted(steps) == sorted(CASES)
    return steps


@pytest.mark.parametrize("case", CASES)
def test_two_replicas_take_the_same_step_as_one_device(steps, case):
    step = steps[case]
    assert step["replicas"] == 2
    # The step moves the weights by 0.05-1.2 with SGD(0.1); a gradient summed without the 1/replicas factor, or
    # noise drawn twice for the same rows, would differ by about that much.
    assert step["update"] > 1e-2
    assert step["difference"] < 1e-4
    for name, value in step["trackers_one"].items():  # the trackers report the global batch's values
        assert step["trackers_mirrored"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


def test_the_gated_discriminator_steps_alike_on_both_sides_of_its_gate(steps):
    for case in ("adversarial reference", "adversarial joint", "adversarial current gate"):
        assert steps[case]["d_update"] > 1e-3
        assert steps[case]["d_update_mirrored"] == pytest.approx(steps[case]["d_update"], rel=1e-4)
    closed = steps["adversarial gate closed"]
    assert closed["d_update"] == 0.0 and closed["d_update_mirrored"] == 0.0  # not even Adam's moments move
    assert closed["trackers_one"]["gan/d_trained_fraction"] == closed["trackers_mirrored"][
        "gan/d_trained_fraction"] == 0.0


class FakeStrategy:
    """Stands in for a MirroredStrategy over several GPUs, which this CPU machine does not have."""

    def __init__(self, replicas=3):
        self.num_replicas_in_sync = replicas
        self.extended = type("Extended", (), {"worker_devices": [f"/gpu:{i}" for i in range(replicas)]})()


def test_a_global_batch_that_does_not_split_evenly_is_refused(monkeypatch):
    import common
    import cycle_vae

    monkeypatch.setattr(common.tf.distribute, "MirroredStrategy", lambda: FakeStrategy(3))
    config = cycle_vae.Config(distribute="mirrored", batch_size=64)
    with pytest.raises(SystemExit, match="global batch of 64 over 3 replicas .*divisible by 3"):
        common.distribution(config, config.batch_size)
    assert common.distribution(cycle_vae.Config(distribute="mirrored"), 63).num_replicas_in_sync == 3


def test_the_mlvae_refuses_to_split_its_batch_groups_over_replicas(monkeypatch, tiny_mnist):
    import common
    import mlvae

    root, _ = tiny_mnist
    monkeypatch.setattr(common, "distribution", lambda config, batch: FakeStrategy(2))
    with pytest.raises(SystemExit, match="--grouping batch .* split over the replicas"):
        mlvae.main(["--data-dir", str(root), "--grouping", "batch", "--distribute", "mirrored", "--epochs", "1"])


def test_a_mirrored_run_trains_and_resumes(tiny_mnist, tmp_path, run_script):
    """--distribute mirrored end to end (one replica on this CPU): the strategy scope, fit() and --resume."""
    root, _ = tiny_mnist
    flags = ["--data-dir", str(root), "--batch-size", "16", "--steps-per-epoch", "2", "--no-evaluate"]
    result = run_script("beta_vae.py", "--dataset", "mnist", "--architecture", "mlp", "--epochs", "1",
                        "--distribute", "mirrored", "--out", str(tmp_path / "run"), *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--distribute mirrored: 1 replica(s)" in result.stdout
    result = run_script("beta_vae.py", "--resume", "--out", str(tmp_path / "run"), "--epochs", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["distribute"] == "mirrored"
    assert (tmp_path / "run" / "log.csv").read_text().count("\n") == 3  # header and epochs 0, 1
    # The strategy trains on the same batches as no strategy: fit() must not take a pass of the pipeline (whose
    # k-th pass draws epoch k's batches) to build the model before the first epoch.
    result = run_script("beta_vae.py", "--dataset", "mnist", "--architecture", "mlp", "--epochs", "1",
                        "--out", str(tmp_path / "plain"), *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    first = [(tmp_path / name / "log.csv").read_text().splitlines()[1].split(",") for name in ("run", "plain")]
    header = (tmp_path / "plain" / "log.csv").read_text().splitlines()[0].split(",")
    assert float(first[0][header.index("loss")]) == pytest.approx(float(first[1][header.index("loss")]), rel=1e-5)
