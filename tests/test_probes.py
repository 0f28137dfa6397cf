"""evaluation/probes.py's rows and probe tasks, and the dataset knowledge they ask data.py for, on small Dataset
objects built in memory (docs/evaluation.md Sec. 1)."""
import numpy as np

import data
import eval_latents
from evaluation import probes


def sprites_like(identities=12, frames=20):
    """A Sprites-shaped Dataset: splits by identity (8 train, 2 val, 2 test), per-frame action and direction."""
    identity = np.repeat(np.arange(identities), frames)
    attributes = np.repeat(np.random.default_rng(0).integers(0, 3, (identities, 7)), frames, axis=0)
    labels = {"identity": identity, "attributes": attributes, "action": np.tile(np.arange(frames) % 5, identities),
              "direction": np.tile(np.arange(frames) % 4, identities), "frame": np.tile(np.arange(frames), identities)}
    groups = {"train": np.arange(8), "val": np.arange(8, 10), "test": np.arange(10, 12)}
    splits = {name: np.flatnonzero(np.isin(identity, ids)) for name, ids in groups.items()}
    splits["all"] = np.arange(len(identity))
    return data.Dataset("sprites", np.zeros((len(identity), 4, 4, 3), np.uint8), labels, splits, "identity")


def mnist_like(n_train=200, n_test=50):
    digit = np.arange(n_train + n_test) % 10
    splits = {"train": np.arange(n_train), "test": np.arange(n_train, n_train + n_test),
              "all": np.arange(n_train + n_test)}
    return data.Dataset("mnist", np.zeros((len(digit), 4, 4, 1), np.uint8), {"digit": digit}, splits, "digit")


def test_sprites_targets_and_the_identity_task_within_the_test_identities():
    dataset = sprites_like()
    assert list(dataset.label_columns()) == list(data.ATTRIBUTES) + ["action", "direction", "identity"]
    assert dataset.specified_targets() == list(data.ATTRIBUTES) + ["identity"]
    assert dataset.split_label() == "identity"
    assert set(dataset.tsne_colourings()) <= set(dataset.label_columns())
    assert set(dataset.saved_labels()) <= set(dataset.labels)

    rng = np.random.default_rng(0)
    rows = probes.evaluation_rows(dataset, eval_latents.EvalConfig(sprites_frames_per_identity=5), rng)
    assert len(rows["train"]) == 8 * 5 and len(rows["val"]) == 2 * 5
    np.testing.assert_array_equal(rows["test"], dataset.rows("test"))
    tasks = probes.probe_tasks(dataset, rows, rng)
    assert set(tasks) == set(dataset.label_columns())
    n_train, n_val = len(rows["train"]), len(rows["val"])
    np.testing.assert_array_equal(tasks["action"][0], np.arange(n_train))  # the split of the identities
    np.testing.assert_array_equal(tasks["action"][1], np.arange(n_train, n_train + n_val))
    train, val, test = tasks["identity"]
    assert min(train.min(), val.min(), test.min()) >= n_train + n_val  # only frames of the test identities
    assert len(np.intersect1d(train, test)) == 0 and len(np.intersect1d(val, test)) == 0
    assert len(test) == 2 * 7 and len(train) + len(val) == 2 * 13  # 1/3 of each identity's 20 frames is tested


def test_mnist_holds_out_a_tenth_of_the_training_codes_for_early_stopping():
    dataset = mnist_like()
    assert dataset.specified_targets() == ["digit"] and dataset.split_label() is None
    rng = np.random.default_rng(0)
    rows = probes.evaluation_rows(dataset, eval_latents.EvalConfig(), rng)
    assert set(rows) == {"train", "test"}
    train, val, test = probes.probe_tasks(dataset, rows, rng)["digit"]
    assert len(val) == 20 and len(train) == 180 and len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(test, np.arange(200, 250))
