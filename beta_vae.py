"""beta-VAE (Higgins et al., ICLR 2017) and the capacity-annealed VAE (Burgess et al. 2018, arXiv 1804.03599).

An unsupervised VAE: the encoder maps an image x to q(z|x) = N(mu(x), diag sigma^2(x)) over 10 latents, the
decoder gives Bernoulli logits for every pixel, and one of two objectives is minimised per batch:

  beta   (Higgins et al. 2017, Eq. 4):    L = E_B[-log p(x|z)] + beta * E_B[KL(q(z|x) || N(0, I))]
  capacity (Burgess et al. 2018, Eq. 8):  L = E_B[-log p(x|z)] + gamma * |E_B[KL(q(z|x) || N(0, I))] - C(t)|
                                          C(t) = C_max * min(1, t / T)

Reductions, since beta and gamma only mean something relative to them: -log p(x|z) is the Bernoulli negative
log-likelihood (binary cross-entropy on logits) SUMMED over the pixels of an image, in nats; the KL is the
closed form 0.5 * sum_j (mu_j^2 + sigma_j^2 - log sigma_j^2 - 1), SUMMED over the latents; both are then
AVERAGED over the batch. So beta = 1 is the plain ELBO per image, and C is a number of nats per image.
z = mu + sigma * eps with one eps ~ N(0, I) per image and step. t is the optimizer's step counter, so a resumed
run continues the capacity schedule where it stopped (it is part of the checkpointed optimizer state).

Defaults: beta = 4 (Higgins et al. 2017, dSprites; measured after 50 epochs on our dSprites subset, README: beta 4
gives MIG 0.234 with position, scale and orientation mixed over four latents, beta 16 gives MIG 0.394 with x, y and
scale on three separate latents but no latent for shape or orientation); gamma = 1000, C_max = 25 nats, T = 100,000
steps, batch 64 (Burgess et al. 2018, Appendix A). Adam 5e-4 for the beta objective (Burgess et al.'s rate), but
1e-4 for the capacity objective, the rate at which Locatello et al. 2019 (disentanglement_lib) trained this
objective with the same gamma, C_max and T. Where we differ from Burgess et al.: at 5e-4 the capacity objective
killed our encoder. While C is still near 0, gamma * KL acts like beta = 1000, and every Adam step moves each
encoder weight by about the learning rate towards a constant code. At 5e-4 the code became input-independent within
the first ~1,000 steps and never recovered: the reconstruction stayed at the mean image's ~566 nats while the KL
followed C up to 23 nats with no information in it (after 2,400 steps the encoder's last hidden layer varied by 7e-4
across test images, against 4e-2 at 1e-4). Measured with `--objective capacity --epochs 6 --steps-per-epoch 400
--capacity-steps 2400`, with gamma 1000 and with gamma 100, and in 12 epochs with T = 50,000. At 1e-4 the
reconstruction falls as soon as C allows it (481 nats at C = 0.75 with the default T, 389 at C = 23 with T = 2,400).
Architectures (models.md Sec. 5):
  burgess: encoder 4 x Conv(32, 4x4, stride 2) ReLU, Dense 256, 256 ReLU, Dense mu and log sigma^2 (10 each);
           decoder Dense 256, 256, then the encoder's last feature map, 4 x ConvTranspose(4x4, stride 2) (32, 32,
           32, then the image channels as logits). Burgess et al. 2018, Appendix A.1.
  mlp:     encoder 1200-1200 ReLU, decoder 1200-1200-1200 tanh (Higgins et al. 2017, Appendix A.4).
On MNIST (28x28) and Sprites (60x60) the convolutional decoder overshoots to 32 / 64 pixels and is cropped.

Where we deliberately differ from the public notebook (Akella17/Disentangled_Representation_Learning):
  - one parameterisation, log sigma^2, in both the KL and the sampler (the notebook reads its head as log sigma
    in the KL but as log sigma^2 when sampling), and no clipping of it: the notebook clips "log sigma" to
    [1e-8, 5], so every posterior is at least as wide as the prior and only |mu| can carry information;
  - the convolutional model is the published one (the notebook's never ran: its shapes do not fit 64x64);
  - C(t) comes from the optimizer's step counter, not from a Python counter that a restart would reset.

Usage:
  python beta_vae.py                                   # beta-VAE (beta 4), Burgess conv net, real dSprites
  python beta_vae.py --objective capacity              # capacity annealing, C 0 -> 25 nats over 100k steps
  python beta_vae.py --architecture mlp --quick        # a few minutes on a CPU
  python beta_vae.py --resume                          # continue the latest interrupted dsprites run
  python beta_vae.py --benchmark                       # time training iterations
  python eval_latents.py --ckpt runs/beta_vae_dsprites_.../model.keras
"""
import dataclasses
import sys
import time
from typing import Literal

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

