"""cycle_vae.py and the core of eval_latents.py: steps, mixed precision, save/load, resume, evaluation, CLI errors."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import common
import cycle_vae
import data

ROOT = pathlib.Path(__file__).resolve().parents[1]


def make_model(dataset, reverse_mode="joint", z_dim=16, s_dim=16, seed=0):
    keras.utils.set_random_seed(seed)
    model = cycle_vae.CycleVAE(dataset.image_shape, dataset=dataset.name, z_dim=z_dim, s_dim=s_dim,
                               reverse_mode=reverse_mode, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-8),
                  reverse_optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-8))
    model.build()
    return model


def first_batch(dataset, batch_size=32):
    config = cycle_vae.Config(batch_size=batch_size)
    return next(iter(cycle_vae.training_data(dataset, config)))


@pytest.mark.parametrize("reverse_mode", ["joint", "separate"])
def test_one_step_gives_finite_losses(tiny_mnist, reverse_mode):
    _, dataset = tiny_mnist
    model = make_model(dataset, reverse_mode)
    before = [v.numpy().copy() for v in model.encoder.trainable_variables]
    logs = model.train_step(first_batch(dataset))
    expected = {"loss", "loss/forward", "loss/reverse", "loss/reconstruction", "loss/kl", "per_image/swap_sse",
                "per_image/kl_nats", "reverse/recovery_error"}
    assert set(logs) == expected
    for name, value in logs.items():
        assert np.shape(value) == () and np.isfinite(value), name
    # Reference normalisation: reconstruction = 2 * 2 * mean SSE / P, since each of the two mMSEs is SSE / P.
    np.testing.assert_allclose(float(logs["loss/reconstruction"]), 4 * float(logs["per_image/swap_sse"]) / 784,
                               rtol=1e-5)
    assert any(not np.allclose(b, a.numpy()) for b, a in zip(before, model.encoder.trainable_variables))


def test_reverse_cycle_only_updates_the_encoder(tiny_mnist):
    _, dataset = tiny_mnist
    model = make_model(dataset, "separate")
    batch = first_batch(dataset)
    decoder_before = [v.numpy().copy() for v in model.decoder.trainable_variables]
    generated, prior = model._reverse_inputs(batch["different"])
    with tf.GradientTape() as tape:
        mean, _, _ = model.encoder(generated, training=True)
        reverse, _ = model._reverse_cycle(mean, prior)
    gradients = tape.gradient(reverse, model.trainable_variables)
    named = dict(zip([v.path for v in model.trainable_variables], gradients))
    assert all(named[v.path] is None for v in model.decoder.trainable_variables)
    assert any(named[v.path] is not None for v in model.encoder.trainable_variables)
    assert all(np.array_equal(b, a.numpy()) for b, a in zip(decoder_before, model.decoder.trainable_variables))


@pytest.mark.parametrize("reverse_loss", ["l1", "l2"])
def test_reverse_distance_on_known_means(reverse_loss):
    model = cycle_vae.CycleVAE((28, 28, 1), dataset="mnist", z_dim=2, s_dim=2, reverse_loss=reverse_loss)
    first = np.array([[0.0, 1.0], [2.0, -1.0]], np.float32)
    second = np.array([[1.0, 1.0], [-1.0, 1.0]], np.float32)  # differences 1, 0 / 3, 2
    prior = np.array([[0.0, 1.0], [2.0, -1.0]], np.float32)  # recovered exactly by the first half
    reverse, recovery = model._reverse_cycle(np.concatenate([first, second]), prior)
    expected = {"l1": (1 + 0 + 3 + 2) / 4, "l2": (1 + 0 + 9 + 4) / 4}[reverse_loss]
    np.testing.assert_allclose(float(reverse), expected, rtol=1e-6)
    np.testing.assert_allclose(float(recovery), (1 + 0 + 3 + 2) / 8, rtol=1e-6)
    with pytest.raises(ValueError, match="reverse_loss"):
        cycle_vae.CycleVAE((28, 28, 1), dataset="mnist", z_dim=2, s_dim=2, reverse_loss="huber")


def test_reverse_cycle_pairs_differ_in_class(tiny_mnist):
    _, dataset = tiny_mnist
    config = cycle_vae.Config(batch_size=32)
    for batch in cycle_vae.training_data(dataset, config):
        assert np.all(batch["different"]["label_a"].numpy() != batch["different"]["label_b"].numpy())
        assert np.all(batch["same"]["label_a"].numpy() == batch["same"]["label_b"].numpy())


def _update_size(dataset, batch, policy, reverse_mode):
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    model = cycle_vae.CycleVAE(dataset.image_shape, dataset="mnist", z_dim=16, s_dim=16, reverse_mode=reverse_mode)
    # SGD makes a missing loss scale visible: its step is proportional to the gradient. In the separate mode
    # the second optimizer must be wrapped and scaled too, or the encoder's reverse step would vanish.
    model.compile(optimizer=keras.optimizers.SGD(0.1), reverse_optimizer=keras.optimizers.SGD(0.1))
    model.build()
    if policy == "mixed_float16":
        # Both optimizers must have been wrapped for loss scaling. Their dynamic scale starts at 2^15, at which
        # the first float16 gradients may overflow and the step be skipped (a different skip pattern for the
        # two optimizers); 2^8 still shrinks an unscaled update 256-fold, so a missing scale_loss shows.
        optimizers = [model.optimizer] + ([model.reverse_optimizer] if reverse_mode == "separate" else [])
        for optimizer in optimizers:
            assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
            optimizer.dynamic_scale.assign(2.0 ** 8)
    before = [v.numpy().copy() for v in model.trainable_variables]
    model.train_step(batch)
    moved = {v.path: np.sum((v.numpy() - b) ** 2) for v, b in zip(model.trainable_variables, before)}
    # The decoder moves with the forward optimizer alone; the whole model with both.
    decoder = np.sqrt(sum(moved[v.path] for v in model.decoder.trainable_variables))
    return decoder, np.sqrt(sum(moved.values()))


@pytest.mark.parametrize("reverse_mode", ["joint", "separate"])
def test_mixed_float16_step_matches_float32(tiny_mnist, reverse_mode):
    _, dataset = tiny_mnist
    batch = first_batch(dataset)
    full = _update_size(dataset, batch, "float32", reverse_mode)
    mixed = _update_size(dataset, batch, "mixed_float16", reverse_mode)
    # Without scale_loss the mixed update would be 256 times smaller; with it, about the same size.
    for part, mixed_size, full_size in zip(("decoder", "all"), mixed, full):
        assert full_size > 0 and 0.8 < mixed_size / full_size < 1.25, (part, mixed_size, full_size)


def test_save_load_gives_identical_codes(tiny_mnist, tmp_path, monkeypatch):
    root, dataset = tiny_mnist
    monkeypatch.chdir(tmp_path)
    config = cycle_vae.Config(data_dir=str(root), out=str(tmp_path / "run"))
    run_dir = common.prepare_run_dir(config, script="cycle_vae", name="mnist", argv=[])
    model = make_model(dataset)
    model.train_step(first_batch(dataset))
    common.save_model(model, run_dir / "model.keras")
    loaded, info = common.load_checkpoint(run_dir)
    images = dataset.images[:50].astype(np.float32) / 255.0
    original, restored = model.encode(images), loaded.encode(images)
    for key in ("s", "z_mean", "z_logvar"):
        np.testing.assert_array_equal(np.asarray(original[key]), np.asarray(restored[key]))
    assert info["script"] == "cycle_vae" and type(loaded).__name__ == "CycleVAE"


def test_bernoulli_swap_error_is_the_cross_entropy_of_the_swapped_decoding(tiny_mnist, monkeypatch):
    _, dataset = tiny_mnist
    keras.utils.set_random_seed(0)
    model = cycle_vae.CycleVAE(dataset.image_shape, dataset="mnist", z_dim=16, s_dim=16, reverse_mode="joint",
                               reconstruction="bernoulli")
    model.build()
    # No posterior noise: z = z_mean, so the expected value can be computed from the networks directly.
    monkeypatch.setattr(cycle_vae.keras.random, "normal", lambda shape, seed=None, **kw: tf.zeros(shape))
    batch = first_batch(dataset, batch_size=8)["same"]
    x = np.concatenate([batch["image_a"], batch["image_b"]])
    reconstruction, _, sse, _ = model._forward_cycle(x, training=False)
    z_mean, _, s = (np.asarray(t) for t in model.encoder(x, training=False))
    logits = np.asarray(model.decoder([z_mean, np.concatenate([s[8:], s[:8]])], training=False), np.float64)
    p = 1 / (1 + np.exp(-logits))
    bce = -np.sum(x * np.log(p) + (1 - x) * np.log1p(-p), axis=(1, 2, 3))
    np.testing.assert_allclose(float(reconstruction), 2 * 2 * bce.mean() / 784, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(sse), np.sum((p - x) ** 2, axis=(1, 2, 3)), rtol=1e-4)
    # The script picks the Bernoulli error on the binary dSprites images only.
    assert cycle_vae.resolve(cycle_vae.Config(dataset="dsprites")).reconstruction == "bernoulli"
    assert cycle_vae.resolve(cycle_vae.Config(dataset="mnist")).reconstruction == "mse"
    with pytest.raises(ValueError, match="reconstruction"):
        cycle_vae.CycleVAE(dataset.image_shape, dataset="mnist", z_dim=16, s_dim=16, reconstruction="l1")


@pytest.mark.slow
def test_train_resume_and_evaluate_end_to_end(tiny_mnist, tmp_path, run_script):
    root, _ = tiny_mnist
    common_args = ["--dataset", "mnist", "--data-dir", str(root), "--batch-size", "32", "--steps-per-epoch", "4",
                   "--out", str(tmp_path / "run"), "--grid-every", "1", "--no-evaluate"]
    first = run_script("cycle_vae.py", *common_args, "--epochs", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    # Resume to 3 epochs: only the third epoch runs, continuing the CSV log and the optimizer's step count.
    second = run_script("cycle_vae.py", *common_args, "--epochs", "3", "--resume", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Epoch 3/3" in second.stdout and "Epoch 1/3" not in second.stdout
    epochs = [line.split(",")[0] for line in (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]]
    assert epochs == ["0", "1", "2"]
    assert (tmp_path / "run" / "images" / "epoch_003.png").is_file()

    cache = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    evaluated = run_script("eval_latents.py", "--ckpt", str(tmp_path / "run"), "--quick", cwd=tmp_path, env=cache)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    out = tmp_path / "run" / "eval"
    report = (out / "report.md").read_text()
    assert "swap_grid.png" in report and "tsne.png" in report and "per dimension" in report
    metrics = json.loads((out / "metrics.json").read_text())
    dims = metrics["z_dimensions"]
    assert len(dims["kl_nats"]) == 16 and all(k >= 0 for k in dims["kl_nats"])
    assert dims["active"] == [k >= 0.1 for k in dims["kl_nats"]]
    # The pixel row does not depend on the model: a second evaluation reads it back instead of recomputing it.
    again = run_script("eval_latents.py", "--ckpt", str(tmp_path / "run"), "--quick", "--out", str(tmp_path / "again"),
                       cwd=tmp_path, env=cache)
    assert again.returncode == 0 and "pixel ceiling row read from" in again.stdout, again.stderr[-3000:]
    repeated = json.loads((tmp_path / "again" / "metrics.json").read_text())["probes"]
    assert all(repeated[k] == v for k, v in metrics["probes"].items() if k.startswith("pixels/"))
    for code in ("s", "z", "pixels"):
        assert 0.0 <= metrics["probes"][f"{code}/digit/mlp/mean"] <= 1.0
    assert "s/digit/linear/sampled" in metrics["probes"] and "z/digit/mlp/sampled" in metrics["probes"]
    assert metrics["chance"]["digit"] == pytest.approx(0.1)  # the fixture's test labels are balanced
    codes = np.load(out / "codes.npz")
    assert codes["s_train"].shape == (320, 16) and codes["z_mean_test"].shape == (100, 16)
    assert codes["digit_test"].shape == (100,) and "z_logvar_train" in codes.files


def test_eval_rejects_missing_and_foreign_checkpoints(tmp_path, run_script):
    missing = run_script("eval_latents.py", "--ckpt", str(tmp_path / "nothing.keras"), cwd=tmp_path)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "nothing.keras" in missing.stderr
    # A checkpoint whose run folder says it came from a script this repository does not have.
    run = tmp_path / "foreign"
    run.mkdir()
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"script": "some_other_project", "name": "x", "config": {}}))
    foreign = run_script("eval_latents.py", "--ckpt", str(run / "model.keras"), cwd=tmp_path)
    assert foreign.returncode != 0 and "Traceback" not in foreign.stderr
    assert "some_other_project" in foreign.stderr


def test_cli_rejects_bad_flags(tmp_path, run_script):
    result = run_script("cycle_vae.py", "--dataset", "cifar", cwd=tmp_path)
    assert result.returncode == 2 and "--dataset" in result.stderr and "invalid choice" in result.stderr
    result = run_script("cycle_vae.py", "--reverse-mode", "both", cwd=tmp_path)
    assert result.returncode == 2 and "--reverse-mode" in result.stderr


@pytest.mark.parametrize("flags, named", [
    (["--adam-epsilon", "0"], "--adam-epsilon"), (["--kl-weight", "-1"], "--kl-weight"),
    (["--epochs", "-1"], "--epochs"), (["--batch-size", "0"], "--batch-size"), (["--z-dim", "-3"], "--z-dim"),
    (["--s-dim", "-2"], "--s-dim"), (["--steps-per-epoch", "-5"], "--steps-per-epoch"),
    (["--grid-every", "0"], "--grid-every"), (["--learning-rate", "0"], "--learning-rate")])
def test_config_rejects_values_out_of_range(flags, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        common.parse_config(cycle_vae.Config, flags, resolve=cycle_vae.resolve)
    assert exit_info.value.code == 2 and named in capsys.readouterr().err


def parse(*flags):
    return common.parse_config(cycle_vae.Config, list(flags), resolve=cycle_vae.resolve)


def test_unset_settings_resolve_per_dataset_and_mode_and_explicit_values_are_kept():
    mnist, sprites = parse(), parse("--dataset", "sprites")
    assert (mnist.z_dim, mnist.s_dim, mnist.epochs, mnist.learning_rate) == (16, 16, 100, 1e-4)
    assert (sprites.z_dim, sprites.s_dim, sprites.epochs) == (512, 64, 16)
    assert mnist.lr_drop_epoch == 80 and mnist.steps_per_epoch is None and mnist.reverse_weight == 10.0
    assert parse("--reverse-mode", "joint").reverse_weight == 0.1
    # An explicit 0 is a value, not "the default": it must reach the model as 0.
    assert parse("--reverse-weight", "0", "--reverse-mode", "joint").reverse_weight == 0.0
    assert parse("--reverse-weight", "0").reverse_weight == 0.0
    quick = parse("--quick")
    assert (quick.epochs, quick.steps_per_epoch, quick.learning_rate) == (2, 600, 1e-3)
    mixed = parse("--quick", "--epochs", "5", "--learning-rate", "1e-4")
    assert (mixed.epochs, mixed.steps_per_epoch, mixed.learning_rate, mixed.lr_drop_epoch) == (5, 600, 1e-4, 4)


@pytest.mark.slow
def test_a_script_copied_with_data_and_common_alone_trains_and_skips_evaluation(tiny_mnist, tmp_path, run_script):
    # A researcher copies cycle_vae.py, data.py and common.py into a project of their own, without the evaluation.
    root, _ = tiny_mnist
    project = tmp_path / "project"
    project.mkdir()
    for name in ("cycle_vae.py", "data.py", "common.py"):
        shutil.copy(ROOT / name, project / name)
    result = subprocess.run([sys.executable, "cycle_vae.py", "--data-dir", str(root), "--epochs", "1",
                             "--batch-size", "32", "--out", "run"], cwd=project, capture_output=True, text=True,
                            env={**os.environ, data.OFFLINE_ENV: "1", "PYTHONPATH": ""}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (project / "run" / "model.keras").is_file()
    assert "Traceback" not in result.stderr and "ImportError" not in result.stderr
    hints = [line for line in result.stdout.splitlines() if line.startswith("Evaluation skipped")]
    assert len(hints) == 1 and "eval_latents.py --ckpt" in hints[0]


@pytest.mark.slow
def test_short_real_run_lowers_the_loss(shared_data, offline):
    dataset = data.load_mnist(shared_data)
    model = make_model(dataset)
    train = cycle_vae.training_data(dataset, cycle_vae.Config(batch_size=64))
    history = model.fit(train, epochs=2, steps_per_epoch=40, shuffle=False, verbose=0)
    losses = history.history["loss/forward"]
    assert losses[1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("flags, named", [(["--probe-epochs", "0"], "--probe-epochs"),
                                          (["--tsne-points", "0"], "--tsne-points"),
                                          (["--swap-pairs", "0"], "--swap-pairs"),
                                          (["--patience", "-5"], "--patience")])
def test_eval_config_rejects_sizes_out_of_range(flags, named, capsys):
    import eval_latents

    with pytest.raises(SystemExit) as exit_info:
        common.parse_config(eval_latents.EvalConfig, ["--ckpt", "x", *flags])
    assert exit_info.value.code == 2 and named in capsys.readouterr().err
