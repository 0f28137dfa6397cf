"""adversarial_disentangle.py: the three steps, D's gate, which weights each step moves, mixed precision,
save/load, resume of every optimizer, the networks shared with cycle_vae.py, and the flags."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import adversarial_disentangle as adv
import common
import cycle_vae


def make_model(dataset, optimizers="reference", seed=0, learning_rate=1e-3, sgd=False, **options):
    keras.utils.set_random_seed(seed)
    model = adv.AdversarialDisentangler(dataset.image_shape, dataset=dataset.name, z_dim=8, s_dim=8,
                                        optimizers=optimizers, seed=seed, **options)

    def optimizer():
        if sgd:  # SGD makes a missing loss scale visible: its step is proportional to the gradient.
            return keras.optimizers.SGD(0.1)
        return keras.optimizers.Adam(learning_rate, beta_1=0.5, epsilon=1e-8)

    generator = optimizer() if optimizers == "reference" else None
    model.compile(optimizer=optimizer(), discriminator_optimizer=optimizer(), generator_optimizer=generator)
    model.build()
    return model


def first_batch(dataset, batch_size=16, **config):
    config = adv.Config(batch_size=batch_size, **config)
    return next(iter(adv.training_data(dataset, config)))


def values(variables):
    return [v.numpy().copy() for v in variables]


def moved(before, variables):
    return float(np.sqrt(sum(np.sum((v.numpy() - b) ** 2) for v, b in zip(variables, before))))


@pytest.mark.parametrize("optimizers", ["reference", "joint"])
def test_one_iteration_gives_finite_losses_and_moves_every_network(tiny_mnist, optimizers):
    _, dataset = tiny_mnist
    model = make_model(dataset, optimizers)
    networks = {name: getattr(model, name).trainable_variables for name in ("encoder", "decoder", "discriminator")}
    before = {name: values(variables) for name, variables in networks.items()}
    logs = model.train_step(first_batch(dataset))
    assert all(np.isfinite(float(value)) for value in logs.values())
    for name, variables in networks.items():
        assert moved(before[name], variables) > 0, name  # D trains on the first batch: its gate starts open.
    assert float(logs["gan/d_trained_fraction"]) == 1.0 and 0.0 <= float(logs["gan/d_accuracy"]) <= 1.0
    expected = 2 if optimizers == "reference" else 1
    assert len(first_batch(dataset, optimizers=optimizers)["gen"]) == expected
    assert int(model.optimizer.iterations.numpy()) == 1
    if optimizers == "reference":
        assert int(model.generator_optimizer.iterations.numpy()) == 2  # Two generator steps per iteration.


def test_kl_weight_scales_z_s_kl_in_the_autoencoder_and_generator_losses_and_nothing_else(tiny_mnist):
    _, dataset = tiny_mnist
    batch = first_batch(dataset)
    plain, weighted = make_model(dataset), make_model(dataset, kl_weight=2.5)
    (ae_plain, parts_plain), (ae_weighted, parts_weighted) = (
        model._autoencoder_loss(batch["ae"], False) for model in (plain, weighted))
    kl = float(parts_plain["loss/kl"])
    assert kl > 0 and float(parts_weighted["loss/kl"]) == pytest.approx(2.5 * kl, rel=1e-5)
    assert float(parts_weighted["per_image/kl_nats"]) == pytest.approx(float(parts_plain["per_image/kl_nats"]))
    assert float(ae_weighted) - float(ae_plain) == pytest.approx(1.5 * kl, rel=1e-4)
    (adv_plain, kl_plain), (adv_weighted, kl_weighted) = (
        model._adversarial_loss(batch["gen"][0], False) for model in (plain, weighted))
    assert float(kl_weighted) == pytest.approx(2.5 * float(kl_plain), rel=1e-5)
    assert float(adv_weighted) == pytest.approx(float(adv_plain), rel=1e-5)
    assert adv.AdversarialDisentangler.from_config(weighted.get_config()).kl_weight == 2.5


def test_kl_warmup_raises_the_kl_weight_linearly_over_the_first_steps(tiny_mnist):
    _, dataset = tiny_mnist
    batch = first_batch(dataset)
    plain, warming = make_model(dataset, kl_weight=3.0), make_model(dataset, kl_weight=3.0, kl_warmup_steps=4)
    full = float(plain._autoencoder_loss(batch["ae"], False)[1]["loss/kl"])
    for step, fraction in ((0, 0.0), (1, 0.25), (3, 0.75), (4, 1.0), (10, 1.0)):
        warming.optimizer.iterations.assign(step)
        parts = warming._autoencoder_loss(batch["ae"], False)[1]
        assert float(parts["loss/kl"]) == pytest.approx(fraction * full, rel=1e-5, abs=1e-9), step
        plain_kl = float(plain._adversarial_loss(batch["gen"][0], False)[1])
        assert float(warming._adversarial_loss(batch["gen"][0], False)[1]) == pytest.approx(
            fraction * plain_kl, rel=1e-5, abs=1e-9), step
    warming.optimizer.iterations.assign(0)
    warming.train_step(batch)  # a training step counts: the next one weighs KL by 1/4 of kl_weight
    assert float(warming._beta()) == pytest.approx(0.75)
    assert adv.AdversarialDisentangler.from_config(warming.get_config()).kl_warmup_steps == 4


def test_the_batches_hold_the_pairs_each_step_needs(tiny_mnist):
    _, dataset = tiny_mnist
    batch = first_batch(dataset)
    for pair in (batch["ae"], batch["d"]):
        assert np.all(pair["label_a"].numpy() == pair["label_b"].numpy())
    for pair in batch["gen"]:
        assert np.all(pair["label_a"].numpy() != pair["label_b"].numpy())


def test_a_generator_step_leaves_d_alone_and_a_d_step_leaves_the_autoencoder_alone(tiny_mnist):
    _, dataset = tiny_mnist
    model = make_model(dataset)
    batch = first_batch(dataset)
    d_before, ae_before = values(model.discriminator.trainable_variables), values(model.autoencoder_variables)
    model._step(model.generator_optimizer, lambda: model._adversarial_loss(batch["gen"][0], True),
                model.autoencoder_variables)
    assert moved(d_before, model.discriminator.trainable_variables) == 0
    assert moved(ae_before, model.autoencoder_variables) > 0

    ae_before = values(model.autoencoder_variables)
    model._discriminator_step(batch["d"], batch["ae"]["image_b"])
    assert moved(ae_before, model.autoencoder_variables) == 0
    assert moved(d_before, model.discriminator.trainable_variables) > 0


def test_the_fake_pair_is_detached_in_the_d_step(tiny_mnist):
    """D's loss has no gradient path into the encoder or decoder (the reference lets it reach them)."""
    _, dataset = tiny_mnist
    model = make_model(dataset)
    batch = first_batch(dataset)
    with tf.GradientTape() as tape:  # Records everything the step computes, the fake pair included.
        loss, _, _ = model._discriminator_step(batch["d"], batch["ae"]["image_b"])
    assert all(g is None for g in tape.gradient(loss, model.autoencoder_variables))


