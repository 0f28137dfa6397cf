"""Tests of common.py: command line from dataclasses, run folders, image grids, callbacks, checkpoints."""

import csv
import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import types
import typing

import keras
import numpy as np
import PIL.Image
import pytest
import tensorflow as tf

import common


@dataclasses.dataclass
class ExampleConfig(common.RunConfig):
    dataset: typing.Literal["mnist", "sprites"] = "mnist"  # Which dataset to train on.
    epochs: int = 100  # Jha et al. 2018, Sec. 4.
    learning_rate: float = 1e-4  # Adam step size (reference code).
    quick: bool = False  # A few-minute CPU run.
    hidden: tuple[int, ...] = (64, 32)  # Widths of the hidden layers.
    kernel: tuple[int, int] = (3, 3)
    weights: list[float] = dataclasses.field(default_factory=lambda: [1.0, 0.5])
    label: typing.Optional[str] = None  # An optional tag.
    beta: float = dataclasses.field(default=4.0, metadata={"help": "KL weight, applied 100% of the time."})

    def __post_init__(self):
        if self.epochs < 0:
            raise ValueError(f"--epochs must be >= 0, got {self.epochs}")


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def test_defaults_and_types_from_the_command_line():
    assert common.parse_config(ExampleConfig, []) == ExampleConfig()
    config = common.parse_config(
        ExampleConfig,
        "--dataset sprites --epochs 3 --learning-rate 0.5 --quick --hidden 8 16 4 --kernel 5 7 "
        "--weights 2 0.25 --label hello --seed 7 --data-dir /data --precision float32 --benchmark".split(),
    )
    assert config == ExampleConfig(
        dataset="sprites", epochs=3, learning_rate=0.5, quick=True, hidden=(8, 16, 4), kernel=(5, 7),
        weights=[2.0, 0.25], label="hello", seed=7, data_dir="/data", precision="float32", benchmark=True,
    )
    assert isinstance(config.epochs, int) and isinstance(config.learning_rate, float)
    assert common.parse_config(ExampleConfig, ["--quick", "--no-quick"]).quick is False


def test_help_lists_every_field_with_default_and_comment(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # One line per flag, so phrases are not split by wrapping.
    with pytest.raises(SystemExit) as exit_info:
        common.parse_config(ExampleConfig, ["--help"], description="Train the example.")
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Train the example." in text
    assert "Adam step size (reference code). (default: 0.0001)" in text
    assert "Jha et al. 2018, Sec. 4. (default: 100)" in text
    assert "--quick, --no-quick" in text
    assert "{mnist,sprites}" in text
    assert "KL weight, applied 100% of the time. (default: 4.0)" in text
    assert "(default: (64, 32))" in text
    # Inherited RunConfig fields are there too, with their comments from common.py.
    for flag in ["--seed", "--precision", "--out", "--resume", "--data-dir", "--benchmark"]:
        assert flag in text
    # A None default reads as the comment alone: no "(default: None)" after "default a new folder".
    assert "Run folder; default a new folder runs/<script>_<dataset>_<time>/. --" in text
    assert "(default: None)" not in text
    assert "run options:" in text
    assert text.index("--learning-rate") < text.index("--seed")  # The script's own fields come first.


@pytest.mark.parametrize(
    "argv, flag",
    [(["--dataset", "cifar"], "--dataset"), (["--epochs", "ten"], "--epochs"), (["--precision", "half"], "--precision"),
     (["--kernel", "3"], "--kernel"), (["--epochs", "-1"], "--epochs")],
)
def test_bad_values_exit_with_code_2_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        common.parse_config(ExampleConfig, argv)
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


def test_unsupported_field_type_is_rejected():
    @dataclasses.dataclass
    class BadConfig:
        table: dict = dataclasses.field(default_factory=dict)

    with pytest.raises(TypeError, match="table"):
        common.build_parser(BadConfig)


def test_config_without_source_gets_a_parser_without_help():
    dynamic = dataclasses.make_dataclass("DynamicConfigWithoutSource", [("width", int, 8)], bases=(common.RunConfig,))
    parser = common.build_parser(dynamic)
    assert parser.parse_args(["--width", "3", "--seed", "2"]).width == 3


def test_config_dict_round_trip_through_json():
    config = ExampleConfig(dataset="sprites", hidden=(1, 2), weights=[0.1], label="x", seed=3)
    restored = common.config_from_dict(ExampleConfig, json.loads(json.dumps(common.config_to_dict(config))))
    assert restored == config and isinstance(restored.hidden, tuple)
    # Keys from other versions of a script are ignored; missing keys take their defaults.
    partial = common.config_from_dict(ExampleConfig, {"epochs": 5, "removed_option": 1})
    assert partial == ExampleConfig(epochs=5)


# ---------------------------------------------------------------------------------------------------
# Precision and seeds
# ---------------------------------------------------------------------------------------------------


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="auto resolves to float32 only on a CPU")
def test_set_precision_resolves_auto_on_cpu_and_rejects_bad_names():
    try:
        assert common.set_precision("auto") == "float32"
        assert keras.config.dtype_policy().name == "float32"
        assert common.set_precision("mixed_bfloat16") == "mixed_bfloat16"
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        with pytest.raises(ValueError, match="mixed_float16"):
            common.set_precision("float16")
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize("capabilities, expected", [([(7, 5)], "mixed_float16"), ([(9, 0), (8, 0)], "mixed_bfloat16"),
                                                     ([(8, 6), (7, 0)], "mixed_float16")])
