"""mlvae.py: the group evidence against a direct product of Gaussians, the content KL once per group, gradients
reaching the class heads, both groupings, mixed precision, save/load and resume, the networks and the flags."""
import json

import keras
import numpy as np
import pytest

import common
import cycle_vae
import mlvae


def make_model(dataset, architecture="mlp", seed=0, sgd=False, **options):
    keras.utils.set_random_seed(seed)
    model = mlvae.MLVAE(dataset.image_shape, dataset=dataset.name, z_dim=6, s_dim=4, architecture=architecture,
                        seed=seed, **options)
    model.compile(optimizer=keras.optimizers.SGD(0.01) if sgd else keras.optimizers.Adam(1e-3, epsilon=1e-8))
    model.build()
    return model


def group_batch(dataset, groups=4, group_size=3):
    config = mlvae.Config(groups=groups, group_size=group_size)
    return next(iter(mlvae.training_data(dataset, config)))


def test_group_evidence_is_the_product_of_the_members_gaussians():
    rng = np.random.default_rng(0)
    mean, logvar = rng.normal(size=(9, 3)), rng.normal(size=(9, 3)) * 2
    group_ids = np.array([0, 0, 0, 1, 2, 2, 2, 2, 1])
    group_mean, group_logvar = (np.asarray(t) for t in mlvae.group_evidence(
        mean.astype("float32"), logvar.astype("float32"), group_ids.astype("int32"), 3))
    for g in range(3):
        members = group_ids == g
        precision = np.sum(np.exp(-logvar[members]), axis=0)  # summed precisions
        expected_mean = np.sum(mean[members] * np.exp(-logvar[members]), axis=0) / precision
        np.testing.assert_allclose(group_logvar[g], -np.log(precision), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(group_mean[g], expected_mean, rtol=1e-5, atol=1e-5)


def test_a_group_of_one_is_the_images_own_posterior_and_extreme_variances_stay_finite():
    mean = np.array([[0.3, -2.0], [1.0, 4.0]], "float32")
    logvar = np.array([[-60.0, 40.0], [0.5, -0.25]], "float32")  # exp(60) overflows float32 without log space
    group_mean, group_logvar = (np.asarray(t) for t in mlvae.group_evidence(mean, logvar, np.array([0, 1]), 2))
    np.testing.assert_allclose(group_mean, mean, rtol=1e-6)
    np.testing.assert_allclose(group_logvar, logvar, rtol=1e-6)
    two_mean, two_logvar = (np.asarray(t) for t in mlvae.group_evidence(mean, logvar, np.array([0, 0]), 1))
    assert np.all(np.isfinite(two_mean)) and np.all(np.isfinite(two_logvar))
    np.testing.assert_allclose(two_mean[0, 0], 0.3, rtol=1e-5)  # the far more precise member decides


def test_the_content_kl_is_counted_once_per_group_and_everything_is_divided_by_the_groups(tiny_mnist):
    _, dataset = tiny_mnist
    model = make_model(dataset)
    batch = group_batch(dataset, groups=4, group_size=3)
    images, group_ids, groups = model._grouped(batch)
    assert int(groups) == 4 and list(np.asarray(group_ids)) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    terms, logged = model.losses_of(images, group_ids, groups, training=False)
    z_mean, z_logvar, s_mean, s_logvar = (np.asarray(t, np.float64) for t in model.encoder(images))
    kl_content = 0.0
    for g in range(4):
        members = np.asarray(group_ids) == g
        precision = np.sum(np.exp(-s_logvar[members]), axis=0)
        mean = np.sum(s_mean[members] * np.exp(-s_logvar[members]), axis=0) / precision
        kl_content += 0.5 * np.sum(mean ** 2 + 1 / precision + np.log(precision) - 1)
    kl_style = 0.5 * np.sum(z_mean ** 2 + np.exp(z_logvar) - z_logvar - 1)
    np.testing.assert_allclose(float(terms["loss/kl_content"]), kl_content / 4, rtol=1e-4)  # once per group, / G
    np.testing.assert_allclose(float(terms["loss/kl_style"]), kl_style / 4, rtol=1e-4)  # every image, / G
    np.testing.assert_allclose(float(logged["per_group/kl_content_nats"]), kl_content / 4, rtol=1e-4)
    assert float(logged["content/group_size"]) == 3


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_the_class_heads_get_gradients_and_a_step_gives_finite_losses(tiny_mnist, architecture):
    """The public code's evidence ran on detached tensors: its class heads never learned."""
    _, dataset = tiny_mnist
    model = make_model(dataset, architecture)
    import tensorflow as tf

    images, group_ids, groups = model._grouped(group_batch(dataset))
    with tf.GradientTape() as tape:
        terms, _ = model.losses_of(images, group_ids, groups)
        loss = sum(terms.values())
    heads = {layer.name: layer for layer in model.encoder.layers if layer.name in ("s_mean", "s_logvar")}
    gradients = tape.gradient(loss, [heads["s_mean"].kernel, heads["s_logvar"].kernel])
    assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in gradients)
    logs = model.train_step(group_batch(dataset))
    assert all(np.isfinite(float(value)) for value in logs.values())