@pytest.mark.parametrize("gate, previous, threshold, trains", [
    ("previous", 0.9, 0.8, False),  # D was right on 90 % of the previous batch: no D step.
    ("previous", 0.1, 0.8, True),
    ("current", 0.9, 0.8, True),   # With all logits 0 D is right on exactly half of this batch's decisions.
    ("current", 0.1, 0.4, False),
    ("off", 0.99, 0.8, True),
])
def test_d_steps_only_when_its_gate_allows(tiny_mnist, gate, previous, threshold, trains):
    _, dataset = tiny_mnist
    model = make_model(dataset, d_gate=gate, d_gate_threshold=threshold)
    if gate == "current":  # A D that answers 0 everywhere: accuracy 0.5 on any batch.
        for variable in model.discriminator.layers[-1].trainable_variables:
            variable.assign(np.zeros(variable.shape, "float32"))
    model.previous_d_accuracy.assign(previous)
    before = values(model.discriminator.trainable_variables)
    logs = model.train_step(first_batch(dataset))
    assert (moved(before, model.discriminator.trainable_variables) > 0) == trains
    assert float(logs["gan/d_trained_fraction"]) == float(trains)
    assert int(model.discriminator_optimizer.iterations.numpy()) == int(trains)
    # The accuracy this batch measured is what the next batch's gate reads.
    assert float(model.previous_d_accuracy.numpy()) == pytest.approx(float(logs["gan/d_accuracy"]))


def _update_size(dataset, batch, policy, optimizers):
    keras.config.set_dtype_policy(policy)
    model = make_model(dataset, optimizers, sgd=True)
    wrapped = [model.optimizer, model.discriminator_optimizer, model.generator_optimizer]
    if policy == "mixed_float16":
        for optimizer in filter(None, wrapped):
            assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
            optimizer.dynamic_scale.assign(2.0 ** 8)  # Small enough that no float16 gradient overflows.
    networks = [model.encoder, model.decoder, model.discriminator]
    before = [values(network.trainable_variables) for network in networks]
    model.train_step(batch)
    return [moved(b, network.trainable_variables) for b, network in zip(before, networks)]