def test_set_precision_auto_on_gpus(capabilities, expected, monkeypatch):
    # Pretend GPUs are present; the slowest one decides.
    gpus = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(len(capabilities))]
    details = {gpu.name: {"compute_capability": capability} for gpu, capability in zip(gpus, capabilities)}
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: gpus if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda device: details[device.name])
    try:
        assert common.set_precision("auto") == expected
        assert keras.config.dtype_policy().name == expected
    finally:
        keras.config.set_dtype_policy("float32")


def test_set_seed_makes_draws_repeatable():
    common.set_seed(5)
    first = (np.random.rand(), keras.random.normal((3,)).numpy())
    common.set_seed(5)
    second = (np.random.rand(), keras.random.normal((3,)).numpy())
    assert first[0] == second[0]
    np.testing.assert_array_equal(first[1], second[1])


# ---------------------------------------------------------------------------------------------------
# Run folders
# ---------------------------------------------------------------------------------------------------


def test_prepare_run_dir_writes_the_record_and_refuses_to_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = ExampleConfig(seed=3)
    run_dir = common.prepare_run_dir(config, script="cycle_vae", name="mnist", argv=["--seed", "3"])
    assert re.fullmatch(r"cycle_vae_mnist_\d{8}-\d{6}", run_dir.name) and run_dir.parent == pathlib.Path("runs")
    record = json.loads((run_dir / "config.json").read_text())
    assert record["script"] == "cycle_vae" and record["name"] == "mnist"
    assert record["config"]["seed"] == 3 and record["config"]["out"] == str(run_dir)
    assert record["precision"] == "float32" and record["created"]
    assert "python cycle_vae.py --seed 3" in (run_dir / "command.txt").read_text()
    assert json.loads((run_dir / "versions.json").read_text())["keras"] == keras.__version__
    assert not list(run_dir.glob(".*tmp*"))  # No temporary files left behind.

    # A second run started in the same second gets its own folder.
    assert common.prepare_run_dir(config, script="cycle_vae", name="mnist", argv=[]) != run_dir

    with pytest.raises(FileExistsError, match="--resume"):
        common.prepare_run_dir(ExampleConfig(out=str(run_dir)), script="cycle_vae", name="mnist", argv=[])

    resume_config = ExampleConfig(out=str(run_dir), resume=True, epochs=7)
    resumed = common.prepare_run_dir(resume_config, "cycle_vae", "mnist", argv=[])
    assert resumed == run_dir
    assert "Resuming with a changed setting: epochs = 7 (was 100)." in capsys.readouterr().out
    record = json.loads((run_dir / "config.json").read_text())
    assert record["config"]["epochs"] == 7 and len(record["resumed"]) == 1
    command = (run_dir / "command.txt").read_text()
    assert command.count("python cycle_vae.py") == 2 and "(resumed)" in command


