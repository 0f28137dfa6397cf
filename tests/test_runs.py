"""Runs that survive: kills, full or read-only disks and bad flags, and what a user gets from each.

Kills are simulated by leaving the files a kill would leave (a cut-short file, a temporary file, a log row
without its backup); full and read-only disks by making the write raise. docs/results/reliability.md lists
the promises these tests hold the code to.
"""
import dataclasses
import errno
import json
import os
import pathlib
import shutil
from typing import ClassVar, Optional

import keras
import numpy as np
import pytest
import tensorflow as tf

import beta_vae
import common
import cycle_vae


def tiny_model(seed=0, learning_rate=0.01):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    return model


def tiny_data():
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)  # 4 batches of 8 per epoch.


def weights(model):
    return [w.numpy() for w in model.weights]


def logged_epochs(run_dir):
    return [int(line.split(",")[0]) for line in (run_dir / "log.csv").read_text().splitlines()[1:]]


def fit(model, run_dir, epochs, extra=()):
    x, y = tiny_data()
    callbacks = common.training_callbacks(run_dir)
    return model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0, callbacks=[*callbacks, *extra])


# ---------------------------------------------------------------------------------------------------
# 1 and 3: a kill at any moment loses at most the epoch it hit; log.csv never holds an epoch twice
# ---------------------------------------------------------------------------------------------------


def test_a_kill_while_a_backup_is_written_loses_only_that_epoch(tmp_path, capsys):
    model = tiny_model()
    fit(model, tmp_path, epochs=2)
    after_two = weights(model)
    backup = tmp_path / "backup"
    good = (backup / "epoch_0002.weights.h5").read_bytes()
    # A kill while epoch 3 was saved: its log row is written, its backup is a file cut short (where an in-place
    # writer would have left it) beside the temporary file of the atomic writer.
    with open(tmp_path / "log.csv", "a") as file:
        file.write("2,0.5,0.1\n")
    (backup / "epoch_0003.weights.h5").write_bytes(good[:96])
    (backup / ".epoch_0003.weights.h5.tmp-4194000.weights.h5").write_bytes(good[:96])
    assert common.completed_epochs(tmp_path) == 2

    model = tiny_model(seed=1)  # A new process.
    restored = []
    record = keras.callbacks.LambdaCallback(on_train_begin=lambda logs: restored.extend(weights(model)))
    history = fit(model, tmp_path, epochs=4, extra=[record])
    assert len(history.history["loss"]) == 2  # Epochs 3 and 4.
    for restored_weight, saved_weight in zip(restored, after_two):
        np.testing.assert_array_equal(restored_weight, saved_weight)
    out = capsys.readouterr().out
    assert "Skipping" in out and "epoch_0003.weights.h5" in out and "Restored epoch 2" in out
    assert logged_epochs(tmp_path) == [0, 1, 2, 3]
    assert common.completed_epochs(tmp_path) == 4
    names = sorted(p.name for p in backup.iterdir() if not p.name.startswith("."))
    assert names == ["epoch_0003.weights.h5", "epoch_0004.weights.h5"]


def test_the_writer_never_replaces_a_good_backup_with_a_broken_one(tmp_path, monkeypatch):
    model = tiny_model()
    fit(model, tmp_path, epochs=1)
    good = (tmp_path / "backup" / "epoch_0001.weights.h5").read_bytes()

    def full_disk(self, filepath, *args, **kwargs):
        pathlib.Path(filepath).write_bytes(good[:96])  # Half written, then the disk is full.
        raise OSError(errno.ENOSPC, "No space left on device", str(filepath))

    monkeypatch.setattr(keras.Model, "save_weights", full_disk)
    with pytest.raises(OSError):
        fit(model, tmp_path, epochs=2)
    assert (tmp_path / "backup" / "epoch_0001.weights.h5").read_bytes() == good
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == ["epoch_0001.weights.h5"]
    assert common.completed_epochs(tmp_path) == 1
    assert logged_epochs(tmp_path) == [0, 1]  # The row of the epoch whose backup failed ...
    common.training_callbacks(tmp_path)
    assert logged_epochs(tmp_path) == [0]  # ... goes when the run is resumed, which trains it again.


