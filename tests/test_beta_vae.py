"""beta_vae.py: losses against closed forms, the capacity schedule (also across a resume), a step, save/load, NaN
handling, a short real-data run, and its evaluation through eval_latents.py."""
import csv
import json

import keras
import numpy as np
import pytest

import beta_vae
import common
import data



def make_model(image_shape=(64, 64, 1), architecture="burgess", objective="beta", seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    model = beta_vae.BetaVAE(image_shape, architecture=architecture, z_dim=10, objective=objective, seed=seed,
                             **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-8))
    model.build()
    return model


def read_log(run_dir):
    with open(run_dir / "log.csv") as file:
        return list(csv.DictReader(file))


def test_kl_matches_the_closed_form():
    mean = np.array([[0.0, 1.0, -2.0, 0.5]], np.float32)
    variance = np.array([[1.0, 1.0, 0.25, np.e]], np.float32)
    kl = np.asarray(beta_vae.kl_divergence(mean, np.log(variance)))
    # 0.5 * (mu^2 + var - log var - 1), worked out by hand for each column.
    expected = [0.0, 0.5, 0.5 * (4.0 + 0.25 + np.log(4.0) - 1.0), 0.5 * (0.25 + np.e - 1.0 - 1.0)]
    np.testing.assert_allclose(kl[0], expected, rtol=1e-6)


def test_bernoulli_nll_sums_over_pixels():
    images = np.zeros((2, 4, 4, 1), np.float32)
    images[1] = 1.0
    logits = np.zeros_like(images)  # p = 0.5 everywhere: log 2 nats per pixel
    np.testing.assert_allclose(np.asarray(beta_vae.bernoulli_nll(logits, images)), [16 * np.log(2.0)] * 2, rtol=1e-6)
    confident = np.where(images > 0, 20.0, -20.0).astype(np.float32)
    assert np.all(np.asarray(beta_vae.bernoulli_nll(confident, images)) < 1e-6)


def test_capacity_schedule():
    values = [float(beta_vae.capacity_at(t, 25.0, 100000)) for t in (0, 25000, 50000, 100000, 250000)]
    np.testing.assert_allclose(values, [0.0, 6.25, 12.5, 25.0, 25.0], rtol=1e-6)


@pytest.mark.parametrize("architecture", ["burgess", "mlp"])
@pytest.mark.parametrize("objective", ["beta", "capacity"])
def test_one_step_gives_finite_losses(tiny_dsprites, architecture, objective):
    _, dataset = tiny_dsprites
    model = make_model(architecture=architecture, objective=objective, capacity_steps=10)
    batch = next(iter(data.images(dataset, "train", 16, shuffle=True, drop_remainder=True)))
    before = [v.numpy().copy() for v in model.trainable_variables]
    logs = model.train_step(batch)
    expected = {"loss", "loss/reconstruction", "loss/kl", "capacity/C"} | {f"kl/dim_{j:02d}" for j in range(10)}
    assert set(logs) == expected
    for name, value in logs.items():
        assert np.shape(value) == () and np.isfinite(value), name
    kl = float(logs["loss/kl"])
    np.testing.assert_allclose(kl, sum(float(logs[f"kl/dim_{j:02d}"]) for j in range(10)), rtol=1e-5)
    # The loss is the stated objective of the tracked terms; C is 0 at the first step.
    np.testing.assert_allclose(float(logs["capacity/C"]), 0.0)
    weight = 4.0 if objective == "beta" else 1000.0
    np.testing.assert_allclose(float(logs["loss"]), float(logs["loss/reconstruction"]) + weight * kl, rtol=1e-5)
    assert any(not np.allclose(b, a.numpy()) for b, a in zip(before, model.trainable_variables))


@pytest.mark.parametrize("shape", [(28, 28, 1), (60, 60, 3), (64, 64, 1)])
@pytest.mark.parametrize("architecture", ["burgess", "mlp"])
def test_decoder_output_matches_the_image_shape(shape, architecture):
    model = make_model(shape, architecture)
    images = model.decode(np.zeros((3, 10), np.float32))
    assert tuple(images.shape) == (3,) + shape
    codes = model.encode(np.zeros((3,) + shape, np.float32))
    assert set(codes) == {"z_mean", "z_logvar"} and tuple(codes["z_mean"].shape) == (3, 10)


def test_mixed_float16_step_matches_float32(tiny_dsprites):
    _, dataset = tiny_dsprites
    batch = next(iter(data.images(dataset, "train", 16, shuffle=True, drop_remainder=True)))
    sizes = {}
    for policy in ("float32", "mixed_float16"):
        keras.config.set_dtype_policy(policy)
        keras.utils.set_random_seed(0)
        model = beta_vae.BetaVAE((64, 64, 1), architecture="burgess", z_dim=10, objective="beta")
        model.compile(optimizer=keras.optimizers.SGD(1e-4))
        model.build()
        if policy == "mixed_float16":
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
            model.optimizer.dynamic_scale.assign(2.0 ** 8)  # a missing scale_loss would shrink the step 256-fold
        before = [v.numpy().copy() for v in model.trainable_variables]
        model.train_step(batch)
        sizes[policy] = np.sqrt(sum(np.sum((v.numpy() - b) ** 2) for v, b in zip(model.trainable_variables, before)))
    assert sizes["float32"] > 0 and 0.8 < sizes["mixed_float16"] / sizes["float32"] < 1.25, sizes