def test_resume_picks_the_latest_run_of_this_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder, script in [
        ("beta_vae_mnist_20240101-000000", "beta_vae"),
        ("beta_vae_mnist_20250101-000000", "beta_vae"),
        ("beta_vae_mnist_20250101-000000-2", "beta_vae"),
        ("beta_vae_mnist_big_20300101-000000", "beta_vae"),  # Another dataset name.
    ]:
        (tmp_path / "runs" / folder).mkdir(parents=True)
        (tmp_path / "runs" / folder / "config.json").write_text(json.dumps({"script": script, "config": {}}))
    (tmp_path / "runs" / "beta_vae_mnist_20290101-000000").mkdir()  # No config.json: never started.

    run_dir = common.prepare_run_dir(ExampleConfig(resume=True), script="beta_vae", name="mnist", argv=[])
    assert run_dir.name == "beta_vae_mnist_20250101-000000-2"

    with pytest.raises(FileNotFoundError, match="--out"):
        common.prepare_run_dir(ExampleConfig(resume=True), script="beta_vae", name="sprites", argv=[])
    with pytest.raises(FileNotFoundError, match="no run to continue"):
        common.prepare_run_dir(ExampleConfig(resume=True, out="runs/empty"), script="beta_vae", name="mnist", argv=[])


def test_resume_refuses_a_folder_of_another_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = common.prepare_run_dir(ExampleConfig(), script="cycle_vae", name="mnist", argv=[])
    with pytest.raises(ValueError, match="belongs to cycle_vae"):
        common.prepare_run_dir(ExampleConfig(out=str(run_dir), resume=True), script="beta_vae", name="mnist", argv=[])


# ---------------------------------------------------------------------------------------------------
# Image grids
# ---------------------------------------------------------------------------------------------------


def test_tile_images_places_cells_between_padding():
    images = np.random.default_rng(0).uniform(0.0, 0.9, size=(2, 3, 4, 5, 3))
    grid = common.tile_images(images, pad=2)
    assert grid.shape == (2 * 4 + 2, 3 * 5 + 2 * 2, 3)
    np.testing.assert_array_equal(grid[0:4, 0:5], images[0, 0])
    np.testing.assert_array_equal(grid[6:10, 14:19], images[1, 2])
    assert np.all(grid[4:6] == 1.0) and np.all(grid[:, 5:7] == 1.0)

    gray = common.tile_images(np.zeros((3, 1, 2, 2), np.uint8), pad=1)
    assert gray.shape == (8, 2) and gray.dtype == np.uint8
    assert np.all(gray[2] == 255) and np.all(gray[5] == 255) and np.all(gray[:2] == 0)
    with pytest.raises(ValueError, match="rows, cols"):
        common.tile_images(np.zeros((4, 4, 3)))


def test_save_image_grid_writes_a_png_of_the_right_size(tmp_path):
    images = np.zeros((2, 3, 4, 5, 3))
    images[1, 2] = 1.0
    path = common.save_image_grid(images, tmp_path / "nested" / "grid.png", pad=2)
    with PIL.Image.open(path) as png:
        assert png.size == (19, 10) and png.mode == "RGB"
        pixels = np.asarray(png)
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[4, 0].tolist() == [255, 255, 255]
    assert pixels[9, 18].tolist() == [255, 255, 255]

    common.save_image_grid(np.full((1, 2, 3, 3, 1), 0.5), tmp_path / "gray.png")
    with PIL.Image.open(tmp_path / "gray.png") as png:
        assert png.size == (8, 3) and png.mode == "L" and np.asarray(png)[0, 0] == 128


