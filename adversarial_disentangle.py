"""Disentangling factors of variation with adversarial training (Mathieu, Zhao, Sprechmann, Ramesh and LeCun,
NIPS 2016, arXiv 1611.03383).

The encoder splits an image into a specified code s (deterministic; what a pair shares: the digit, the sprite
identity, the dSprites shape) and an unspecified code z ~ N(mu, sigma^2). A pair discriminator D sees two images
stacked on the channels and says whether the second is a real image of the first one's class; it only ever
sees pairs, never class labels. Every iteration takes three kinds of step (docs/methods.md Sec. 4):

  A. auto-encoder, on a same-class pair (x1, x2):
       L_ae = [SSE(Dec(z1, s1), x1) + SSE(Dec(z1, s2), x1) + beta * KL(x1)] / P        (batch mean)
  B. generator, `generator_steps` times (2), on a pair of different classes (x1, x3) and z_p ~ N(0, I):
       L_gen = CE(D(x3, Dec(z1, s3)), real) + CE(D(x3, Dec(z_p, s3)), real) + beta * KL(x1) / P
  C. discriminator, on a same-class pair (a, b) and an unrelated image x1, the fake detached:
       L_d = CE(D(a, b), real) + CE(D(a, Dec(mu(x1), s(a))), fake)
     taken only while D's accuracy on the previous batch is below 80 % (`d_gate`, `d_gate_threshold`).

Code names: SSE / P is `_reconstruction` (Bernoulli NLL on dSprites), KL is `_kl` (nats summed over z), CE is `_bce`
on D's one logit (the reference's 2-way softmax is the same model: a sigmoid of the logit difference); P = pixels
per image; beta = `kl_weight`, 1 in the paper and the reference code (a larger one narrows z, as in a beta-VAE,
Higgins et al. 2017: nothing else in the method keeps the class out of z). `kl_warmup_steps` (0: off) raises beta
linearly from 0 over that many encoder/decoder steps, the KL annealing of Bowman et al. 2016 ("Generating sentences
from a continuous space"): a large beta from the first step can shut z before the decoder has learnt to read it,
and then the decoder ignores z. Optimizers (`--optimizers`): `reference` gives A, B and C each their own Adam
(lr 1e-4, betas 0.5 / 0.999), as the public PyTorch code does; Adam normalises each step, so there the step counts
(1 A : 2 B) set the balance and the weight of a whole step's loss would be inert (beta weighs KL against the other
terms of its step, which does count). `joint` takes one Adam step on L_ae + w_adv * L_adv for the encoder and
decoder (w_adv = adversarial_weight, 0.01 as in the official Lua code), plus C: a real weight with one optimizer
fewer.

Where we deliberately differ from the reference code (ananyahjha93/disentangling-factors-of-variation-using-
adversarial-training): D's gate uses the previous batch's accuracy, as its README states (the code uses the
batch about to be trained on, which trains D on exactly the batches it finds hard; `--d-gate current` restores
it); the fake pair is detached in C (there D's loss reaches the encoder and decoder); the pair D sees is always
(anchor, candidate); pairs and partners are drawn afresh every epoch (the reference replays its first epoch);
Keras' default initialisation (--reference-init gives N(0, 0.05)). Networks: cycle_vae.py's, per dataset.

Usage:
  python adversarial_disentangle.py --dataset mnist --quick     # a short run and a quick evaluation
  python adversarial_disentangle.py --dataset mnist             # the reference's settings: 50 epochs, batch 64
  python adversarial_disentangle.py --dataset mnist --kl-weight 3  # the same with beta 3: pretrained/'s MNIST model
  python adversarial_disentangle.py --dataset mnist --benchmark # time training iterations
  python eval_latents.py --ckpt runs/adversarial_disentangle_mnist_.../model.keras
Results: docs/results/adversarial_disentangle.md.
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

# Per-dataset defaults of the fields that are None in Config. MNIST: the reference code (16/16, 50 epochs).
# Sprites and dSprites: cycle_vae.py's code sizes and CPU-sized schedules.
DATASET_DEFAULTS = {
    "mnist": {"z_dim": 16, "s_dim": 16, "epochs": 50},
    "sprites": {"z_dim": 512, "s_dim": 64, "epochs": 16},
    "dsprites": {"z_dim": 10, "s_dim": 10, "epochs": 15},
}
# --quick: a short run that shows the method working in a few CPU minutes.
QUICK = {"epochs": 2, "steps_per_epoch": 400, "learning_rate": 5e-4}


@dataclasses.dataclass
class Config(common.RunConfig):
    dataset: Literal["mnist", "sprites", "dsprites"] = "mnist"  # MNIST digit, Sprites identity, dSprites shape.
    z_dim: Optional[int] = None  # Unspecified code size; default MNIST 16, Sprites 512, dSprites 10.
    s_dim: Optional[int] = None  # Specified code size; default MNIST 16, Sprites 64, dSprites 10.
    batch_size: int = 64  # Reference code.
    epochs: Optional[int] = None  # Default MNIST 50 (reference), Sprites 16, dSprites 15; --quick 2.
    steps_per_epoch: Optional[int] = None  # Iterations per epoch; default one pass over the training split.
    learning_rate: Optional[float] = None  # Every Adam; default 1e-4 (reference), --quick 5e-4.
    beta_1: float = 0.5  # Adam's beta_1 for every optimizer (reference; beta_2 0.999, epsilon 1e-8).
    optimizers: Literal["reference", "joint"] = "reference"  # An Adam per step kind, or one weighted loss.
    adversarial_weight: float = 0.01  # w_adv on L_adv with --optimizers joint (official Lua code).
    generator_steps: int = 2  # Generator steps (B) per iteration with --optimizers reference (reference: 2).
    d_gate: Literal["previous", "current", "off"] = "previous"  # D steps only while its accuracy is low.
    d_gate_threshold: float = 0.8  # D steps while its accuracy (previous or current batch) is below this.
    label_smoothing: float = 0.0  # D's target for real pairs is 1 - this (the Lua code: 0.05).
    kl_weight: float = 1.0  # beta on z's KL in steps A and B (1: the paper and the reference code).
    kl_warmup_steps: int = 0  # beta rises linearly from 0 to kl_weight over this many iterations; 0: no warm-up.
    reconstruction: Literal["auto", "mse", "bernoulli"] = "auto"  # auto: bernoulli on dSprites, else mse.
    reference_init: bool = False  # N(0, 0.05) weights as in the reference instead of Keras' defaults.
    grid_every: int = 5  # Write a swap grid every this many epochs.
    quick: bool = False  # A short CPU run (2 x 400 iterations at lr 5e-4) and a quick evaluation.
    evaluate: bool = True  # Run eval_latents.py on the trained model at the end.

    # What `--resume` may change (more epochs, another learning rate); anything else would not fit the checkpoint.
    CHANGEABLE_ON_RESUME: ClassVar[tuple] = common.RunConfig.CHANGEABLE_ON_RESUME + (
        "epochs", "learning_rate", "grid_every", "evaluate")

    def __post_init__(self):
        common.check_ranges(
            self, at_least_one=("z_dim", "s_dim", "batch_size", "epochs", "steps_per_epoch", "generator_steps",
                                "grid_every"),
            positive=("learning_rate", "beta_1"), non_negative=("adversarial_weight", "kl_weight", "kl_warmup_steps"))
        if not 0 < self.beta_1 < 1:
            raise ValueError(f"--beta-1 must be between 0 and 1, got {self.beta_1}.")
        if not 0 < self.d_gate_threshold <= 1:
            raise ValueError(f"--d-gate-threshold must be in (0, 1], got {self.d_gate_threshold}.")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"--label-smoothing must be in [0, 0.5), got {self.label_smoothing}.")


def resolve(config):
    """Fill the None fields from --quick and the dataset; an explicit value is kept."""
    for preset in ([QUICK] if config.quick else []) + [DATASET_DEFAULTS[config.dataset], {"learning_rate": 1e-4}]:
        for name, value in preset.items():
            if getattr(config, name) is None:
                setattr(config, name, value)
    if config.reconstruction == "auto":
        config.reconstruction = "bernoulli" if config.dataset == "dsprites" else "mse"
    return config


# ---------------------------------------------------------------------------------------------------------------
# Networks: the encoder and decoder are cycle_vae.py's (docs/methods.md Sec. 3), repeated here so that this file
# stands alone; tests/test_adversarial_disentangle.py checks that they stay the same. PyTorch Conv2d(k5, s2, p1)
# is ZeroPadding2D(1) + a "valid" Conv2D; InstanceNorm2d (no affine) is GroupNormalization, one group per channel.
# ---------------------------------------------------------------------------------------------------------------

def _init(reference_init):
    return keras.initializers.RandomNormal(0.0, 0.05) if reference_init else "glorot_uniform"


def instance_norm():
    return layers.GroupNormalization(groups=-1, center=False, scale=False, epsilon=1e-5)


def build_encoder(image_shape, z_dim, s_dim, dataset, reference_init=False):
    init = _init(reference_init)
    images = keras.Input(image_shape)
    x = images
    if dataset == "dsprites":  # disentanglement_lib's conv encoder, 64 -> 32 -> 16 -> 8 -> 4
        for filters, kernel in ((32, 4), (32, 4), (64, 2), (64, 2)):
            x = layers.Conv2D(filters, kernel, 2, padding="same", activation="relu", kernel_initializer=init)(x)
        x = layers.Dense(256, activation="relu", kernel_initializer=init)(layers.Flatten()(x))
    else:  # MNIST 28 -> 13 -> 6 -> 2 (16, 32, 64); Sprites 60 -> 29 -> 14 -> 6 -> 2 (16, 32, 64, 128)
        for filters in (16, 32, 64) if dataset == "mnist" else (16, 32, 64, 128):
            x = layers.ZeroPadding2D(1)(x)
            x = layers.Conv2D(filters, 5, 2, padding="valid", kernel_initializer=init)(x)
            x = layers.ReLU()(instance_norm()(x))
        x = layers.Flatten()(x)
    # The heads feed the losses, so they compute in float32 under mixed precision.
    z_mean = layers.Dense(z_dim, kernel_initializer=init, dtype="float32", name="z_mean")(x)
    z_logvar = layers.Dense(z_dim, kernel_initializer=init, dtype="float32", name="z_logvar")(x)
    specified = layers.Dense(s_dim, kernel_initializer=init, dtype="float32", name="specified")(x)
    return keras.Model(images, [z_mean, z_logvar, specified], name="encoder")


def build_decoder(image_shape, z_dim, s_dim, dataset, reference_init=False):
    init = _init(reference_init)
    unspecified, specified = keras.Input((z_dim,)), keras.Input((s_dim,))
    if dataset == "dsprites":  # disentanglement_lib's conv decoder fed Dense(z) || Dense(s)
        x = layers.Concatenate()([layers.Dense(128, activation="relu", kernel_initializer=init)(unspecified),
                                  layers.Dense(128, activation="relu", kernel_initializer=init)(specified)])
        x = layers.Dense(1024, activation="relu", kernel_initializer=init)(x)
        x = layers.Reshape((4, 4, 64))(x)
        for filters in (64, 32, 32):
            x = layers.Conv2DTranspose(filters, 4, 2, padding="same", activation="relu", kernel_initializer=init)(x)
        logits = layers.Conv2DTranspose(1, 4, 2, padding="same", dtype="float32")(x)
    else:
        # z and s each become half of the 2x2 feature map's channels (the reference's view(B, C, 2, 2) of the
        # concatenated vectors, done so that z and s stay in separate channels rather than separate rows).
        width = 256 if dataset == "mnist" else 512
        parts = [layers.Reshape((2, 2, width // 4))(layers.LeakyReLU(0.2)(
            layers.Dense(width, kernel_initializer=init)(code))) for code in (unspecified, specified)]
        x = layers.Concatenate()(parts)
        for filters in (32, 16) if dataset == "mnist" else (64, 32, 16):  # 2 -> 6 -> 14 (-> 30)
            x = layers.Conv2DTranspose(filters, 4, 2, padding="valid")(x)
            x = layers.LeakyReLU(0.2)(instance_norm()(x))
        logits = layers.Conv2DTranspose(image_shape[-1], 4, 2, padding="same", dtype="float32")(x)  # x2 (-> 28 / 60)
    # Logits (float32); the model's decode() applies the sigmoid, the Bernoulli loss uses them as they are.
    return keras.Model([unspecified, specified], logits, name="decoder")


def build_discriminator(image_shape, dataset, reference_init=False):
    """D(anchor, candidate) -> one logit: is the candidate a real image of the anchor's class?

    The pair is stacked on the channels. MNIST: the reference's 3 x [Conv k5 s2 p1, IN, LeakyReLU 0.2] with
    32, 64, 128 filters (28 -> 13 -> 6 -> 2); Sprites and dSprites: a fourth block of 256 (60 -> 29 -> 14 -> 6 -> 2,
    64 -> 31 -> 15 -> 7 -> 3); then one dense logit (docs/methods.md Sec. 4).
    """
    init = _init(reference_init)
    anchor, candidate = keras.Input(image_shape), keras.Input(image_shape)
    x = layers.Concatenate()([anchor, candidate])
    for filters in (32, 64, 128) if dataset == "mnist" else (32, 64, 128, 256):
        x = layers.ZeroPadding2D(1)(x)
        x = layers.Conv2D(filters, 5, 2, padding="valid", kernel_initializer=init)(x)
        x = layers.LeakyReLU(0.2)(instance_norm()(x))
    logit = layers.Dense(1, kernel_initializer=init, dtype="float32")(layers.Flatten()(x))
    return keras.Model([anchor, candidate], logit, name="discriminator")


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------

def _bce(logits, target):
    """Batch-mean binary cross-entropy of D's logits against a constant target (1 real, 0 fake)."""
    return ops.mean(ops.binary_crossentropy(ops.full_like(logits, target), logits, from_logits=True))