def test_batch_grouping_makes_a_group_per_class_in_the_batch(tiny_mnist):
    _, dataset = tiny_mnist
    model = make_model(dataset)
    config = mlvae.Config(grouping="batch", batch_size=40)
    batch = next(iter(mlvae.training_data(dataset, config)))
    images, group_ids, groups = model._grouped(batch)
    labels = batch["label"].numpy()
    assert int(groups) == len(np.unique(labels)) and images.shape[0] == 40
    ids = np.asarray(group_ids)
    for g in range(int(groups)):  # every group holds one class, every class one group
        assert len(np.unique(labels[ids == g])) == 1
    logs = model.train_step(batch)
    assert float(logs["content/group_size"]) == pytest.approx(40 / len(np.unique(labels)))


@pytest.mark.parametrize("sampling, std", [("member", 1.0), ("group", 0.1)])
def test_content_sampling_schemes(tiny_mnist, monkeypatch, sampling, std):
    _, dataset = tiny_mnist
    model = make_model(dataset, content_sampling=sampling, content_noise_std=std)
    seen = {}
    decoder = model.decoder

    def spy(inputs, training=False):
        seen["s"] = np.asarray(inputs[1])
        return decoder(inputs, training=training)

    monkeypatch.setattr(model, "decoder", spy)
    images, group_ids, groups = model._grouped(group_batch(dataset, groups=4, group_size=3))
    model.losses_of(images, group_ids, groups)
    s = seen["s"].reshape(4, 3, -1)
    spread = np.max(np.abs(s - s[:, :1]))
    assert (spread == 0) == (sampling == "group")  # one draw shared by a group's members, or one each


def _update_size(dataset, batch, policy):
    keras.config.set_dtype_policy(policy)
    model = make_model(dataset, "conv", sgd=True)
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        model.optimizer.dynamic_scale.assign(2.0 ** 8)
    before = [v.numpy().copy() for v in model.trainable_variables]
    model.train_step(batch)
    return np.sqrt(sum(np.sum((v.numpy() - b) ** 2) for v, b in zip(model.trainable_variables, before)))


def test_mixed_float16_step_moves_the_weights_as_float32_does(tiny_mnist):
    _, dataset = tiny_mnist
    batch = group_batch(dataset)
    full, mixed = _update_size(dataset, batch, "float32"), _update_size(dataset, batch, "mixed_float16")
    assert full > 0 and 0.75 < mixed / full < 1.33