# ---------------------------------------------------------------------------------------------------
# Callbacks
# ---------------------------------------------------------------------------------------------------


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


def tiny_data():
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)  # 4 batches of 8 per epoch.


class Sabotage(keras.callbacks.Callback):
    """Makes training go NaN in the given (0-based) epoch, and records the weights after every epoch.

    mode="batch" sets every weight to NaN when the epoch begins, so the loss is NaN from its first batch;
    mode="epoch_end" only reports a NaN val_loss at the end of the epoch (it goes first in the callback list,
    and Keras hands the same logs dict to the callbacks after it).
    """

    def __init__(self, epoch, mode):
        super().__init__()
        self.epoch, self.mode, self.weights_after_epoch = epoch, mode, []

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch and self.mode == "batch":
            for weight in self.model.weights:
                weight.assign(np.full(weight.shape, np.nan, "float32"))

    def on_epoch_end(self, epoch, logs=None):
        self.weights_after_epoch.append([w.numpy() for w in self.model.weights])
        if epoch == self.epoch and self.mode == "epoch_end":
            logs["val_loss"] = float("nan")


@pytest.mark.parametrize(
    "mode, where, csv_rows",
    [("batch", "loss became nan at epoch 3, batch 1", 2),
     ("epoch_end", "val_loss became nan at the end of epoch 3", 3)],
)
def test_nan_guard_stops_training_and_keeps_the_last_good_checkpoint(mode, where, csv_rows, tmp_path):
    model, (x, y) = tiny_model(), tiny_data()
    sabotage = Sabotage(epoch=2, mode=mode)
    callbacks = common.training_callbacks(tmp_path)
    with pytest.raises(common.TrainingDiverged) as error:
        model.fit(x, y, batch_size=8, epochs=5, shuffle=False, verbose=0, callbacks=[sabotage, *callbacks])
    message = str(error.value)
    assert where in message
    assert f"last good checkpoint is kept at {tmp_path / 'model.keras'}" in message
    assert model.stop_training
    guard = next(c for c in callbacks if isinstance(c, common.NaNGuard))
    assert guard.message == message

    # model.keras and the backup for --resume both still hold the end of epoch 2.
    saved = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    for saved_weight, good_weight in zip(saved.weights, sabotage.weights_after_epoch[1]):
        np.testing.assert_array_equal(saved_weight.numpy(), good_weight)
    assert common.completed_epochs(tmp_path) == 2
    # The CSV log records a diverging epoch that ended before the guard stopped training.
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 1 + csv_rows


def test_checkpoint_skips_epochs_with_non_finite_logs(tmp_path, capsys):
    model = tiny_model()
    checkpoint = common.LatestCheckpoint(tmp_path / "model.keras")
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"loss": 1.0})
    good_bytes = (tmp_path / "model.keras").read_bytes()
    model.layers[0].kernel.assign(np.zeros((3, 1)))
    checkpoint.on_epoch_end(1, {"loss": 0.5, "val_loss": float("inf")})
    assert (tmp_path / "model.keras").read_bytes() == good_bytes
    assert "Not saving epoch 2: val_loss is inf" in capsys.readouterr().out
    checkpoint.on_epoch_end(2, {"loss": 0.5})
    assert (tmp_path / "model.keras").read_bytes() != good_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]  # No temporary file left.


class Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt("simulated interruption")