@keras.saving.register_keras_serializable(package="disentangle")
class AdversarialDisentangler(keras.Model):
    """Encoder (z_mean, z_logvar, specified), decoder (z, s) -> image and pair discriminator, trained by the
    auto-encoder, generator and discriminator steps of Mathieu et al. 2016 in every train_step.

    Batches are dicts from `training_data`: "ae" (a same-class pair), "gen" (a tuple of `generator_steps`
    different-class pairs) and "d" (a same-class pair). The interface of eval_latents.py: `encode(images)` ->
    {"s", "z_mean", "z_logvar"} and `decode(z, s)` -> images in [0, 1].
    """

    def __init__(self, image_shape, *, dataset, z_dim, s_dim, optimizers="reference", adversarial_weight=0.01,
                 generator_steps=2, d_gate="previous", d_gate_threshold=0.8, label_smoothing=0.0,
                 reconstruction="mse", reference_init=False, kl_weight=1.0, kl_warmup_steps=0, seed=0, **kwargs):
        super().__init__(**kwargs)
        for name, value, choices in (("optimizers", optimizers, ("reference", "joint")),
                                     ("d_gate", d_gate, ("previous", "current", "off")),
                                     ("reconstruction", reconstruction, ("mse", "bernoulli"))):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        self.image_shape, self.dataset, self.z_dim, self.s_dim = tuple(image_shape), dataset, z_dim, s_dim
        self.optimizers, self.adversarial_weight, self.generator_steps = optimizers, adversarial_weight, generator_steps
        self.d_gate, self.d_gate_threshold, self.label_smoothing = d_gate, d_gate_threshold, label_smoothing
        self.reconstruction, self.reference_init, self.seed = reconstruction, reference_init, seed
        self.kl_weight, self.kl_warmup_steps = kl_weight, kl_warmup_steps
        self.encoder = build_encoder(self.image_shape, z_dim, s_dim, dataset, reference_init)
        self.decoder = build_decoder(self.image_shape, z_dim, s_dim, dataset, reference_init)
        self.discriminator = build_discriminator(self.image_shape, dataset, reference_init)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.pixels = float(np.prod(self.image_shape))
        # D's accuracy on the last batch it saw, for the gate; 0 at the start, so that D trains on the first one.
        self.previous_d_accuracy = keras.Variable(0.0, trainable=False, name="previous_d_accuracy",
                                                  aggregation="only_first_replica")  # equal on every replica
        names = ["loss", "loss/autoencoder", "loss/generator", "loss/discriminator", "loss/reconstruction_self",
                 "loss/reconstruction_swap", "loss/kl", "gan/adversarial", "gan/d_accuracy", "gan/d_trained_fraction",
                 "per_image/swap_sse", "per_image/kl_nats"]
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.generator_optimizer = self.discriminator_optimizer = None

    @property
    def metrics(self):
        return list(self.trackers.values())

    @property
    def autoencoder_variables(self):
        return self.encoder.trainable_variables + self.decoder.trainable_variables

    def compile(self, optimizer, discriminator_optimizer=None, generator_optimizer=None, **kwargs):
        """optimizer: the auto-encoder step (with --optimizers joint, the one encoder/decoder step);
        generator_optimizer: the generator steps (reference mode only); discriminator_optimizer: D's steps."""
        super().compile(optimizer=optimizer, **kwargs)
        if discriminator_optimizer is None or (self.optimizers == "reference") != (generator_optimizer is not None):
            raise ValueError("compile() takes optimizer= and discriminator_optimizer=, and generator_optimizer= "
                             "exactly when optimizers='reference'.")
        # Optimizers stored by an overridden compile are not wrapped for loss scaling: do it here.
        if keras.config.dtype_policy().name == "mixed_float16":
            discriminator_optimizer = keras.optimizers.LossScaleOptimizer(discriminator_optimizer)
            if generator_optimizer is not None:
                generator_optimizer = keras.optimizers.LossScaleOptimizer(generator_optimizer)
        self.discriminator_optimizer, self.generator_optimizer = discriminator_optimizer, generator_optimizer

    def build(self, input_shape=None):
        # Build the networks and every optimizer so that checkpoints restore all of their state.
        self.encoder.build((None,) + self.image_shape)
        self.decoder.build([(None, self.z_dim), (None, self.s_dim)])
        self.discriminator.build([(None,) + self.image_shape] * 2)
        if getattr(self, "optimizer", None) is not None:  # not yet compiled when a checkpoint is loaded
            self.optimizer.build(self.autoencoder_variables)
        if self.generator_optimizer is not None:
            self.generator_optimizer.build(self.autoencoder_variables)
        if self.discriminator_optimizer is not None:
            self.discriminator_optimizer.build(self.discriminator.trainable_variables)
        self.built = True

    def build_from_config(self, config):
        self.build()

    def call(self, inputs, training=False):
        # Swap-reconstruct a same-class pair (fit() under a distribution strategy calls this).
        pair = inputs["ae"] if "ae" in inputs else inputs
        z_mean, _, _ = self.encoder(pair["image_a"], training=training)
        _, _, specified = self.encoder(pair["image_b"], training=training)
        return ops.sigmoid(self.decoder([z_mean, specified], training=training))

    # The shared encode/decode interface of eval_latents.py.
    def encode(self, images, training=False):
        z_mean, z_logvar, specified = self.encoder(images, training=training)
        return {"s": specified, "z_mean": z_mean, "z_logvar": z_logvar}

    def decode(self, z, s, training=False):
        # NumPy arrays and tensors alike, also one of each (Keras refuses a list that mixes them).
        z, s = ops.convert_to_tensor(z), ops.convert_to_tensor(s)
        return ops.sigmoid(self.decoder([z, s], training=training))

    # ---- the three steps ----

    def _sample(self, z_mean, z_logvar):
        noise = common.replica_normal(ops.shape(z_mean), self.seed_generator)
        return z_mean + ops.exp(0.5 * z_logvar) * noise

    def _beta(self):
        """The KL weight of this iteration: kl_weight, reached linearly over kl_warmup_steps encoder/decoder steps."""
        if not self.kl_warmup_steps or getattr(self, "optimizer", None) is None:
            return self.kl_weight
        progress = ops.cast(self.optimizer.iterations, "float32") / float(self.kl_warmup_steps)
        return self.kl_weight * ops.minimum(1.0, progress)

    @staticmethod
    def _kl(z_mean, z_logvar):
        return 0.5 * ops.sum(ops.square(z_mean) + ops.exp(z_logvar) - z_logvar - 1.0, axis=1)  # nats per image

    def _reconstruction(self, logits, x):
        """Per image: SSE (Bernoulli NLL in nats with reconstruction='bernoulli'), and the SSE for the logs."""
        sse = ops.sum(ops.square(ops.sigmoid(logits) - x), axis=(1, 2, 3))
        if self.reconstruction == "bernoulli":
            return ops.sum(ops.binary_crossentropy(x, logits, from_logits=True), axis=(1, 2, 3)), sse
        return sse, sse

    def _autoencoder_loss(self, pair, training):
        """A: self and swapped reconstruction of x1 from z1, with s1 and with its partner's s2, plus KL(x1)."""
        x1, x2 = pair["image_a"], pair["image_b"]
        z_mean, z_logvar, specified = self.encoder(ops.concatenate([x1, x2]), training=training)
        (z1_mean, _), (z1_logvar, _), (s1, s2) = ops.split(z_mean, 2), ops.split(z_logvar, 2), ops.split(specified, 2)
        z1 = self._sample(z1_mean, z1_logvar)
        logits = self.decoder([ops.concatenate([z1, z1]), ops.concatenate([s1, s2])], training=training)
        error, sse = self._reconstruction(logits, ops.concatenate([x1, x1]))
        self_error, swap_error = ops.split(error, 2)
        kl = self._kl(z1_mean, z1_logvar)
        parts = {"loss/reconstruction_self": ops.mean(self_error) / self.pixels,
                 "loss/reconstruction_swap": ops.mean(swap_error) / self.pixels,
                 "loss/kl": self._beta() * ops.mean(kl) / self.pixels,
                 "per_image/swap_sse": ops.mean(ops.split(sse, 2)[1]), "per_image/kl_nats": ops.mean(kl)}
        return parts["loss/reconstruction_self"] + parts["loss/reconstruction_swap"] + parts["loss/kl"], parts

    def _adversarial_loss(self, pair, training):
        """B's terms: Dec(z1, s3) and Dec(z_p, s3) should pass as x3's partners; returns (CE sum, beta KL(x1) / P)."""
        x1, x3 = pair["image_a"], pair["image_b"]
        z_mean, z_logvar, specified = self.encoder(ops.concatenate([x1, x3]), training=training)  # one pass
        (z_mean, _), (z_logvar, _), (_, s3) = ops.split(z_mean, 2), ops.split(z_logvar, 2), ops.split(specified, 2)
        prior = common.replica_normal(ops.shape(z_mean), self.seed_generator)
        logits = self.decoder([ops.concatenate([self._sample(z_mean, z_logvar), prior]), ops.concatenate([s3, s3])],
                              training=training)
        d_logits = self.discriminator([ops.concatenate([x3, x3]), ops.sigmoid(logits)], training=training)
        return _bce(d_logits, 1.0) * 2.0, self._beta() * ops.mean(self._kl(z_mean, z_logvar)) / self.pixels

    def _step(self, optimizer, loss_fn, variables):
        """One optimizer step on loss_fn() (loss-scaled under mixed precision); returns loss_fn()'s outputs."""
        with tf.GradientTape() as tape:
            outputs = loss_fn()
            scaled = optimizer.scale_loss(outputs[0] / common.replicas())
        optimizer.apply(tape.gradient(scaled, variables), variables)
        return outputs

    def _discriminator_step(self, pair, other):
        """C: real pair (a, b) against the detached fake (a, Dec(mu(x1), s(a))), gated by D's accuracy."""
        a, b = pair["image_a"], pair["image_b"]
        z_mean, _, specified = self.encoder(ops.concatenate([other, a]), training=False)  # one pass
        z_mean, s_a = ops.split(z_mean, 2)[0], ops.split(specified, 2)[1]
        fake = ops.stop_gradient(self.decode(z_mean, s_a, training=False))
        anchors, candidates = ops.concatenate([a, a]), ops.concatenate([b, fake])
        batch = ops.shape(a)[0]
        variables = self.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            logits = self.discriminator([anchors, candidates], training=True)
            real, fake_logits = ops.split(logits, 2)
            loss = _bce(real, 1.0 - self.label_smoothing) + _bce(fake_logits, 0.0)
            scaled = self.discriminator_optimizer.scale_loss(loss / common.replicas())
        # D's accuracy over the 2B decisions of this batch, before its update.
        correct = ops.concatenate([ops.cast(logits[:batch] > 0, "float32"), ops.cast(logits[batch:] <= 0, "float32")])
        accuracy = common.replica_mean(ops.mean(correct))  # the global batch's: every replica takes one decision
        gate = {"previous": self.previous_d_accuracy, "current": accuracy}.get(self.d_gate)
        train = tf.constant(True) if gate is None else gate < self.d_gate_threshold
        # A skipped step, not a zero gradient: Adam's momentum would still move the weights. The backward pass runs
        # only in the taken branch (on one device), so a closed gate costs D's forward pass alone.
        common.apply_if(train, self.discriminator_optimizer, lambda: tape.gradient(scaled, variables), variables)
        self.previous_d_accuracy.assign(accuracy)
        return loss, accuracy, ops.cast(train, "float32")

    def train_step(self, batch):
        values = {}
        if self.optimizers == "reference":
            # A, then B generator_steps times, each with its own Adam over the encoder and decoder.
            autoencoder, parts = self._step(self.optimizer, lambda: self._autoencoder_loss(batch["ae"], True),
                                            self.autoencoder_variables)
            generator = adversarial = 0.0
            for pair in batch["gen"][:self.generator_steps]:
                def generator_loss(pair=pair):
                    adv, kl = self._adversarial_loss(pair, True)
                    return adv + kl, adv
                loss, adv = self._step(self.generator_optimizer, generator_loss, self.autoencoder_variables)
                generator += loss / self.generator_steps
                adversarial += adv / self.generator_steps
        else:
            def joint_loss():
                autoencoder, parts = self._autoencoder_loss(batch["ae"], True)
                adv, _ = self._adversarial_loss(batch["gen"][0], True)
                return autoencoder + self.adversarial_weight * adv, autoencoder, parts, adv
            _, autoencoder, parts, adversarial = self._step(self.optimizer, joint_loss, self.autoencoder_variables)
            generator = self.adversarial_weight * adversarial
        discriminator, accuracy, trained = self._discriminator_step(batch["d"], batch["ae"]["image_b"])
        values.update(parts)
        values.update({"loss": autoencoder + generator, "loss/autoencoder": autoencoder, "loss/generator": generator,
                       "loss/discriminator": discriminator, "gan/adversarial": adversarial,
                       "gan/d_accuracy": accuracy, "gan/d_trained_fraction": trained})
        for name, value in values.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def get_config(self):
        config = super().get_config()
        config.update(image_shape=list(self.image_shape), dataset=self.dataset, z_dim=self.z_dim, s_dim=self.s_dim,
                      optimizers=self.optimizers, adversarial_weight=self.adversarial_weight,
                      generator_steps=self.generator_steps, d_gate=self.d_gate, d_gate_threshold=self.d_gate_threshold,
                      label_smoothing=self.label_smoothing, reconstruction=self.reconstruction,
                      reference_init=self.reference_init, kl_weight=self.kl_weight,
                      kl_warmup_steps=self.kl_warmup_steps, seed=self.seed)
        return config


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------

