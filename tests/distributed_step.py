"""One training step of a model on one device and under MirroredStrategy over two logical CPU devices.

    python tests/distributed_step.py DATA_DIR CASE [CASE ...]

tests/test_distribute.py runs this in a fresh process, because logical devices can only be configured before
TensorFlow starts. Both runs build the model with the same seed and plain SGD, take one fit() step on the same
global batch and print one JSON line per case: the largest difference of any model variable between them (the
weights, the noise generator's state, D's stored accuracy), the largest change of a trainable weight in the
step, the D weights' change (adversarial cases) and both runs' trackers.
"""
import json
import pathlib
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import adversarial_disentangle  # noqa: E402
import beta_vae  # noqa: E402
import cycle_vae  # noqa: E402
import data  # noqa: E402
import keras  # noqa: E402
import mlvae  # noqa: E402
import numpy as np  # noqa: E402

SGD = 0.1


def cycle(dataset, reverse_mode):
    model = cycle_vae.CycleVAE(dataset.image_shape, dataset="mnist", z_dim=4, s_dim=4, reverse_mode=reverse_mode,
                               seed=0)
    model.compile(optimizer=keras.optimizers.SGD(SGD), reverse_optimizer=keras.optimizers.SGD(SGD))
    return model, cycle_vae.training_data(dataset, cycle_vae.Config(batch_size=8))


def adversarial(dataset, optimizers, d_gate="previous", threshold=1.0):
    # Threshold 1: D trains unless it is right on every pair; 0.01 (with the current batch's accuracy): never.
    model = adversarial_disentangle.AdversarialDisentangler(
        dataset.image_shape, dataset="mnist", z_dim=4, s_dim=4, optimizers=optimizers, d_gate=d_gate,
        d_gate_threshold=threshold, seed=0)
    extra = {"generator_optimizer": keras.optimizers.SGD(SGD)} if optimizers == "reference" else {}
    model.compile(optimizer=keras.optimizers.SGD(SGD), discriminator_optimizer=keras.optimizers.SGD(SGD), **extra)
    config = adversarial_disentangle.Config(batch_size=8, optimizers=optimizers)
    return model, adversarial_disentangle.training_data(dataset, config)


def multi_level(dataset, content_sampling):
    model = mlvae.MLVAE(dataset.image_shape, dataset="mnist", z_dim=4, s_dim=4, architecture="mlp",
                        content_sampling=content_sampling, seed=0)
    model.compile(optimizer=keras.optimizers.SGD(SGD))
    return model, mlvae.training_data(dataset, mlvae.Config(groups=4, group_size=3))


def beta(dataset):
    model = beta_vae.BetaVAE(dataset.image_shape, architecture="mlp", z_dim=4, seed=0)
    model.compile(optimizer=keras.optimizers.SGD(SGD))
    return model, data.images(dataset, "train", 8).map(lambda batch: {"image": batch["image"]})


CASES = {
    "cycle_vae joint": lambda ds: cycle(ds, "joint"),
    "cycle_vae separate": lambda ds: cycle(ds, "separate"),
    "adversarial reference": lambda ds: adversarial(ds, "reference"),
    "adversarial joint": lambda ds: adversarial(ds, "joint"),
    "adversarial current gate": lambda ds: adversarial(ds, "reference", d_gate="current"),
    "adversarial gate closed": lambda ds: adversarial(ds, "reference", d_gate="current", threshold=0.01),
    "mlvae member": lambda ds: multi_level(ds, "member"),
    "mlvae group": lambda ds: multi_level(ds, "group"),
    "beta_vae": beta,
}


def one_step(strategy, dataset, case):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model, pipeline = CASES[case](dataset)
        model.build()
    batch = next(iter(pipeline))
    discriminator = getattr(model, "discriminator", None)
    weights, d_weights = model.trainable_variables, discriminator.trainable_variables if discriminator else []
    before, d_before = [v.numpy() for v in weights], [v.numpy() for v in d_weights]
    model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0, shuffle=False)
    after = [v.numpy() for v in model.variables]
    update = max(float(np.abs(v.numpy() - b).max()) for v, b in zip(weights, before))
    d_update = max([float(np.abs(v.numpy() - b).max()) for v, b in zip(d_weights, d_before)], default=None)
    trackers = {name: float(tracker.result()) for name, tracker in model.trackers.items()}
    return after, update, d_update, trackers


def main(data_dir, cases):
    dataset = data.load_mnist(data_dir)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for case in cases:
        one, update, d_update, one_trackers = one_step(tf.distribute.OneDeviceStrategy("/cpu:0"), dataset, case)
        two, _, two_d_update, two_trackers = one_step(mirrored, dataset, case)
        difference = max(float(np.abs(a - b).max()) for a, b in zip(one, two))
        print(json.dumps({"case": case, "replicas": mirrored.num_replicas_in_sync, "difference": difference,
                          "update": update, "d_update": d_update, "d_update_mirrored": two_d_update,
                          "trackers_one": one_trackers, "trackers_mirrored": two_trackers}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or list(CASES))