def test_backup_and_restore_resumes_from_the_last_epoch(tmp_path):
    (x, y), grid = tiny_data(), lambda model: np.zeros((2, 2, 4, 4))
    model = tiny_model(seed=0)
    with pytest.raises(KeyboardInterrupt):
        callbacks = common.training_callbacks(tmp_path, image_grid_fn=grid, grid_every=3)
        model.fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[*callbacks, Interrupt()])
    weights_at_interruption = [w.numpy() for w in model.weights]

    # A new process: a freshly initialised model, new callbacks.
    model = tiny_model(seed=1)
    restored = []
    record = keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: restored.extend(w.numpy() for w in model.weights)
    )
    callbacks = common.training_callbacks(tmp_path, image_grid_fn=grid, grid_every=3)
    history = model.fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[*callbacks, record])
    assert len(history.history["loss"]) == 2  # Only epochs 3 and 4 ran.
    for restored_weight, saved_weight in zip(restored, weights_at_interruption):
        np.testing.assert_array_equal(restored_weight, saved_weight)
    assert int(model.optimizer.iterations.numpy()) == 4 * 4  # The optimizer state came back too.
    epochs_logged = [int(line.split(",")[0]) for line in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    assert epochs_logged == [0, 1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["epoch_003.png", "epoch_004.png"]
    # The two newest backups are kept, so that a longer --epochs can continue.
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == ["epoch_0003.weights.h5", "epoch_0004.weights.h5"]
    # Scripts start their data pipelines at the completed epoch, and the training time adds up over sessions.
    assert common.completed_epochs(tmp_path) == 4 and common.completed_epochs(tmp_path / "nothing") == 0
    seconds = [float(row["time/epoch_seconds"]) for row in csv.DictReader(open(tmp_path / "log.csv"))]
    assert len(seconds) == 4 and all(s > 0 for s in seconds)
    assert common.training_minutes(tmp_path) == pytest.approx(sum(seconds) / 60)


# ---------------------------------------------------------------------------------------------------
# Saving and loading checkpoints
# ---------------------------------------------------------------------------------------------------

MODEL_SCRIPT = '''
import keras


@keras.saving.register_keras_serializable(package="common_test")
class {class_name}(keras.Model):
    def __init__(self, units=2, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense = keras.layers.Dense(units)

    def call(self, x):
        return self.dense(x)

    def get_config(self):
        return {{**super().get_config(), "units": self.units}}
'''


@pytest.fixture
def write_script(tmp_path, monkeypatch):
    """Writes a model script into tmp_path, importable by name for this test only."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names = []

    def write(module_name, class_name):
        (tmp_path / f"{module_name}.py").write_text(textwrap.dedent(MODEL_SCRIPT.format(class_name=class_name)))
        names.append(module_name)
        sys.modules.pop(module_name, None)
        return __import__(module_name)

    yield write
    for name in names:
        sys.modules.pop(name, None)


def saved_run(tmp_path, monkeypatch, module, class_name="TinyModel", script=None):
    monkeypatch.chdir(tmp_path)
    model = getattr(module, class_name)(units=3)
    model(np.zeros((1, 4), "float32"))
    run_dir = common.prepare_run_dir(common.RunConfig(seed=9), script=script or module.__name__, name="toy", argv=[])
    common.save_model(model, run_dir / "model.keras")
    return model, run_dir


def test_save_and_load_checkpoint_round_trip(tmp_path, monkeypatch, write_script):
    module = write_script("common_test_model_a", "TinyModel")
    model, run_dir = saved_run(tmp_path, monkeypatch, module)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    for path in [run_dir, run_dir / "model.keras"]:
        loaded, info = common.load_checkpoint(path)
        assert type(loaded) is module.TinyModel and loaded.units == 3
        np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
        assert info["script"] == "common_test_model_a" and info["name"] == "toy"
        assert info["config"]["seed"] == 9 and info["run_dir"] == run_dir
    assert sorted(p.name for p in run_dir.iterdir()) == ["command.txt", "config.json", "model.keras", "versions.json"]


def test_load_checkpoint_errors(tmp_path, monkeypatch, write_script):
    module = write_script("common_test_model_b", "TinyModel")
    _, run_dir = saved_run(tmp_path, monkeypatch, module)
    good = (run_dir / "model.keras").read_bytes()

    with pytest.raises(common.CheckpointError, match="does not exist"):
        common.load_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(common.CheckpointError, match="without model.keras"):
        common.load_checkpoint(tmp_path / "empty")
    (run_dir / "truncated.keras").write_bytes(good[: len(good) // 2])
    with pytest.raises(common.CheckpointError, match="not a valid .keras file"):
        common.load_checkpoint(run_dir / "truncated.keras")
    (run_dir / "random.keras").write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(common.CheckpointError, match="not a valid .keras file"):
        common.load_checkpoint(run_dir / "random.keras")

    (tmp_path / "lonely").mkdir()
    (tmp_path / "lonely" / "model.keras").write_bytes(good)
    with pytest.raises(common.CheckpointError, match="config.json.*must stay in its run folder"):
        common.load_checkpoint(tmp_path / "lonely")

    record = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**record, "script": "no_such_script_xyz"}))
    with pytest.raises(common.CheckpointError, match="no_such_script_xyz"):
        common.load_checkpoint(run_dir)
    assert issubclass(common.CheckpointError, ValueError)


def test_load_checkpoint_refuses_a_model_of_another_script(tmp_path, monkeypatch, write_script):
    module = write_script("common_test_model_c", "TinyModel")
    write_script("common_test_model_d", "OtherModel")
    # A TinyModel checkpoint in a run folder that says common_test_model_d trained it.
    _, run_dir = saved_run(tmp_path, monkeypatch, module, script="common_test_model_d")
    with pytest.raises(common.CheckpointError, match="common_test_model_d does not define"):
        common.load_checkpoint(run_dir)


# ---------------------------------------------------------------------------------------------------
# Benchmark
# ---------------------------------------------------------------------------------------------------


class CustomStepModel(keras.Model):
    """A model in the style of the scripts: dict batches and its own train_step with a loss tracker."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(4)
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        return [self.loss_tracker]

    def call(self, batch):
        return self.dense(batch["image"])

    def train_step(self, batch):
        with tf.GradientTape() as tape:
            loss = keras.ops.mean(keras.ops.square(self(batch) - batch["image"]))
            scaled = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, self.trainable_weights)
        self.optimizer.apply(gradients, self.trainable_weights)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}