import common
import data


@dataclasses.dataclass
class Config(common.RunConfig):
    dataset: Literal["dsprites", "mnist", "sprites"] = "dsprites"  # Higgins et al. and Burgess et al. use dSprites.
    architecture: Literal["burgess", "mlp"] = "burgess"  # Burgess et al. 2018 conv net, or Higgins et al. 2017 MLP.
    objective: Literal["beta", "capacity"] = "beta"  # Higgins et al. 2017 (beta * KL) or Burgess et al. 2018 (|KL - C|).
    z_dim: int = 10  # Both papers.
    beta: float = 4.0  # Higgins et al. 2017, dSprites.
    gamma: float = 1000.0  # Burgess et al. 2018, Appendix A.
    capacity_max: float = 25.0  # C_max in nats per image; Burgess et al. 2018, Appendix A.
    capacity_steps: int = 100000  # T: steps over which C rises linearly from 0 to C_max; Burgess et al. 2018.
    batch_size: int = 64  # Burgess et al. 2018.
    learning_rate: float = 0.0  # Adam; 0 = per objective: beta 5e-4 (Burgess et al. 2018), capacity 1e-4 (see above).
    epochs: int = 0  # 0 = per dataset: dSprites 140 epochs of the 58,351 training images (127,540 steps).
    steps_per_epoch: int = 0  # 0 = one pass over the training split.
    grid_every: int = 10  # Write a latent-traversal image every this many epochs.
    quick: bool = False  # A few-minute CPU run (2 short epochs) to try the pipeline end to end.
    evaluate: bool = True  # Run eval_latents.py on the trained model at the end.


EPOCHS = {"dsprites": 140, "mnist": 100, "sprites": 20}
LEARNING_RATE = {"beta": 5e-4, "capacity": 1e-4}  # Adam, per objective (module docstring).


# ---------------------------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------------------------

def build_encoder(image_shape, z_dim, architecture):
    images = keras.Input(image_shape)
    x = images
    if architecture == "burgess":
        for _ in range(4):
            x = layers.Conv2D(32, 4, 2, padding="same", activation="relu")(x)
        x = layers.Flatten()(x)
        x = layers.Dense(256, activation="relu")(x)
        x = layers.Dense(256, activation="relu")(x)
    else:
        x = layers.Flatten()(x)
        x = layers.Dense(1200, activation="relu")(x)
        x = layers.Dense(1200, activation="relu")(x)
    # The heads feed the losses, so they compute in float32 under mixed precision.
    z_mean = layers.Dense(z_dim, dtype="float32", name="z_mean")(x)
    z_logvar = layers.Dense(z_dim, dtype="float32", name="z_logvar")(x)
    return keras.Model(images, [z_mean, z_logvar], name="encoder")


