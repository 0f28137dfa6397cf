"""Fixtures shared by the test modules: tiny datasets written in the REAL on-disk formats, a script runner, and
the dtype-policy reset. Tests never import each other; what two modules need lives here."""
import gzip
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import data

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The real datasets beside the checkout (../shared/data), used by the tests marked `slow` when present.
SHARED = ROOT.parent / "shared" / "data"


def write_idx(path, array):
    """An MNIST idx file (gzip): magic 0x0803 / 0x0801, big-endian sizes, then the uint8 values."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def write_mnist(root, n_train=120, n_test=40, seed=0):
    """root/mnist/ with the four idx files of random images; labels cycle through the ten digits."""
    rng = np.random.default_rng(seed)
    folder = root / "mnist"
    folder.mkdir(parents=True)
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte.gz": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte.gz": (np.arange(n_test) * 3) % 10}
    for name, array in arrays.items():
        write_idx(folder / name, array.astype(np.uint8))
    return arrays


def write_dsprites(root, seed=0):
    """A real-format subset: 3 shapes x 2 scales x 4 orientations x 4 x 4 positions, every other row dropped."""
    rng = np.random.default_rng(seed)
    sizes = [1, 3, 6, 40, 32, 32]
    grid = np.stack(np.meshgrid([0], [0, 1, 2], [0, 3], [0, 10, 20, 30], [0, 5, 9, 31], [1, 2, 3, 4],
                                indexing="ij"), -1).reshape(-1, 6)
    classes = grid[rng.permutation(len(grid))[: len(grid) // 2]]  # a subset, deliberately NOT in radix order
    imgs = rng.integers(0, 2, (len(classes), 64, 64)).astype(np.uint8)
    metadata = {"latents_sizes": np.array(sizes), "latents_names": ("color", "shape", "scale", "orientation",
                                                                     "posX", "posY"), "description": "fixture"}
    folder = root / "dsprites"
    folder.mkdir(parents=True)
    np.savez(folder / data.DSPRITES_FILE, imgs=imgs, latents_classes=classes,
             latents_values=classes.astype(np.float64) / 10, metadata=np.array(metadata, dtype=object))
    return imgs, classes


def _run_script(script, *args, cwd, env=None):
    env = {**os.environ, data.OFFLINE_ENV: "1", "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


@pytest.fixture
def make_mnist():
    """write_mnist(root, n_train=120, n_test=40, seed=0) -> the arrays written."""
    return write_mnist


@pytest.fixture
def make_dsprites():
    """write_dsprites(root, seed=0) -> (images, latent classes) written."""
    return write_dsprites


@pytest.fixture
def run_script():
    """run_script(script, *args, cwd, env=None): the script in a subprocess, offline, -> CompletedProcess."""
    return _run_script


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")


@pytest.fixture
def shared_data():
    """The real datasets, or skip where they are not beside the checkout."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not here")
    return SHARED


@pytest.fixture
def tiny_mnist(tmp_path_factory, monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    root = tmp_path_factory.mktemp("mnist-data")
    write_mnist(root, n_train=320, n_test=100)
    return root, data.load_mnist(root)


@pytest.fixture
def tiny_dsprites(tmp_path_factory, monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    root = tmp_path_factory.mktemp("dsprites-data")
    write_dsprites(root)
    return root, data.load_dsprites(root)


@pytest.fixture(autouse=True)
def float32_policy():
    """Every test starts and ends with Keras' float32 policy, whatever a mixed-precision test set."""
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