def _benchmark_on_two_batches(model):
    """common.benchmark_training of `model` (compiled here) on 2 batches of 8: 2 warm-up and 5 timed steps."""
    images = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices({"image": images}).batch(8, drop_remainder=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return common.benchmark_training(model, dataset, images_per_step=8, warmup=2, steps=5)


def test_benchmark_training_times_steps_and_prints_one_line(capsys):
    model = CustomStepModel()
    result = _benchmark_on_two_batches(model)
    assert result["ms_per_iter"] > 0 and result["images_per_s"] > 0
    assert result["steps"] == 5 and result["warmup"] == 2
    assert int(model.optimizer.iterations.numpy()) == 7  # More steps than the 2 batches: the dataset repeated.
    output = capsys.readouterr().out
    assert re.fullmatch(r"benchmark: \d+\.\d{2} ms/iter, \d+ images/s\nbenchmark runtime: gpus \d+, cpu_cores \d+, "
                        r"cpu_allocator (bfc|default), intra_op_threads \d+, inter_op_threads \d+\n", output)
    assert result["runtime"]["cpu_cores"] == os.cpu_count()


class SometimesSkippingModel(CustomStepModel):
    """Reports, as the adversarial model does for its gated D update, the fraction of steps that took a branch:
    here every step whose optimizer step count is even (0, 2, 4, 6 of steps 0-6)."""

    def __init__(self):
        super().__init__()
        self.fraction_tracker = keras.metrics.Mean(name="gate/trained_fraction")

    @property
    def metrics(self):
        return [self.loss_tracker, self.fraction_tracker]

    def train_step(self, batch):
        self.fraction_tracker.update_state(keras.ops.cast(self.optimizer.iterations % 2 == 0, "float32"))
        logs = super().train_step(batch)
        return {**logs, "gate/trained_fraction": self.fraction_tracker.result()}


def test_benchmark_training_says_how_often_a_skippable_update_ran(capsys):
    result = _benchmark_on_two_batches(SometimesSkippingModel())
    assert result["fractions"] == {"gate/trained_fraction": pytest.approx(4 / 7)}
    assert capsys.readouterr().out.splitlines()[1] == "benchmark: over all 7 steps, gate/trained_fraction 0.57"


def test_runtime_settings_reads_thread_counts_from_the_environment_as_ints(monkeypatch):
    # With TensorFlow's own counts left at 0 ("its choice"), the environment's TF_NUM_*_THREADS are reported, and
    # as ints like TensorFlow's counts, so that result["runtime"] holds one type per field.
    monkeypatch.setattr(tf.config.threading, "get_intra_op_parallelism_threads", lambda: 0)
    monkeypatch.setattr(tf.config.threading, "get_inter_op_parallelism_threads", lambda: 0)
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "2")
    monkeypatch.delenv("TF_NUM_INTEROP_THREADS", raising=False)
    settings = common.runtime_settings()
    assert settings["intra_op_threads"] == 2 and settings["inter_op_threads"] == 0
    assert type(settings["intra_op_threads"]) is int and type(settings["inter_op_threads"]) is int


