"""Cycle-Consistent VAE (Jha, Anand, Singh and Veeravasarapu, ECCV 2018, arXiv 1804.10469).

The encoder splits an image x into a specified code s(x) (deterministic; what a pair shares: the digit, the
sprite identity, the dSprites shape) and an unspecified code z ~ N(mu(x), sigma^2(x)). Both cycles run in
every step (docs/methods.md Sec. 1):

  Forward cycle (Sec. 3.1, Eq. 3), on a same-class pair (x1, x2), with the specified codes swapped:
      L_fwd = w_rec * [mMSE(Dec(z1, s2), x1) + mMSE(Dec(z2, s1), x2)] + w_kl * [KL(x1) + KL(x2)] / (B * P)
  Reverse cycle (Sec. 3.2, Eq. 4), on a pair of DIFFERENT classes and one prior draw z ~ N(0, I) per row:
      L_rev = w_rev * mean_(b, j) |mu(Dec(z, s(x1)))_j - mu(Dec(z, s(x2)))_j|

Code names: w_rec = reconstruction_weight (2), w_kl = kl_weight (3), w_rev = reverse_weight; mMSE is
`error` in _forward_cycle (sum of squared pixel errors / P, batch mean; Bernoulli NLL on dSprites, where the
mMSE decoder settles on black images), KL is `kl` (nats summed over z), L_fwd is `forward`, L_rev `reverse`.
P = pixels per image, B = batch size; per image this is SSE_swap + 1.5 * KL. In L_rev, s is detached and the
decoder is not updated: its gradient reaches the encoder only, through the second encoding.

--reverse-mode separate (default, the reference code's scheme): a second Adam over the encoder takes one
step on L_rev after every forward step; Adam cancels w_rev there. joint: one loss L_fwd + w_rev * L_rev and
one Adam, where w_rev (default 0.1) is a real knob.

Where we deliberately differ from the reference code (ananyahjha93/cycle-consistent-vae): reverse-cycle pairs
always differ in class; same-class partners are never the image itself and are drawn afresh every epoch (the
reference replays its first epoch's pairs); Keras' default initialisation (--reference-init gives N(0, 0.05));
instance normalisation identical in training and inference.

Usage:
  python cycle_vae.py --dataset mnist --quick          # a short run and a quick evaluation, to try it
  python cycle_vae.py --dataset mnist                  # paper settings: 100 epochs, lr 1e-4 (x0.1 at epoch 80)
  python cycle_vae.py --dataset sprites --resume       # continue the latest interrupted sprites run
  python cycle_vae.py --dataset mnist --benchmark      # time training iterations
  python eval_latents.py --ckpt runs/cycle_vae_mnist_.../model.keras
Results: docs/results/cycle_vae.md.
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

# Per-dataset defaults of the fields that are None in Config. MNIST and Sprites: the paper and the reference
# code. dSprites is not a dataset of the paper: the conv net of docs/methods.md Sec. 3 with 10 + 10 latents and
# Adam 5e-4 (Burgess et al. 2018's rate, also beta_vae.py's), since a CPU run of 15 epochs has ~14k steps.
DATASET_DEFAULTS = {
    "mnist": {"z_dim": 16, "s_dim": 16, "epochs": 100, "learning_rate": 1e-4},
    "sprites": {"z_dim": 512, "s_dim": 64, "epochs": 16, "learning_rate": 1e-4},
    "dsprites": {"z_dim": 10, "s_dim": 10, "epochs": 15, "learning_rate": 5e-4},
}
REVERSE_WEIGHT = {"separate": 10.0, "joint": 0.1}  # The reference's 10 (inert under its own Adam); joint: 0.1.
# --quick: a short run that shows the method working (swaps that keep the style) in a few CPU minutes.
QUICK = {"epochs": 2, "steps_per_epoch": 600, "learning_rate": 1e-3}


@dataclasses.dataclass
class Config(common.RunConfig):
    dataset: Literal["mnist", "sprites", "dsprites"] = "mnist"  # MNIST digit, Sprites identity, dSprites shape.
    z_dim: Optional[int] = None  # Unspecified code size; default MNIST 16, Sprites 512, dSprites 10.
    s_dim: Optional[int] = None  # Specified code size; default MNIST 16, Sprites 64, dSprites 10.
    batch_size: int = 64  # Reference code.
    epochs: Optional[int] = None  # Default MNIST 100 (paper), Sprites 16, dSprites 15; --quick 2.
    steps_per_epoch: Optional[int] = None  # Default one pass over the training split; --quick 600.
    learning_rate: Optional[float] = None  # Adam; default 1e-4 (reference), dSprites 5e-4, --quick 1e-3.
    lr_drop_epoch: Optional[int] = None  # Learning rate x 0.1 from this epoch on; default 80 % of the epochs.
    reconstruction_weight: float = 2.0  # w_rec, on each swapped mMSE in L_fwd (reference code).
    kl_weight: float = 3.0  # w_kl, on the summed KL / (B * P) in L_fwd (reference code).
    reverse_weight: Optional[float] = None  # w_rev on L_rev; default separate 10 (reference), joint 0.1.
    reverse_mode: Literal["separate", "joint"] = "separate"  # Second, encoder-only Adam (reference) or one loss.
    reconstruction: Literal["auto", "mse", "bernoulli"] = "auto"  # auto: bernoulli on dSprites, else mse (paper).
    reference_init: bool = False  # N(0, 0.05) weights as in the reference instead of Keras' defaults.
    reverse_loss: Literal["l1", "l2"] = "l1"  # Distance in L_rev: l1 (paper, Sec. 3.2) or mean squared difference.
    adam_epsilon: float = 1e-8  # Epsilon of both Adams (1e-8: PyTorch's default, as in the reference).
    grid_every: int = 5  # Write a swap grid every this many epochs.
    quick: bool = False  # A short CPU run (2 x 600 steps at lr 1e-3) and a quick evaluation: try it end to end.
    evaluate: bool = True  # Run eval_latents.py on the trained model at the end.

    # What `--resume` may change (more epochs, another learning rate); anything else would not fit the checkpoint.
    CHANGEABLE_ON_RESUME: ClassVar[tuple] = common.RunConfig.CHANGEABLE_ON_RESUME + (
        "epochs", "learning_rate", "lr_drop_epoch", "grid_every", "evaluate")

    def __post_init__(self):
        common.check_ranges(
            self, at_least_one=("z_dim", "s_dim", "batch_size", "epochs", "steps_per_epoch", "lr_drop_epoch",
                                "grid_every"),
            positive=("adam_epsilon", "learning_rate"),
            non_negative=("reconstruction_weight", "kl_weight", "reverse_weight"))


def resolve(config):
    """Fill the None fields from the dataset, the mode and --quick; an explicit value (0 included) is kept."""
    presets = [QUICK] if config.quick else []
    presets += [DATASET_DEFAULTS[config.dataset], {"reverse_weight": REVERSE_WEIGHT[config.reverse_mode]}]
    for preset in presets:
        for name, value in preset.items():
            if getattr(config, name) is None:
                setattr(config, name, value)
    if config.lr_drop_epoch is None:
        config.lr_drop_epoch = max(1, round(0.8 * config.epochs))
    if config.reconstruction == "auto":
        config.reconstruction = "bernoulli" if config.dataset == "dsprites" else "mse"
    return config


# ---------------------------------------------------------------------------------------------------------------
# Networks (docs/methods.md Sec. 3): PyTorch Conv2d(k5, s2, p1) is ZeroPadding2D(1) + a "valid" Conv2D, and
# InstanceNorm2d (no affine) is GroupNormalization with one group per channel.
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


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="disentangle")
class CycleVAE(keras.Model):
    """Encoder (z_mean, z_logvar, specified) and decoder (z, s) -> image, trained by both cycles per step.

    Batches are dicts {"same": same-class pair batch, "different": different-class pair batch} from data.py.
    The interface every model script provides for eval_latents.py: `encode(images)` -> dict of float32 codes
    ("s", "z_mean", "z_logvar") and `decode(z, s)` -> images in [0, 1].
    """

    def __init__(self, image_shape, *, dataset, z_dim, s_dim, reconstruction_weight=2.0, kl_weight=3.0,
                 reverse_weight=10.0, reverse_mode="separate", reference_init=False, seed=0, reconstruction="mse",
                 reverse_loss="l1", **kwargs):
        super().__init__(**kwargs)
        if reconstruction not in ("mse", "bernoulli"):
            raise ValueError(f"reconstruction must be 'mse' or 'bernoulli', got {reconstruction!r}")
        if reverse_loss not in ("l1", "l2"):
            raise ValueError(f"reverse_loss must be 'l1' or 'l2', got {reverse_loss!r}")
        self.reconstruction, self.reverse_loss = reconstruction, reverse_loss
        self.image_shape, self.dataset = tuple(image_shape), dataset
        self.z_dim, self.s_dim = z_dim, s_dim
        self.reconstruction_weight, self.kl_weight = reconstruction_weight, kl_weight
        self.reverse_weight, self.reverse_mode = reverse_weight, reverse_mode
        self.reference_init, self.seed = reference_init, seed
        self.encoder = build_encoder(self.image_shape, z_dim, s_dim, dataset, reference_init)
        self.decoder = build_decoder(self.image_shape, z_dim, s_dim, dataset, reference_init)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.pixels = float(np.prod(self.image_shape))
        names = ["loss", "loss/forward", "loss/reverse", "loss/reconstruction", "loss/kl",
                 "per_image/swap_sse", "per_image/kl_nats", "reverse/recovery_error"]
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.reverse_optimizer = None

    @property
    def metrics(self):
        return list(self.trackers.values())

    def compile(self, optimizer, reverse_optimizer=None, **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        if self.reverse_mode == "separate":
            if reverse_optimizer is None:
                raise ValueError("reverse_mode='separate' takes a second optimizer for the encoder-only reverse step: "
                                 "compile(optimizer=..., reverse_optimizer=...).")
            # Optimizers stored by an overridden compile are not wrapped for loss scaling: do it here.
            if keras.config.dtype_policy().name == "mixed_float16":
                reverse_optimizer = keras.optimizers.LossScaleOptimizer(reverse_optimizer)
            self.reverse_optimizer = reverse_optimizer

    def build(self, input_shape=None):
        # Build the sub-networks and every optimizer so that checkpoints restore all of their state.
        self.encoder.build((None,) + self.image_shape)
        self.decoder.build([(None, self.z_dim), (None, self.s_dim)])
        if getattr(self, "optimizer", None) is not None:  # not yet compiled when a checkpoint is loaded
            self.optimizer.build(self.trainable_variables)
        if self.reverse_optimizer is not None:
            self.reverse_optimizer.build(self.encoder.trainable_variables)
        self.built = True

    def build_from_config(self, config):
        self.build()

    def call(self, inputs, training=False):
        # Encode and swap-reconstruct a same-class pair (fit() under a distribution strategy calls this).
        pair = inputs["same"] if "same" in inputs else inputs
        z_mean, _, specified = self.encoder(ops.concatenate([pair["image_a"], pair["image_b"]]), training=training)
        return ops.sigmoid(self.decoder([z_mean, self._swap_halves(specified)], training=training))

    # The shared encode/decode interface of eval_latents.py.
    def encode(self, images, training=False):
        z_mean, z_logvar, specified = self.encoder(images, training=training)
        return {"s": specified, "z_mean": z_mean, "z_logvar": z_logvar}

    def decode(self, z, s, training=False):
        # NumPy arrays and tensors alike, also one of each (Keras refuses a list that mixes them).
        z, s = ops.convert_to_tensor(z), ops.convert_to_tensor(s)
        return ops.sigmoid(self.decoder([z, s], training=training))

    @staticmethod
    def _swap_halves(x):
        first, second = ops.split(x, 2)
        return ops.concatenate([second, first])

    def _forward_cycle(self, x, training):
        """L_fwd on the stacked pair x = [x1; x2] (Sec. 3.1, Eq. 3 of the paper; reference weights)."""
        z_mean, z_logvar, specified = self.encoder(x, training=training)
        noise = common.replica_normal(ops.shape(z_mean), self.seed_generator, parts=2)  # float32; [x1; x2]
        z = z_mean + ops.exp(0.5 * z_logvar) * noise
        logits = self.decoder([z, self._swap_halves(specified)], training=training)  # Dec(z1, s2), Dec(z2, s1)
        sse = ops.sum(ops.square(ops.sigmoid(logits) - x), axis=(1, 2, 3))  # per image
        kl = 0.5 * ops.sum(ops.square(z_mean) + ops.exp(z_logvar) - z_logvar - 1.0, axis=1)  # nats per image
        if self.reconstruction == "bernoulli":  # -log p(x | z, s) per image, summed over pixels (nats)
            error = ops.sum(ops.binary_crossentropy(x, logits, from_logits=True), axis=(1, 2, 3))
        else:
            error = sse
        # 2 * [mMSE1 + mMSE2] = 2 * (mean over the 2B images of SSE / P) * 2; 3 * sum KL / (B * P) likewise.
        reconstruction = self.reconstruction_weight * 2.0 * ops.mean(error) / self.pixels
        kl_term = self.kl_weight * 2.0 * ops.mean(kl) / self.pixels
        return reconstruction, kl_term, sse, kl

    def _reverse_inputs(self, pair):
        """Dec(z, s1) and Dec(z, s2) for one prior draw z per row: all constants for the gradient (s detached,
        decoder not updated by L_rev), so they are computed outside the tape."""
        _, _, specified = self.encoder(ops.concatenate([pair["image_a"], pair["image_b"]]), training=False)
        batch = ops.shape(pair["image_a"])[0]
        prior = common.replica_normal((batch, self.z_dim), self.seed_generator)
        generated = ops.sigmoid(self.decoder([ops.concatenate([prior, prior]), specified], training=False))
        return ops.stop_gradient(generated), prior

    def _reverse_cycle(self, generated_mean, prior):
        first, second = ops.split(generated_mean, 2)
        if self.reverse_loss == "l1":
            reverse = ops.mean(ops.abs(first - second))  # Sec. 3.2: L1 between the two unspecified means
        else:
            reverse = ops.mean(ops.square(first - second))
        recovery = ops.mean(ops.abs(generated_mean - ops.concatenate([prior, prior])))
        return reverse, recovery

    def train_step(self, batch):
        x = ops.concatenate([batch["same"]["image_a"], batch["same"]["image_b"]])
        generated, prior = self._reverse_inputs(batch["different"])
        if self.reverse_mode == "joint":
            # One pass of the encoder over the pair and the generated images, one weighted loss, one Adam.
            with tf.GradientTape() as tape:
                reconstruction, kl_term, sse, kl = self._forward_cycle(x, training=True)
                generated_mean, _, _ = self.encoder(generated, training=True)
                reverse, recovery = self._reverse_cycle(generated_mean, prior)
                forward = reconstruction + kl_term
                loss = forward + self.reverse_weight * reverse
                scaled = self.optimizer.scale_loss(loss / common.replicas())
            variables = self.trainable_variables
            self.optimizer.apply(tape.gradient(scaled, variables), variables)
        else:
            # The reference: an Adam step on L_fwd over encoder + decoder, then an encoder-only Adam step on
            # L_rev (whose weight Adam cancels), with the generated images from before the first step.
            with tf.GradientTape() as tape:
                reconstruction, kl_term, sse, kl = self._forward_cycle(x, training=True)
                forward = reconstruction + kl_term
                scaled = self.optimizer.scale_loss(forward / common.replicas())
            variables = self.trainable_variables
            self.optimizer.apply(tape.gradient(scaled, variables), variables)
            with tf.GradientTape() as tape:
                generated_mean, _, _ = self.encoder(generated, training=True)
                reverse, recovery = self._reverse_cycle(generated_mean, prior)
                scaled = self.reverse_optimizer.scale_loss(self.reverse_weight * reverse / common.replicas())
            # L_rev depends on the encoder only through the z_mean head: skip the heads it does not reach.
            pairs = [(g, v) for g, v in zip(tape.gradient(scaled, self.encoder.trainable_variables),
                                            self.encoder.trainable_variables) if g is not None]
            self.reverse_optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])
            loss = forward + self.reverse_weight * reverse
        values = {"loss": loss, "loss/forward": forward, "loss/reverse": reverse, "loss/reconstruction":
                  reconstruction, "loss/kl": kl_term, "per_image/swap_sse": ops.mean(sse),
                  "per_image/kl_nats": ops.mean(kl), "reverse/recovery_error": recovery}
        for name, value in values.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def get_config(self):
        config = super().get_config()
        config.update(image_shape=list(self.image_shape), dataset=self.dataset, z_dim=self.z_dim, s_dim=self.s_dim,
                      reconstruction_weight=self.reconstruction_weight, kl_weight=self.kl_weight,
                      reverse_weight=self.reverse_weight, reverse_mode=self.reverse_mode,
                      reference_init=self.reference_init, seed=self.seed, reconstruction=self.reconstruction,
                      reverse_loss=self.reverse_loss)
        return config


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------

def training_data(dataset, config, first_epoch=0):
    """Both cycles' batches; epoch k's pairs depend only on (seed, k), also in a resumed run."""
    same = data.same_class_pairs(dataset, "train", config.batch_size, seed=config.seed, first_epoch=first_epoch)
    different = data.different_class_pairs(dataset, "train", config.batch_size, seed=config.seed + 1,
                                           first_epoch=first_epoch)
    return tf.data.Dataset.zip({"same": same, "different": different})


def main(argv=None):
    config = common.parse_config(Config, argv, description=__doc__, resolve=resolve, script="cycle_vae")
    common.configure_cpu(one_thread_per_op=True)  # before the first op: see its docstring
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
        model = CycleVAE(
            dataset.image_shape, dataset=config.dataset, z_dim=config.z_dim, s_dim=config.s_dim,
            reconstruction_weight=config.reconstruction_weight, kl_weight=config.kl_weight,
            reverse_weight=config.reverse_weight, reverse_mode=config.reverse_mode,
            reference_init=config.reference_init, seed=config.seed, reconstruction=config.reconstruction,
            reverse_loss=config.reverse_loss)
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
            [config.lr_drop_epoch * steps], [config.learning_rate, 0.1 * config.learning_rate])

        def adam():
            return keras.optimizers.Adam(schedule, beta_1=0.9, beta_2=0.999, epsilon=config.adam_epsilon)

        model.compile(optimizer=adam(), reverse_optimizer=adam())
        model.build()

    def pipeline(first_epoch):
        train = training_data(dataset, config, first_epoch)
        # With --steps-per-epoch each pass over the data draws new pairs and fit() cuts it into short epochs.
        return train.repeat() if config.steps_per_epoch else train

    grid_images = np.stack([dataset.images[i] for i in data.grid_rows(dataset)]).astype(np.float32) / 255.0
    common.train(model, config, script="cycle_vae", pipeline=pipeline, steps=steps, argv=argv,
                 describe=f"z {config.z_dim}, s {config.s_dim}, {config.reverse_mode} reverse cycle",
                 image_grid_fn=lambda m: common.tile_images(common.swap_grid(m, grid_images)),
                 images_per_step=4 * config.batch_size)


if __name__ == "__main__":
    main()