def training_data(dataset, config, first_epoch=0):
    """The batches of one iteration; epoch k's pairs depend only on (seed, k), also in a resumed run."""
    def pairs(make, offset):
        return make(dataset, "train", config.batch_size, seed=config.seed + offset, first_epoch=first_epoch)

    generator_steps = config.generator_steps if config.optimizers == "reference" else 1
    return tf.data.Dataset.zip({
        "ae": pairs(data.same_class_pairs, 0),
        "gen": tuple(pairs(data.different_class_pairs, 1 + k) for k in range(generator_steps)),
        "d": pairs(data.same_class_pairs, 1 + generator_steps)})


def build_optimizers(config):
    """The Adams of --optimizers (reference: auto-encoder, generator, D; joint: encoder/decoder, D)."""
    def adam():
        return keras.optimizers.Adam(config.learning_rate, beta_1=config.beta_1, beta_2=0.999, epsilon=1e-8)

    optimizers = {"optimizer": adam(), "discriminator_optimizer": adam()}
    if config.optimizers == "reference":
        optimizers["generator_optimizer"] = adam()
    return optimizers


def main(argv=None):
    config = common.parse_config(Config, argv, description=__doc__, resolve=resolve, script="adversarial_disentangle")
    # TensorFlow's default threads (each op on every core), not one_thread_per_op: the steps of an iteration depend
    # on each other, so there are few independent ops to run side by side (docs/results/speed.md).
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
        model = AdversarialDisentangler(
            dataset.image_shape, dataset=config.dataset, z_dim=config.z_dim, s_dim=config.s_dim,
            optimizers=config.optimizers, adversarial_weight=config.adversarial_weight,
            generator_steps=config.generator_steps, d_gate=config.d_gate, d_gate_threshold=config.d_gate_threshold,
            label_smoothing=config.label_smoothing, reconstruction=config.reconstruction,
            reference_init=config.reference_init, kl_weight=config.kl_weight,
            kl_warmup_steps=config.kl_warmup_steps, seed=config.seed)
        model.compile(**build_optimizers(config))
        model.build()

    def pipeline(first_epoch):
        train = training_data(dataset, config, first_epoch)
        # With --steps-per-epoch each pass over the data draws new pairs and fit() cuts it into short epochs.
        return train.repeat() if config.steps_per_epoch else train

    grid_images = np.stack([dataset.images[i] for i in data.grid_rows(dataset)]).astype(np.float32) / 255.0
    generator_steps = config.generator_steps if config.optimizers == "reference" else 1
    beta = f"KL weight {config.kl_weight:g}" + (f" after {config.kl_warmup_steps} warm-up steps"
                                                 if config.kl_warmup_steps else "")
    common.train(model, config, script="adversarial_disentangle", pipeline=pipeline, steps=steps, argv=argv,
                 describe=f"z {config.z_dim}, s {config.s_dim}, {config.optimizers} optimizers, "
                          f"D gate {config.d_gate}, {beta}",
                 image_grid_fn=lambda m: common.tile_images(common.swap_grid(m, grid_images)),
                 images_per_step=(4 + 2 * generator_steps) * config.batch_size)


if __name__ == "__main__":
    main()