def test_check_ranges_names_the_first_flag_out_of_range():
    config = types.SimpleNamespace(epochs=0, z_dim=4, beta=-1.0, adam_epsilon=0.0, rate=0.5)
    common.check_ranges(config, at_least_one=("z_dim",), positive=("rate",), non_negative=("rate",))  # all hold
    with pytest.raises(ValueError, match=r"^--epochs must be at least 1, got 0\.$"):
        common.check_ranges(config, at_least_one=("z_dim", "epochs"))
    with pytest.raises(ValueError, match=r"^--adam-epsilon must be positive, got 0\.0\.$"):
        common.check_ranges(config, positive=("adam_epsilon",))
    with pytest.raises(ValueError, match=r"^--beta must not be negative, got -1\.0\.$"):
        common.check_ranges(config, non_negative=("rate", "beta"))


CPU_PROBE = textwrap.dedent("""
    import os
    import tensorflow as tf
    import common
    common.configure_cpu(one_thread_per_op=True)
    tf.matmul(tf.ones([64, 64]), tf.ones([64, 64]))
    print(os.environ.get("TF_CPU_ALLOCATOR_USE_BFC"), tf.config.threading.get_intra_op_parallelism_threads(),
          tf.config.threading.get_inter_op_parallelism_threads())
""")


@pytest.mark.parametrize("user_settings, expected", [
    # The pooled (BFC) allocator is asked for, and one thread per op (the cores shared between ops) on a machine
    # with at most 2 cores; with more cores TensorFlow's own choice (0, 0) is kept.
    ({}, "true 1 {cores}" if (os.cpu_count() or 1) <= 2 else "true 0 0"),
    # The user's choices are kept: their allocator setting, and the threads left to TF_NUM_*_THREADS.
    ({"TF_CPU_ALLOCATOR_USE_BFC": "false", "TF_NUM_INTRAOP_THREADS": "2"}, "false 0 0"),
])
def test_configure_cpu_sets_the_allocator_and_threads_unless_the_user_did(user_settings, expected):
    # What configure_cpu is responsible for: the environment it leaves for TensorFlow and the thread counts it
    # sets. Whether TensorFlow then honours the allocator variable is TensorFlow's business (and which allocator
    # answers get_memory_info differs between CPUs), so it is not asserted here. A fresh process, because
    # TensorFlow reads both once; this process's settings are dropped.
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("TF_CPU_ALLOCATOR", "TF_NUM_"))} | {"CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", CPU_PROBE], cwd=pathlib.Path(common.__file__).parent,
                            env=environment | user_settings, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == expected.format(cores=os.cpu_count() or 1)
