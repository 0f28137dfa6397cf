"""beta-VAE (Higgins et al., ICLR 2017) and the capacity-annealed VAE (Burgess et al. 2018, arXiv 1804.03599).

An unsupervised VAE: the encoder maps an image x to q(z|x) = N(mu(x), diag sigma^2(x)) over 10 latents, the
decoder gives Bernoulli logits for every pixel, and one of two objectives is minimised per batch
(docs/methods.md Sec. 2):

  beta   (Higgins et al. 2017, Eq. 4):    L = E_B[-log p(x|z)] + beta * E_B[KL(q(z|x) || N(0, I))]
  capacity (Burgess et al. 2018, Eq. 8):  L = E_B[-log p(x|z)] + gamma * |E_B[KL(q(z|x) || N(0, I))] - C(t)|
                                          C(t) = C_max * min(1, t / T)

Code names: -log p(x|z) is `reconstruction` (bernoulli_nll: cross-entropy on logits SUMMED over pixels, in
nats), KL is `kl` (kl_divergence, SUMMED over latents); both are AVERAGED over the batch, so beta = 1 is the
plain ELBO per image and C (`capacity/C`, capacity_at) is nats per image. beta, gamma, C_max and T are the
flags --beta, --gamma, --capacity-max and --capacity-steps; t is the optimizer's step counter, so a resumed
run continues the schedule where it stopped. z = mu + sigma * eps, one eps per image and step.

Defaults: beta 4 (Higgins et al. 2017, dSprites); gamma 1000, C_max 25 nats, T 100,000 steps, batch 64,
Adam 5e-4 (Burgess et al. 2018, Appendix A). We deliberately train the capacity objective at Adam 1e-4, the
rate of Locatello et al. 2019 for it: at 5e-4 the code became input-independent while C was still near 0.
Networks (docs/methods.md Sec. 3): --architecture burgess (Burgess et al. 2018, Appendix A.1) or mlp
(Higgins et al. 2017, Appendix A.4); on MNIST and Sprites the conv decoder's output is cropped to the image.

Where we deliberately differ from the public notebook (Akella17/Disentangled_Representation_Learning): one
parameterisation, log sigma^2, in both the KL and the sampler, with no clipping (the notebook clips it to
[1e-8, 5], so no posterior is narrower than the prior); the published conv net (the notebook's never ran on
64x64); C(t) from the optimizer's step counter, not a counter that a restart resets.

Usage:
  python beta_vae.py                                   # beta-VAE (beta 4), Burgess conv net, real dSprites
  python beta_vae.py --objective capacity              # capacity annealing, C 0 -> 25 nats over 100k steps
  python beta_vae.py --quick                           # a short run and a quick evaluation, to try it
  python beta_vae.py --resume                          # continue the latest interrupted dsprites run
  python eval_latents.py --ckpt runs/beta_vae_dsprites_.../model.keras
Results: docs/results/beta_vae.md.
"""
import dataclasses
import sys
from typing import ClassVar, Literal, Optional

import common  # First: it keeps TensorFlow's start-up notices quiet.
import data
import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

@dataclasses.dataclass
class Config(common.RunConfig):
    dataset: Literal["dsprites", "mnist", "sprites"] = "dsprites"  # Higgins et al. and Burgess et al. use dSprites.
    architecture: Literal["burgess", "mlp"] = "burgess"  # Burgess et al. 2018 conv net, or Higgins et al. 2017 MLP.
    objective: Literal["beta", "capacity"] = "beta"  # beta * KL (Higgins et al. 2017) or |KL - C| (Burgess et al.).
    z_dim: int = 10  # Both papers.
    beta: float = 4.0  # Higgins et al. 2017, dSprites.
    gamma: float = 1000.0  # Burgess et al. 2018, Appendix A.
    capacity_max: float = 25.0  # C_max in nats per image; Burgess et al. 2018, Appendix A.
    capacity_steps: int = 100000  # T: steps over which C rises linearly from 0 to C_max; Burgess et al. 2018.
    batch_size: int = 64  # Burgess et al. 2018.
    learning_rate: Optional[float] = None  # Adam; default beta 5e-4 (Burgess et al. 2018), capacity 1e-4.
    epochs: Optional[int] = None  # Default dSprites 140 (127,540 steps), MNIST 100, Sprites 20; --quick 2.
    steps_per_epoch: Optional[int] = None  # Default one pass over the training split; --quick 150.
    grid_every: int = 10  # Write a latent-traversal image every this many epochs.
    quick: bool = False  # A few-minute CPU run (2 short epochs) with a quick evaluation: try it end to end.
    evaluate: bool = True  # Run eval_latents.py on the trained model at the end.

    # What `--resume` may change (more epochs, another learning rate); anything else would not fit the checkpoint.
    CHANGEABLE_ON_RESUME: ClassVar[tuple] = common.RunConfig.CHANGEABLE_ON_RESUME + (
        "epochs", "learning_rate", "grid_every", "evaluate")

    def __post_init__(self):
        common.check_ranges(
            self, at_least_one=("z_dim", "batch_size", "epochs", "steps_per_epoch", "capacity_steps", "grid_every"),
            positive=("learning_rate",), non_negative=("beta", "gamma", "capacity_max"))