def test_save_load_gives_identical_codes_and_the_optimizer_state_comes_back(tiny_mnist, tmp_path, monkeypatch):
    root, dataset = tiny_mnist
    monkeypatch.chdir(tmp_path)
    config = mlvae.Config(data_dir=str(root), out=str(tmp_path / "run"))
    run_dir = common.prepare_run_dir(config, script="mlvae", name="mnist", argv=[])
    model = make_model(dataset)
    model.train_step(group_batch(dataset))
    common.save_model(model, run_dir / "model.keras")
    loaded, info = common.load_checkpoint(run_dir)
    images = dataset.images[:30].astype(np.float32) / 255.0
    for key in ("s", "s_logvar", "z_mean", "z_logvar"):
        np.testing.assert_array_equal(np.asarray(model.encode(images)[key]), np.asarray(loaded.encode(images)[key]))
    assert info["script"] == "mlvae" and type(loaded).__name__ == "MLVAE"
    model.save_weights(tmp_path / "state.weights.h5")
    fresh = make_model(dataset, seed=3)
    fresh.load_weights(tmp_path / "state.weights.h5")
    for a, b in zip(model.optimizer.variables, fresh.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # A self-contained file to share (pretrained/): no optimizer state, the run record inside, nothing beside it
    # needed, and not the training machine's data directory.
    exported = common.export_checkpoint(run_dir, tmp_path / "shared" / "mlvae_mnist.keras")
    # Beside it, the run record to read (no log.csv: this run has none).
    assert sorted(p.name for p in exported.parent.iterdir()) == ["mlvae_mnist.config.json", "mlvae_mnist.keras"]
    beside = json.loads((exported.parent / "mlvae_mnist.config.json").read_text())
    assert beside["script"] == "mlvae" and beside["config"]["data_dir"] is None
    again, info = common.load_checkpoint(exported)
    np.testing.assert_array_equal(np.asarray(again.encode(images)["s"]), np.asarray(model.encode(images)["s"]))
    assert info["run_dir"] is None and info["script"] == "mlvae" and info["config"]["data_dir"] is None
    assert exported.stat().st_size < (run_dir / "model.keras").stat().st_size
    # Evidence over images the caller declares a group: one row per group.
    mean, logvar = loaded.encode_groups(images[:6], [0, 0, 0, 1, 1, 1], 2)
    assert mean.shape == (2, 4) and logvar.shape == (2, 4)


@pytest.mark.parametrize("name", ["mnist", "sprites", "dsprites"])
def test_the_conv_networks_are_cycle_vaes(name):
    shape = {"mnist": (28, 28, 1), "sprites": (60, 60, 3), "dsprites": (64, 64, 1)}[name]

    def layer_configs(network, skip_heads=False):
        kept = [layer for layer in network.layers if not (skip_heads and layer.name in
                                                         ("z_mean", "z_logvar", "specified", "s_mean", "s_logvar"))]
        return json.dumps([(type(layer).__name__, {k: v for k, v in layer.get_config().items() if k != "name"})
                           for layer in kept], default=str)

    assert layer_configs(mlvae.build_encoder(shape, 8, 4, name, "conv"), True) == layer_configs(
        cycle_vae.build_encoder(shape, 8, 4, name), True)
    assert layer_configs(mlvae.build_decoder(shape, 8, 4, name, "conv")) == layer_configs(
        cycle_vae.build_decoder(shape, 8, 4, name))
    encoder = mlvae.build_encoder(shape, 8, 4, name, "mlp")
    assert [tuple(output.shape) for output in encoder.outputs] == [(None, 8), (None, 8), (None, 4), (None, 4)]


@pytest.mark.parametrize("flags, named", [
    (["--groups", "0"], "--groups"), (["--group-size", "0"], "--group-size"),
    (["--content-noise-std", "0"], "--content-noise-std"), (["--architecture", "resnet"], "--architecture"),
    (["--content-sampling", "pair"], "--content-sampling"), (["--epochs", "-1"], "--epochs"),
])
def test_bad_flags_exit_with_code_2_naming_the_flag(flags, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        common.parse_config(mlvae.Config, flags, resolve=mlvae.resolve, script="mlvae")
    assert exit_info.value.code == 2 and named in capsys.readouterr().err


def test_defaults_are_the_papers_setting():
    config = mlvae.resolve(mlvae.Config())
    assert (config.architecture, config.z_dim, config.s_dim, config.epochs) == ("mlp", 10, 10, 400)
    assert (config.groups * config.group_size, config.learning_rate, config.content_noise_std) == (256, 1e-3, 1.0)
    assert mlvae.resolve(mlvae.Config(dataset="sprites")).architecture == "conv"
    assert mlvae.resolve(mlvae.Config(dataset="dsprites")).reconstruction == "bernoulli"


def test_a_split_too_small_for_a_batch_of_groups_is_one_line(tiny_mnist, capsys):
    root, _ = tiny_mnist
    with pytest.raises(SystemExit) as exit_info:
        mlvae.main(["--data-dir", str(root), "--groups", "64", "--group-size", "50", "--out", "unused"])
    assert "cannot fill one batch" in str(exit_info.value.code) and "--group-size" in str(exit_info.value.code)


def test_label_free_evidence_for_the_evaluation(tiny_mnist):
    """eval_latents.py probes the ML-VAE's class code also with evidence over shifted views of each image alone:
    one view gives back the image's own posterior, more views are more precise, and no label is used."""
    from evaluation import probes

    _, dataset = tiny_mnist
    model = make_model(dataset)
    rows = dataset.rows("test")[:10]
    images = dataset.images[rows].astype(np.float32) / 255.0
    own = model.encode(images)
    mean, logvar = probes.evidence_codes(model, dataset, rows, views=1)
    np.testing.assert_allclose(mean, np.asarray(own["s"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logvar, np.asarray(own["s_logvar"]), rtol=1e-5, atol=1e-6)
    mean, logvar = probes.evidence_codes(model, dataset, rows, views=8, batch_size=4)
    assert mean.shape == (10, 4) and np.all(logvar < np.asarray(own["s_logvar"]))  # 8 views: higher precision
    views = probes.shifted_views(images[:2], 3, np.random.default_rng(0))
    assert views.shape == (6, 28, 28, 1) and np.array_equal(views[0], images[0]) and np.array_equal(views[3], images[1])


@pytest.mark.slow
def test_train_and_evaluate_end_to_end(tiny_mnist, tmp_path, run_script):
    root, _ = tiny_mnist
    result = run_script("mlvae.py", "--data-dir", str(root), "--groups", "4", "--group-size", "4", "--epochs", "2",
                        "--steps-per-epoch", "3", "--out", str(tmp_path / "run"), "--quick", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert {"s/digit/mlp/mean", "s_evidence/digit/mlp/mean", "z/digit/mlp/sampled"} <= set(metrics["probes"])
    assert {"swap_grid.png", "swap_grid_evidence.png"} <= set(metrics["figures"]["written"])
    # The exported file evaluates on its own, into runs/eval_<name>/, with the training curves beside it.
    common.export_checkpoint(tmp_path / "run", tmp_path / "pretrained" / "mine.keras")
    assert (tmp_path / "pretrained" / "mine.log.csv").is_file()
    result = run_script("eval_latents.py", "--ckpt", str(tmp_path / "pretrained" / "mine.keras"), "--data-dir",
                        str(root), "--quick", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    again = json.loads((tmp_path / "runs" / "eval_mine" / "metrics.json").read_text())
    assert set(again["probes"]) == set(metrics["probes"]) and "losses.png" in again["figures"]["written"]
    written = sorted(p.name for p in (tmp_path / "pretrained").iterdir())
    assert written == ["mine.config.json", "mine.keras", "mine.log.csv"]