def test_backups_of_earlier_versions_resume_from_their_intact_copy(tmp_path, capsys):
    """keras.callbacks.BackupAndRestore's layout (earlier versions): a kill left latest.* cut short."""
    model = tiny_model()
    x, y = tiny_data()
    keras_backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False,
                                                    double_checkpoint=True)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[keras_backup])
    backup = tmp_path / "backup"
    assert json.loads((backup / "training_metadata.json.bkp").read_text())["epoch"] == 1
    (backup / "latest.weights.h5").write_bytes((backup / "latest.weights.h5").read_bytes()[:96])
    (backup / "training_metadata.json").write_text("")
    assert common.completed_epochs(tmp_path) == 1  # The .bkp pair.

    # With no intact copy at all (a kill in the first epoch), the run starts again instead of failing.
    for name in ("latest.weights.h5.bkp", "training_metadata.json.bkp"):
        (backup / name).unlink()
    assert common.completed_epochs(tmp_path) == 0
    history = fit(tiny_model(), tmp_path, epochs=2)
    assert len(history.history["loss"]) == 2
    assert "Skipping" in capsys.readouterr().out


def test_a_backup_of_another_model_is_refused_with_the_fix(tmp_path):
    fit(tiny_model(), tmp_path, epochs=1)
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    other.compile(optimizer="sgd", loss="mse")
    x, y = tiny_data()
    with pytest.raises(common.BackupError, match="does not fit this model.*without --resume"):
        other.fit(x, np.repeat(y, 2, axis=1), epochs=2, verbose=0, callbacks=common.training_callbacks(tmp_path))


# ---------------------------------------------------------------------------------------------------
# 2: --resume continues the run as it was configured
# ---------------------------------------------------------------------------------------------------


def parse(script, argv):
    module = {"cycle_vae": cycle_vae, "beta_vae": beta_vae}[script]
    return common.parse_config(module.Config, argv, resolve=module.resolve, script=script)


@pytest.fixture
def cycle_run(tmp_path, monkeypatch):
    """A cycle_vae run folder made by `--epochs 4 --steps-per-epoch 150 --data-dir data` in tmp_path/start."""
    start = tmp_path / "start"
    (start / "data").mkdir(parents=True)
    monkeypatch.chdir(start)
    argv = ["--epochs", "4", "--steps-per-epoch", "150", "--data-dir", "data", "--out", "runs/first"]
    run_dir = common.prepare_run_dir(parse("cycle_vae", argv), script="cycle_vae", name="mnist", argv=argv)
    return start / run_dir