EPOCHS = {"dsprites": 140, "mnist": 100, "sprites": 20}
LEARNING_RATE = {"beta": 5e-4, "capacity": 1e-4}  # Adam, per objective (module docstring).
QUICK = {"epochs": 2, "steps_per_epoch": 150}


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

    def __init__(self, image_shape, *, architecture="burgess", z_dim=10, objective="beta", beta=4.0, gamma=1000.0,
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
        noise = common.replica_normal(ops.shape(z_mean), self.seed_generator)  # float32
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
            scaled = self.optimizer.scale_loss(loss / common.replicas())
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
    """Fill the None fields from --quick, the dataset and the objective; an explicit value is kept."""
    defaults = {**(QUICK if config.quick else {}), "epochs": EPOCHS[config.dataset],
                "learning_rate": LEARNING_RATE[config.objective]}
    for name, value in defaults.items():
        if getattr(config, name) is None:
            setattr(config, name, value)
    return config


def traversal_images(model, images):
    """The latent traversal of images[0] (latents sorted by the KL over `images`), for the training grids."""
    codes = model.encode(images)
    kl = np.mean(np.asarray(kl_divergence(codes["z_mean"], codes["z_logvar"])), axis=0)
    return common.traversal_grid(model, np.asarray(codes["z_mean"])[0], np.argsort(kl)[::-1])


def main(argv=None):
    config = common.parse_config(Config, argv, description=__doc__, resolve=resolve, script="beta_vae")
    # TensorFlow's default threads (ops split across the cores), not one_thread_per_op: this model is one chain
    # of ops, which would then run on one core.
    common.configure_cpu(one_thread_per_op=False)
    common.set_precision(config.precision)
    common.set_seed(config.seed)
    # Before TensorFlow's first op, which --distribute multiworker must precede (it configures the runtime).
    strategy = common.distribution(config, config.batch_size)
    try:
        dataset = data.load_dataset(config.dataset, config.data_dir)
    except data.DataError as error:
        sys.exit(f"error: {error}")
    steps = config.steps_per_epoch or len(dataset.rows("train")) // config.batch_size
    with strategy.scope():  # built where --distribute trains it
        model = BetaVAE(dataset.image_shape, architecture=config.architecture, z_dim=config.z_dim,
                        objective=config.objective, beta=config.beta, gamma=config.gamma,
                        capacity_max=config.capacity_max, capacity_steps=config.capacity_steps, seed=config.seed)
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-8))
        model.build()

    def pipeline(first_epoch):
        train = data.images(dataset, "train", config.batch_size, shuffle=True, seed=config.seed,
                            drop_remainder=True, first_epoch=first_epoch)
        return train.repeat() if config.steps_per_epoch else train

    test_rows = dataset.rows("test")
    grid_rows = np.random.default_rng(0).choice(test_rows, min(64, len(test_rows)), replace=False)
    grid_images = dataset.images[grid_rows].astype(np.float32) / 255.0
    objective = (f"C 0 -> {config.capacity_max:g} nats over {config.capacity_steps} steps, gamma {config.gamma:g}"
                 if config.objective == "capacity" else f"beta {config.beta:g}")
    common.train(model, config, script="beta_vae", pipeline=pipeline, steps=steps, argv=argv,
                 describe=f"{config.architecture} network, z {config.z_dim}, {objective}",
                 image_grid_fn=lambda m: traversal_images(m, grid_images))


if __name__ == "__main__":
    main()