def build_decoder(image_shape, z_dim, architecture):
    height, width, channels = image_shape
    z = keras.Input((z_dim,))
    if architecture == "burgess":
        # Start from the encoder's last feature map (4x4 for 64x64 images) and double it four times.
        h0, w0 = -(-height // 16), -(-width // 16)
        x = layers.Dense(256, activation="relu")(z)
        x = layers.Dense(256, activation="relu")(x)
        x = layers.Dense(h0 * w0 * 32, activation="relu")(x)
        x = layers.Reshape((h0, w0, 32))(x)
        for _ in range(3):
            x = layers.Conv2DTranspose(32, 4, 2, padding="same", activation="relu")(x)
        logits = layers.Conv2DTranspose(channels, 4, 2, padding="same", dtype="float32")(x)
        crop_h, crop_w = 16 * h0 - height, 16 * w0 - width
        if crop_h or crop_w:  # MNIST 32 -> 28, Sprites 64 -> 60
            logits = layers.Cropping2D(((crop_h // 2, crop_h - crop_h // 2), (crop_w // 2, crop_w - crop_w // 2)),
                                       dtype="float32")(logits)
    else:
        x = z
        for _ in range(3):
            x = layers.Dense(1200, activation="tanh")(x)
        logits = layers.Reshape(image_shape, dtype="float32")(
            layers.Dense(height * width * channels, dtype="float32")(x))
    return keras.Model(z, logits, name="decoder")


# ---------------------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------------------

def kl_divergence(z_mean, z_logvar):
    """KL(N(mu, sigma^2) || N(0, 1)) per image and latent, in nats (Kingma & Welling 2014, Appendix B)."""
    return 0.5 * (ops.square(z_mean) + ops.exp(z_logvar) - z_logvar - 1.0)


def bernoulli_nll(logits, images):
    """-log p(x|z) per image: binary cross-entropy on logits, summed over the pixels (nats)."""
    per_pixel = ops.binary_crossentropy(images, ops.cast(logits, "float32"), from_logits=True)
    return ops.sum(per_pixel, axis=tuple(range(1, len(images.shape))))


def capacity_at(step, capacity_max, capacity_steps):
    """C(t) = C_max * min(1, t / T) (Burgess et al. 2018, Sec. 5)."""
    return capacity_max * ops.minimum(1.0, ops.cast(step, "float32") / float(max(1, capacity_steps)))


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="disentangle")
class BetaVAE(keras.Model):
    """Encoder (z_mean, z_logvar) and Bernoulli decoder, trained by the beta or the capacity objective.

    Batches are dicts {"image": ...} from data.images. The interface every model script provides for
    eval_latents.py: `encode(images)` -> dict of float32 codes ("z_mean", "z_logvar"; no "s": the model is
    unsupervised) and `decode(z)` -> images in [0, 1].
    """

    def __init__(self, image_shape, architecture="burgess", z_dim=10, objective="beta", beta=4.0, gamma=1000.0,
                 capacity_max=25.0, capacity_steps=100000, seed=0, **kwargs):
        super().__init__(**kwargs)
        if objective not in ("beta", "capacity"):
            raise ValueError(f"objective must be 'beta' or 'capacity', got {objective!r}")
        self.image_shape, self.architecture, self.z_dim = tuple(image_shape), architecture, z_dim
        self.objective, self.beta, self.gamma = objective, beta, gamma
        self.capacity_max, self.capacity_steps, self.seed = capacity_max, capacity_steps, seed
        self.encoder = build_encoder(self.image_shape, z_dim, architecture)
        self.decoder = build_decoder(self.image_shape, z_dim, architecture)
        self.seed_generator = keras.random.SeedGenerator(seed)
        names = ["loss", "loss/reconstruction", "loss/kl", "capacity/C"]
        names += [f"kl/dim_{j:02d}" for j in range(z_dim)]
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def build(self, input_shape=None):
        # Build the networks and the optimizer so that checkpoints restore all of their state.
        self.encoder.build((None,) + self.image_shape)
        self.decoder.build((None, self.z_dim))
        if getattr(self, "optimizer", None) is not None:  # not yet compiled when a checkpoint is loaded
            self.optimizer.build(self.trainable_variables)
        self.built = True

    def build_from_config(self, config):
        self.build()

    def call(self, inputs, training=False):
        # Reconstruct from the mean code (fit() under a distribution strategy calls this).
        images = inputs["image"] if isinstance(inputs, dict) else inputs
        z_mean, _ = self.encoder(images, training=training)
        return ops.sigmoid(self.decoder(z_mean, training=training))

    # The shared encode/decode interface of eval_latents.py.
    def encode(self, images, training=False):
        z_mean, z_logvar = self.encoder(images, training=training)
        return {"z_mean": z_mean, "z_logvar": z_logvar}

    def decode(self, z, training=False):
        return ops.sigmoid(self.decoder(z, training=training))

    def capacity(self):
        """C for the step about to be taken (0 under the beta objective)."""
        if self.objective != "capacity":
            return ops.zeros(())
        return capacity_at(self.optimizer.iterations, self.capacity_max, self.capacity_steps)

    def compute_losses(self, images, training=False):
        """Both terms of the objective on one batch, each averaged over the batch (see the module docstring)."""
        z_mean, z_logvar = self.encoder(images, training=training)
        noise = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)  # float32
        z = z_mean + ops.exp(0.5 * z_logvar) * noise
        reconstruction = ops.mean(bernoulli_nll(self.decoder(z, training=training), images))
        kl_per_dim = ops.mean(kl_divergence(z_mean, z_logvar), axis=0)
        return reconstruction, kl_per_dim

    def train_step(self, batch):
        images = batch["image"]
        capacity = self.capacity()  # from the step counter before this step's update
        with tf.GradientTape() as tape:
            reconstruction, kl_per_dim = self.compute_losses(images, training=True)
            kl = ops.sum(kl_per_dim)
            if self.objective == "beta":
                loss = reconstruction + self.beta * kl  # Higgins et al. 2017, Eq. 4
            else:
                loss = reconstruction + self.gamma * ops.abs(kl - capacity)  # Burgess et al. 2018, Eq. 8
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        values = {"loss": loss, "loss/reconstruction": reconstruction, "loss/kl": kl, "capacity/C": capacity}
        values.update({f"kl/dim_{j:02d}": kl_per_dim[j] for j in range(self.z_dim)})
        for name, value in values.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def get_config(self):
        config = super().get_config()
        config.update(image_shape=list(self.image_shape), architecture=self.architecture, z_dim=self.z_dim,
                      objective=self.objective, beta=self.beta, gamma=self.gamma, capacity_max=self.capacity_max,
                      capacity_steps=self.capacity_steps, seed=self.seed)
        return config


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------

def resolve(config):
    if config.quick:
        config.epochs = config.epochs or 2
        config.steps_per_epoch = config.steps_per_epoch or 150
    config.epochs = config.epochs or EPOCHS[config.dataset]
    config.learning_rate = config.learning_rate or LEARNING_RATE[config.objective]
    common.check_ranges(config, at_least_one=("z_dim", "batch_size", "epochs", "capacity_steps"),
                        non_negative=("beta", "gamma", "capacity_max", "learning_rate"))
    return config


def traversal_images(model, images):
    """The latent traversal of images[0] (latents sorted by the KL over `images`), for the training grids."""
    codes = model.encode(images)
    kl = np.mean(np.asarray(kl_divergence(codes["z_mean"], codes["z_logvar"])), axis=0)
    return common.traversal_grid(model, np.asarray(codes["z_mean"])[0], np.argsort(kl)[::-1])


def main(argv=None):
    try:
        config = resolve(common.parse_config(Config, argv, description=__doc__))
    except ValueError as error:
        sys.exit(f"error: {error}")
    # TensorFlow's default threads (ops split across the cores), not one_thread_per_op: this model is one chain
    # of ops, which then used one core. The default was faster for it: 50.3-76.2 ms/iter (mean 64.2) against
    # 72.6-79.1 ms (mean 76.1) for the conv net in five alternating `--benchmark` pairs on the 2-core CPU.
    common.configure_cpu(one_thread_per_op=False)
    precision = common.set_precision(config.precision)
    common.set_seed(config.seed)
    try:
        dataset = data.load_dataset(config.dataset, config.data_dir or None)
    except data.DataError as error:
        sys.exit(f"error: {error}")
    steps = config.steps_per_epoch or len(dataset.rows("train")) // config.batch_size
    model = BetaVAE(dataset.image_shape, config.architecture, config.z_dim, config.objective, config.beta,
                    config.gamma, config.capacity_max, config.capacity_steps, config.seed)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-8))
    model.build()

    def pipeline(first_epoch=0):
        train = data.images(dataset, "train", config.batch_size, shuffle=True, seed=config.seed,
                            drop_remainder=True, first_epoch=first_epoch)
        return train.repeat() if config.steps_per_epoch else train

    if config.benchmark:
        print(f"beta_vae on {config.dataset}: {config.architecture} network, batch {config.batch_size}, "
              f"z {config.z_dim}, {config.objective} objective, precision {precision}")
        common.benchmark_training(model, pipeline(), images_per_step=config.batch_size)
        return
    run_dir = common.prepare_run_dir(config, script="beta_vae", name=config.dataset, argv=argv)
    train = pipeline(common.completed_epochs(run_dir))  # 0 for a new run: it has no backup yet
    grid_rows = np.random.default_rng(0).choice(dataset.rows("test"), min(64, len(dataset.rows("test"))), replace=False)
    grid_images = dataset.images[grid_rows].astype(np.float32) / 255.0
    callbacks = common.training_callbacks(run_dir, image_grid_fn=lambda m: traversal_images(m, grid_images),
                                          grid_every=config.grid_every)
    schedule = (f"C 0 -> {config.capacity_max:g} nats over {config.capacity_steps} steps, gamma {config.gamma:g}"
                if config.objective == "capacity" else f"beta {config.beta:g}")
    print(f"training beta_vae ({config.architecture}, {schedule}) on {config.dataset} in {run_dir} "
          f"({config.epochs} epochs x {steps} steps, precision {precision})", flush=True)
    started = time.time()
    try:
        # shuffle=False: the tf.data pipeline already shuffles; fit() ignores shuffle on a Dataset, but
        # its default shuffle=True made Keras print a warning at the start of every run.
        model.fit(train, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch or None, shuffle=False,
                  callbacks=callbacks, verbose=2 if not sys.stdout.isatty() else 1)
    except common.TrainingDiverged as error:
        sys.exit(f"error: {error}")
    common.save_model(model, run_dir / "model.keras")
    print(f"trained in {(time.time() - started) / 60:.1f} min (this process; {common.training_minutes(run_dir):.1f} min "
          f"over all epochs in log.csv); model saved to {run_dir / 'model.keras'}")
    if config.evaluate:
        import eval_latents

        eval_latents.main(["--ckpt", str(run_dir / "model.keras")] + (["--quick"] if config.quick else []) +
                          (["--data-dir", config.data_dir] if config.data_dir else []))


if __name__ == "__main__":
    main()