def test_resume_takes_the_settings_from_the_runs_config(cycle_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # Elsewhere: the relative --data-dir was stored as an absolute path.
    config = parse("cycle_vae", ["--resume", "--out", str(cycle_run)])
    assert (config.epochs, config.steps_per_epoch) == (4, 150)
    assert config.data_dir == str(tmp_path / "start" / "data")
    assert config.lr_drop_epoch == 3 and config.z_dim == 16 and config.resume

    # What may change, changes, with a notice; config.json follows.
    config = parse("cycle_vae", ["--resume", "--out", str(cycle_run), "--epochs", "10", "--learning-rate", "3e-4"])
    assert (config.epochs, config.learning_rate, config.steps_per_epoch) == (10, 3e-4, 150)
    common.prepare_run_dir(config, script="cycle_vae", name="mnist", argv=[])
    out = capsys.readouterr().out
    assert "epochs = 10 (was 4)" in out and "learning_rate = 0.0003 (was 0.0001)" in out
    assert json.loads((cycle_run / "config.json").read_text())["config"]["steps_per_epoch"] == 150

    # Repeating a setting with the run's own value is fine.
    assert parse("cycle_vae", ["--resume", "--out", str(cycle_run), "--z-dim", "16"]).z_dim == 16


@pytest.mark.parametrize("flags, named", [
    (["--z-dim", "8"], "--z-dim 16 -> 8"),
    (["--dataset", "sprites"], "--dataset 'mnist' -> 'sprites'"),
    (["--reverse-mode", "joint"], "--reverse-mode 'separate' -> 'joint'"),
    (["--steps-per-epoch", "937"], "--steps-per-epoch 150 -> 937"),
    (["--seed", "1"], "--seed 0 -> 1"),
])
def test_resume_refuses_changes_that_would_not_fit_the_checkpoint(cycle_run, flags, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse("cycle_vae", ["--resume", "--out", str(cycle_run), *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: --resume:" in err and named in err and "--epochs" in err  # What may change is listed.


def test_resume_without_out_finds_the_latest_run_of_the_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, epochs in [("cycle_vae_mnist_20250101-000000", 4), ("cycle_vae_sprites_20260101-000000", 7),
                         ("beta_vae_mnist_20270101-000000", 9)]:
        (tmp_path / "runs" / name).mkdir(parents=True)
        record = {"script": name.split("_mnist")[0].split("_sprites")[0], "config": {"epochs": epochs}}
        (tmp_path / "runs" / name / "config.json").write_text(json.dumps(record))
    assert parse("cycle_vae", ["--resume"]).epochs == 7
    assert parse("cycle_vae", ["--resume", "--dataset", "mnist"]).epochs == 4


@pytest.mark.parametrize("case, expected", [
    ("existing run without --resume", "already holds a run"),
    ("--resume with nothing to resume", "no run to continue"),
    ("another script's run folder", "belongs to cycle_vae"),
    ("damaged config.json", "cannot be read as a run record"),
    ("--out is a file", "is a file, not a folder"),
])
def test_unusable_run_folders_are_one_line_errors_before_any_work(cycle_run, tmp_path, case, expected, capsys):
    argv = {"existing run without --resume": ("cycle_vae", ["--out", str(cycle_run)]),
            "--resume with nothing to resume": ("cycle_vae", ["--resume", "--out", str(tmp_path / "none")]),
            "another script's run folder": ("beta_vae", ["--resume", "--out", str(cycle_run)]),
            "damaged config.json": ("cycle_vae", ["--resume", "--out", str(cycle_run)]),
            "--out is a file": ("cycle_vae", ["--out", str(cycle_run / "config.json")])}[case]
    if case == "damaged config.json":
        (cycle_run / "config.json").write_text('{"script": "cycle_vae", "conf')
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------
# 4: every integer flag is checked before any work starts
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["cycle_vae", "beta_vae"])
@pytest.mark.parametrize("flag, value", [("--epochs", "-1"), ("--batch-size", "0"), ("--z-dim", "-3"),
                                         ("--s-dim", "-2"), ("--steps-per-epoch", "-5"), ("--grid-every", "0"),
                                         ("--learning-rate", "0")])
def test_bad_sizes_are_refused_naming_the_flag(script, flag, value, capsys):
    if script == "beta_vae" and flag == "--s-dim":
        pytest.skip("the beta-VAE has no s code")
    with pytest.raises(SystemExit) as exit_info:
        parse(script, [flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"{script}") or "error:" in err
    assert f"{flag} must" in err and value in err


# ---------------------------------------------------------------------------------------------------
# 8 and 11: file-system failures and divergence end in one line that says what to do
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ToyConfig(common.RunConfig):
    dataset: str = "toy"
    epochs: int = 3
    steps_per_epoch: Optional[int] = 4
    grid_every: int = 5
    learning_rate: float = 0.01
    quick: bool = False
    evaluate: bool = False

    CHANGEABLE_ON_RESUME: ClassVar[tuple] = common.RunConfig.CHANGEABLE_ON_RESUME + ("epochs",)


def train_toy(config):
    x, y = tiny_data()
    model = tiny_model(learning_rate=config.learning_rate)

    def pipeline(first_epoch):
        def rows():  # A generator, as data.py's pipelines are (tf.data runs it in a PyFunc).
            yield from zip(x, y)
        signature = (tf.TensorSpec((3,), tf.float32), tf.TensorSpec((1,), tf.float32))
        return tf.data.Dataset.from_generator(rows, output_signature=signature).batch(8).repeat()

    return common.train(model, config, script="toy", pipeline=pipeline, steps=4, describe="a toy", argv=[])


def exit_message(exit_info):
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message and "[[" not in message
    return message


def test_a_read_only_place_for_runs_is_one_line(tmp_path, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    with pytest.raises(SystemExit) as exit_info:
        train_toy(ToyConfig(out=str(tmp_path / "run")))
    message = exit_message(exit_info)
    assert "Read-only file system" in message and "--out a folder you can write to" in message


def test_a_full_disk_while_saving_keeps_the_run_resumable(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    saves = []

    def save_or_fail(model, path):
        saves.append(path)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(model, path)

    original = common.save_model
    monkeypatch.setattr(common, "save_model", save_or_fail)
    with pytest.raises(SystemExit) as exit_info:
        train_toy(ToyConfig(out=str(run_dir)))
    message = exit_message(exit_info)
    assert "disk is full" in message and f"--resume --out {run_dir}" in message
    assert common.completed_epochs(run_dir) == 1
    monkeypatch.setattr(common, "save_model", original)
    config = common.parse_config(ToyConfig, ["--resume", "--out", str(run_dir)], script="toy")
    assert train_toy(config) == run_dir and logged_epochs(run_dir) == [0, 1, 2]


def test_an_evaluation_that_cannot_write_says_where_the_model_is(tmp_path, monkeypatch):
    def read_only(run_dir, quick=False, data_dir=None):
        raise PermissionError(errno.EACCES, "Permission denied", str(run_dir / "eval"))

    monkeypatch.setattr(common, "evaluate", read_only)
    with pytest.raises(SystemExit) as exit_info:
        train_toy(ToyConfig(out=str(tmp_path / "run"), epochs=1, evaluate=True))
    message = exit_message(exit_info)
    assert "Permission denied" in message and "python eval_latents.py --ckpt" in message
    assert (tmp_path / "run" / "model.keras").is_file()


def test_divergence_is_one_line_naming_the_value(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        train_toy(ToyConfig(out=str(tmp_path / "run"), learning_rate=1e30))
    assert "Training diverged: loss became" in exit_message(exit_info)


def test_temporary_files_of_killed_writers_are_removed(cycle_run, capsys):
    dead, alive = 4194001, os.getpid()
    litter = [cycle_run / f".model.keras.tmp-{dead}.keras", cycle_run / "backup" / f".x.tmp-{dead}.weights.h5"]
    (cycle_run / "backup").mkdir()
    for path in litter:
        path.write_bytes(b"PK")
    (cycle_run / f".log.csv.tmp-{alive}.tmp").write_text("mine")  # A writer that is still running.
    config = parse("cycle_vae", ["--resume", "--out", str(cycle_run)])
    common.prepare_run_dir(config, script="cycle_vae", name="mnist", argv=[])
    assert not any(path.exists() for path in litter)
    assert (cycle_run / f".log.csv.tmp-{alive}.tmp").exists()


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="the warning is for machines without a GPU")
def test_float16_on_a_cpu_is_warned_about(capsys):
    assert common.set_precision("mixed_float16") == "mixed_float16"
    assert "many times slower" in capsys.readouterr().err
    common.set_precision("float32")
    assert capsys.readouterr().err == ""


def test_copies_of_the_run_folder_resume_where_they_are(cycle_run, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(cycle_run, moved)
    assert parse("cycle_vae", ["--resume", "--out", str(moved)]).out == str(moved)