def test_save_load_gives_identical_codes(tiny_dsprites, tmp_path):
    root, dataset = tiny_dsprites
    config = beta_vae.Config(data_dir=str(root), out=str(tmp_path / "run"))
    run_dir = common.prepare_run_dir(config, script="beta_vae", name="dsprites", argv=[])
    model = make_model(objective="capacity")
    model.train_step(next(iter(data.images(dataset, "train", 16, drop_remainder=True))))
    common.save_model(model, run_dir / "model.keras")
    loaded, info = common.load_checkpoint(run_dir)
    images = dataset.images[:40].astype(np.float32) / 255.0
    for key in ("z_mean", "z_logvar"):
        np.testing.assert_array_equal(np.asarray(model.encode(images)[key]), np.asarray(loaded.encode(images)[key]))
    z = np.ones((2, 10))
    np.testing.assert_array_equal(np.asarray(model.decode(z)), np.asarray(loaded.decode(z)))
    assert info["script"] == "beta_vae" and loaded.objective == "capacity" and loaded.capacity_steps == 100000


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_dsprites, tmp_path):
    _, dataset = tiny_dsprites
    model = make_model()
    callbacks = common.training_callbacks(tmp_path, monitor_nan=True)
    good = data.images(dataset, "train", 16, drop_remainder=True).take(3)
    model.fit(good, epochs=1, callbacks=callbacks, shuffle=False, verbose=0)
    saved_model = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    saved = [v.numpy().copy() for v in saved_model.trainable_variables]
    poisoned = good.map(lambda batch: {**batch, "image": batch["image"] * np.float32("nan")})
    with pytest.raises(common.TrainingDiverged, match="last good checkpoint is kept"):
        model.fit(poisoned, epochs=2, initial_epoch=1, callbacks=common.training_callbacks(tmp_path), shuffle=False,
                  verbose=0)
    kept = keras.saving.load_model(tmp_path / "model.keras", compile=False).trainable_variables
    assert all(np.array_equal(a, b.numpy()) and np.all(np.isfinite(a)) for a, b in zip(saved, kept))


@pytest.mark.slow
def test_capacity_schedule_continues_across_resume_and_evaluation(tiny_dsprites, tmp_path, run_script):
    root, _ = tiny_dsprites
    args = ["--data-dir", str(root), "--batch-size", "16", "--steps-per-epoch", "5", "--objective", "capacity",
            "--capacity-steps", "20", "--out", str(tmp_path / "run"), "--grid-every", "1", "--no-evaluate"]
    first = run_script("beta_vae.py", *args, "--epochs", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_script("beta_vae.py", *args, "--epochs", "2", "--resume", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Epoch 2/2" in second.stdout and "Epoch 1/2" not in second.stdout
    rows = read_log(tmp_path / "run")
    # Mean of C over the epoch's steps: steps 0..4 give 25 * 2/20, steps 5..9 give 25 * 7/20 (the optimizer's
    # step counter was restored, so the schedule did not restart at 0).
    np.testing.assert_allclose([float(r["capacity/C"]) for r in rows], [2.5, 8.75], rtol=1e-5)
    assert (tmp_path / "run" / "images" / "epoch_002.png").is_file()

    evaluated = run_script("eval_latents.py", "--ckpt", str(tmp_path / "run"), "--quick", cwd=tmp_path,
                           env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    out = tmp_path / "run" / "eval"
    for name in ("report.md", "codes.npz", "traversal.gif", "traversal_0.png", "reconstructions.png",
                 "dimensions.png", "traversal_dims/dim_00.gif"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["disentanglement"]) == {"beta_vae", "factor_vae", "mig", "sap", "modularity", "explicitness",
                                               "dci/disentanglement", "dci/completeness", "dci/informativeness"}
    assert all(0.0 <= v <= 1.0 for v in metrics["disentanglement"].values())
    assert "z/shape/mlp/mean" in metrics["probes"] and not any(k.startswith("s/") for k in metrics["probes"])
    codes = np.load(out / "codes.npz")
    assert codes["factors_train"].shape[1] == 5 and codes["z_mean_test"].shape[1] == 10
    assert "Disentanglement metrics" in (out / "report.md").read_text()


def test_cli_rejects_bad_values(tmp_path, run_script):
    result = run_script("beta_vae.py", "--objective", "elbo", cwd=tmp_path)
    assert result.returncode == 2 and "--objective" in result.stderr and "invalid choice" in result.stderr
    result = run_script("beta_vae.py", "--z-dim", "0", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--z-dim" in result.stderr


@pytest.mark.slow
def test_short_real_run_lowers_the_loss(shared_data, offline):
    dataset = data.load_dsprites(shared_data)
    model = make_model()
    train = data.images(dataset, "train", 64, shuffle=True, drop_remainder=True)
    history = model.fit(train, epochs=2, steps_per_epoch=60, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert losses[1] < 0.5 * losses[0], losses


def test_learning_rate_defaults_per_objective():
    # The capacity objective collapses the encoder at Burgess et al.'s 5e-4 (module docstring), so it defaults to 1e-4.
    def resolved(*argv):
        return common.parse_config(beta_vae.Config, list(argv), resolve=beta_vae.resolve).learning_rate

    assert resolved() == 5e-4
    assert resolved("--objective", "capacity") == 1e-4
    assert resolved("--objective", "capacity", "--learning-rate", "3e-4") == 3e-4
    with pytest.raises(SystemExit) as exit_info:
        resolved("--learning-rate=-1e-4")
    assert exit_info.value.code == 2