@pytest.mark.parametrize("optimizers", ["reference", "joint"])
def test_mixed_float16_iteration_moves_the_weights_as_float32_does(tiny_mnist, optimizers):
    _, dataset = tiny_mnist
    batch = first_batch(dataset)
    full = _update_size(dataset, batch, "float32", optimizers)
    mixed = _update_size(dataset, batch, "mixed_float16", optimizers)
    for name, mixed_size, full_size in zip(("encoder", "decoder", "discriminator"), mixed, full):
        assert full_size > 0 and 0.75 < mixed_size / full_size < 1.33, (name, mixed_size, full_size)


def test_save_load_gives_identical_codes_and_resume_restores_every_optimizer(tiny_mnist, tmp_path, monkeypatch):
    root, dataset = tiny_mnist
    monkeypatch.chdir(tmp_path)
    config = adv.Config(data_dir=str(root), out=str(tmp_path / "run"))
    run_dir = common.prepare_run_dir(config, script="adversarial_disentangle", name="mnist", argv=[])
    model = make_model(dataset)
    model.train_step(first_batch(dataset))
    common.save_model(model, run_dir / "model.keras")
    loaded, info = common.load_checkpoint(run_dir)
    images = dataset.images[:40].astype(np.float32) / 255.0
    for key in ("s", "z_mean", "z_logvar"):
        np.testing.assert_array_equal(np.asarray(model.encode(images)[key]), np.asarray(loaded.encode(images)[key]))
    assert info["script"] == "adversarial_disentangle" and type(loaded).__name__ == "AdversarialDisentangler"

    # What --resume restores: the weights, D's gate state and the state of all three optimizers.
    model.previous_d_accuracy.assign(0.625)
    model.save_weights(tmp_path / "state.weights.h5")
    fresh = make_model(dataset, seed=5)
    fresh.load_weights(tmp_path / "state.weights.h5")
    for optimizer in ("optimizer", "generator_optimizer", "discriminator_optimizer"):
        saved, restored = getattr(model, optimizer).variables, getattr(fresh, optimizer).variables
        assert len(saved) == len(restored) > 1
        for a, b in zip(saved, restored):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(fresh.generator_optimizer.iterations.numpy()) == 2
    assert float(fresh.previous_d_accuracy.numpy()) == 0.625


@pytest.mark.parametrize("name", ["mnist", "sprites", "dsprites"])
def test_the_encoder_and_decoder_are_cycle_vaes(name):
    """The same networks as cycle_vae.py, so that the two methods compare on one architecture."""
    shape = {"mnist": (28, 28, 1), "sprites": (60, 60, 3), "dsprites": (64, 64, 1)}[name]

    def layer_configs(network):
        return [(type(layer).__name__, {k: v for k, v in layer.get_config().items() if k != "name"})
                for layer in network.layers]

    for ours, theirs in ((adv.build_encoder(shape, 8, 4, name), cycle_vae.build_encoder(shape, 8, 4, name)),
                         (adv.build_decoder(shape, 8, 4, name), cycle_vae.build_decoder(shape, 8, 4, name))):
        assert json.dumps(layer_configs(ours), default=str) == json.dumps(layer_configs(theirs), default=str)
    discriminator = adv.build_discriminator(shape, name)
    assert discriminator.output_shape == (None, 1)
    assert discriminator.input_shape == [(None, *shape), (None, *shape)]


@pytest.mark.parametrize("flags, named", [
    (["--generator-steps", "0"], "--generator-steps"), (["--d-gate-threshold", "1.5"], "--d-gate-threshold"),
    (["--label-smoothing", "0.7"], "--label-smoothing"), (["--beta-1", "1"], "--beta-1"),
    (["--adversarial-weight", "-1"], "--adversarial-weight"), (["--steps-per-epoch", "-5"], "--steps-per-epoch"),
    (["--d-gate", "sometimes"], "--d-gate"), (["--epochs", "0"], "--epochs"), (["--kl-weight", "-1"], "--kl-weight"),
    (["--kl-warmup-steps", "-1"], "--kl-warmup-steps"),
])
def test_bad_flags_exit_with_code_2_naming_the_flag(flags, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        common.parse_config(adv.Config, flags, resolve=adv.resolve, script="adversarial_disentangle")
    assert exit_info.value.code == 2 and named in capsys.readouterr().err


def test_defaults_are_the_reference_settings():
    config = adv.resolve(adv.Config())
    assert (config.z_dim, config.s_dim, config.epochs, config.batch_size) == (16, 16, 50, 64)
    assert (config.learning_rate, config.beta_1, config.generator_steps, config.d_gate_threshold) == (1e-4, 0.5, 2, 0.8)
    assert config.kl_weight == 1.0 and config.kl_warmup_steps == 0
    assert adv.resolve(adv.Config(dataset="sprites")).z_dim == 512
    assert adv.resolve(adv.Config(dataset="dsprites")).reconstruction == "bernoulli"
