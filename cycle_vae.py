"""Cycle-Consistent VAE (Jha, Anand, Singh and Veeravasarapu, ECCV 2018, arXiv 1804.10469).

The encoder splits an image x into a specified code s(x) (deterministic; what a pair shares: the digit, the
sprite identity, the dSprites shape) and an unspecified code z ~ N(mu(x), sigma^2(x)) (everything else). Two
cycles train it, both in every step:

  Forward cycle (Sec. 3.1), on a same-class pair (x1, x2): swap the specified codes and reconstruct,
      L_fwd = 2 * [mMSE(Dec(z1, s2), x1) + mMSE(Dec(z2, s1), x2)] + 3 * [KL(x1) + KL(x2)] / (B * P)
  with mMSE = sum of squared pixel errors / P averaged over the batch, KL in nats summed over z and the batch,
  P pixels per image, B the batch size. Per image this is SSE_swap + 1.5 * KL: a Gaussian decoder with
  variance 0.75 and beta = 1. There is no unswapped reconstruction term: the swap alone forces s to carry
  the shared factor and z the rest.
  On dSprites (binary images, 2 % white; not a dataset of the paper) mMSE is replaced by the Bernoulli NLL
  (binary cross-entropy on the decoder's logits, summed over pixels / P), with the same weights
  (--reconstruction; default "auto": bernoulli on dSprites, mse elsewhere). Under mMSE the decoder settles on
  the all-black image within two epochs (measured: mean output 8e-6, z at 0.003 nats), where the sigmoid's
  gradient has vanished; the cross-entropy's gradient on a logit, p - x, does not vanish there.

  Reverse cycle (Sec. 3.2), on a pair (x1, x2) of DIFFERENT classes: draw one z ~ N(0, I) per row, decode it
  with each specified code, encode both images again and ask for the same unspecified mean,
      L_rev = 10 * mean_(b, j) |mu(Dec(z, s(x1)))_j - mu(Dec(z, s(x2)))_j|
  which stops s from leaking into z: if z carried class information, the two decodings would re-encode to
  different z. s is detached and the decoder is not updated by this term, so its gradient reaches only the
  encoder, through the second encoding.

How the two cycles are combined (--reverse-mode):
  separate (default): the reference code's scheme: a second Adam over the encoder takes one step on L_rev after
      every forward step. Adam is invariant to the scale of its loss, so the coefficient 10 does nothing there;
      what acts is one extra, unit-size encoder step per iteration.
  joint: one loss L_fwd + lambda_rev * L_rev and one Adam; L_rev's gradient reaches the encoder only. Here
      lambda_rev (--reverse-weight, default 0.1 in this mode) is a real knob, and its scale matters: at the
      reference's 10 the reverse cycle wins outright and z collapses to the prior (0.07 nats per image after
      5 epochs on MNIST: no style left to transfer).
  Measured on MNIST after 5 epochs (MLP probe test accuracy, chance 11.4 %; README):
      mode                 KL nats  s     z mean  z sampled
      separate             1.89     97.5  78.1    16.6
      joint, lambda 0.03   2.59     97.4  82.0    21.6
      joint, lambda 0.1    2.18     97.1  80.3    20.4
      joint, lambda 0.3    1.84     96.5  85.4    17.8
  The default is the separate step because it gave the best s and the least leakage into z on both z columns,
  it is what produced the published numbers, and it needs no weight tuned per dataset (the joint weight trades the reverse cycle
  against a reconstruction term whose size depends on the image size and the z size). Its cost is small: the
  encoder-only step skips the heads that L_rev does not reach.
  Two further knobs, also measured there and left at the paper's / reference's values because neither lowered
  the leakage: --reverse-loss l2 (a squared distance, whose pull fades as the two means agree, where L1's does
  not) and --adam-epsilon (1e-6 instead of 1e-8, so that weights whose gradients are near or below 1e-6, as on
  the heads of z dimensions that carry nothing, take smaller than unit-size steps). All four combinations gave
  z mean 78-80 % and z sampled 17-19 % (README).

Where we deliberately differ from the reference code (ananyahjha93/cycle-consistent-vae):
  - reverse-cycle pairs always differ in class (the reference draws two independent batches, ~10 % same
    class on MNIST); on Sprites they are also never the weapon twin 2k / 2k+1;
  - same-class partners are never the image itself and are drawn afresh every epoch (the reference's
    `itertools.cycle` replays the first epoch's pairs forever);
  - Keras' default initialisation (--reference-init gives the reference's N(0, 0.05)), Adam epsilon 1e-8 as
    in PyTorch, instance normalisation identical in training and inference.

Usage:
  python cycle_vae.py --dataset mnist                  # paper settings: 100 epochs, lr 1e-4 (x0.1 at epoch 80)
  python cycle_vae.py --dataset sprites --quick        # a few minutes on a CPU
  python cycle_vae.py --dataset mnist --resume         # continue the latest interrupted mnist run
  python cycle_vae.py --dataset mnist --benchmark      # time training iterations
  python eval_latents.py --ckpt runs/cycle_vae_mnist_.../model.keras
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
    dataset: Literal["mnist", "sprites", "dsprites"] = "mnist"  # MNIST digit, Sprites identity, dSprites shape.
    z_dim: int = 0  # Unspecified code size; 0 = paper default (MNIST 16, Sprites 512, dSprites 10).
    s_dim: int = 0  # Specified code size; 0 = paper default (MNIST 16, Sprites 64, dSprites 10).
    batch_size: int = 64  # Reference code.
    epochs: int = 0  # 0 = per dataset: MNIST 100 (paper; ~53 min on 2 CPU cores); Sprites 16 (~58 min at the measured 213-221 s per epoch), dSprites 15 (~50 min at ~200 s per epoch).
    steps_per_epoch: int = 0  # 0 = one pass over the training split.
    learning_rate: float = 0.0  # Adam; 0 = per dataset: 1e-4 (reference code) on MNIST and Sprites, 5e-4 on dSprites.
    lr_drop_epoch: int = 0  # Multiply the learning rate by 0.1 from this epoch on; 0 = at 80 % of the epochs (ref.: 80 of 100).
    reconstruction_weight: float = 2.0  # Weight of each swapped mMSE in L_fwd (reference code).
    kl_weight: float = 3.0  # Weight of the summed KL / (B * P) in L_fwd (reference code).
    reverse_weight: float = 0.0  # lambda_rev on L_rev; 0 = per mode: separate 10 (reference; Adam makes it inert), joint 0.1.
    reverse_mode: Literal["separate", "joint"] = "separate"  # The reference's second, encoder-only Adam, or one weighted loss.
    reconstruction: Literal["auto", "mse", "bernoulli"] = "auto"  # Swap error: auto = bernoulli on dSprites, else mse (paper).
    reference_init: bool = False  # N(0, 0.05) weights as in the reference instead of Keras' defaults.
    reverse_loss: Literal["l1", "l2"] = "l1"  # Distance in L_rev: l1 (paper, Sec. 3.2) or mean squared difference.
    adam_epsilon: float = 1e-8  # Epsilon of both Adams (1e-8: PyTorch's default, as in the reference).
    grid_every: int = 5  # Write a swap grid every this many epochs.
    quick: bool = False  # A few-minute CPU run (2 short epochs) to try the pipeline end to end.
    evaluate: bool = True  # Run eval_latents.py on the trained model at the end.

    def __post_init__(self):
        common.check_ranges(self, positive=("adam_epsilon",), non_negative=(
            "learning_rate", "reconstruction_weight", "kl_weight", "reverse_weight"))


DEFAULTS = {  # dataset -> (z_dim, s_dim, epochs)
    "mnist": (16, 16, 100), "sprites": (512, 64, 16), "dsprites": (10, 10, 15)}
# Adam's learning rate: the reference code's on the paper's datasets; on dSprites (not in the paper) the 5e-4 of
# Burgess et al. 2018 (also beta_vae.py's), since a CPU run of 15 epochs has only ~14k steps (disentanglement_lib
# trains 300k at 1e-4).
LEARNING_RATE = {"mnist": 1e-4, "sprites": 1e-4, "dsprites": 5e-4}
REVERSE_WEIGHT = {"separate": 10.0, "joint": 0.1}  # see "How the two cycles are combined" above


# ---------------------------------------------------------------------------------------------------------------
# Networks (models.md Sec. 5): PyTorch Conv2d(k5, s2, p1) is ZeroPadding2D(1) + a "valid" Conv2D, and
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

    def __init__(self, image_shape, dataset, z_dim, s_dim, reconstruction_weight=2.0, kl_weight=3.0,
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
        return ops.sigmoid(self.decoder([z, s], training=training))

    @staticmethod
    def _swap_halves(x):
        first, second = ops.split(x, 2)
        return ops.concatenate([second, first])

    def _forward_cycle(self, x, training):
        """L_fwd on the stacked pair x = [x1; x2] (Sec. 3.1, Eq. 3 of the paper; reference weights)."""
        z_mean, z_logvar, specified = self.encoder(x, training=training)
        noise = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)  # float32
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
        prior = keras.random.normal((batch, self.z_dim), seed=self.seed_generator)
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
                scaled = self.optimizer.scale_loss(loss)
            variables = self.trainable_variables
            self.optimizer.apply(tape.gradient(scaled, variables), variables)
        else:
            # The reference: an Adam step on L_fwd over encoder + decoder, then an encoder-only Adam step on
            # L_rev (whose weight Adam cancels), with the generated images from before the first step.
            with tf.GradientTape() as tape:
                reconstruction, kl_term, sse, kl = self._forward_cycle(x, training=True)
                forward = reconstruction + kl_term
                scaled = self.optimizer.scale_loss(forward)
            variables = self.trainable_variables
            self.optimizer.apply(tape.gradient(scaled, variables), variables)
            with tf.GradientTape() as tape:
                generated_mean, _, _ = self.encoder(generated, training=True)
                reverse, recovery = self._reverse_cycle(generated_mean, prior)
                scaled = self.reverse_optimizer.scale_loss(self.reverse_weight * reverse)
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


def resolve(config):
    z_dim, s_dim, epochs = DEFAULTS[config.dataset]
    config.z_dim = config.z_dim or z_dim
    config.s_dim = config.s_dim or s_dim
    if config.quick:
        config.epochs = config.epochs or 2
        config.steps_per_epoch = config.steps_per_epoch or 150
    config.epochs = config.epochs or epochs
    config.learning_rate = config.learning_rate or LEARNING_RATE[config.dataset]
    config.lr_drop_epoch = config.lr_drop_epoch or max(1, int(round(0.8 * config.epochs)))
    config.reverse_weight = config.reverse_weight or REVERSE_WEIGHT[config.reverse_mode]
    if config.reconstruction == "auto":
        config.reconstruction = "bernoulli" if config.dataset == "dsprites" else "mse"
    return config


def main(argv=None):
    config = resolve(common.parse_config(Config, argv, description=__doc__))
    common.configure_cpu(one_thread_per_op=True)  # before the first op: see its docstring
    precision = common.set_precision(config.precision)
    common.set_seed(config.seed)
    try:
        dataset = data.load_dataset(config.dataset, config.data_dir or None)
    except data.DataError as error:
        sys.exit(f"error: {error}")
    steps = config.steps_per_epoch or len(dataset.rows("train")) // config.batch_size
    model = CycleVAE(dataset.image_shape, config.dataset, config.z_dim, config.s_dim, config.reconstruction_weight,
                     config.kl_weight, config.reverse_weight, config.reverse_mode, config.reference_init, config.seed,
                     config.reconstruction, config.reverse_loss)
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [config.lr_drop_epoch * steps], [config.learning_rate, 0.1 * config.learning_rate])

    def adam():
        return keras.optimizers.Adam(schedule, beta_1=0.9, beta_2=0.999, epsilon=config.adam_epsilon)

    model.compile(optimizer=adam(), reverse_optimizer=adam())
    model.build()

    def pipeline(first_epoch=0):
        train = training_data(dataset, config, first_epoch)
        # With --steps-per-epoch each pass over the data draws new pairs and fit() cuts it into short epochs.
        return train.repeat() if config.steps_per_epoch else train

    if config.benchmark:
        print(f"cycle_vae on {config.dataset}: batch {config.batch_size}, z {config.z_dim}, s {config.s_dim}, "
              f"{config.reverse_mode} reverse cycle, precision {precision}")
        common.benchmark_training(model, pipeline(), images_per_step=4 * config.batch_size)
        return
    run_dir = common.prepare_run_dir(config, script="cycle_vae", name=config.dataset, argv=argv)
    train = pipeline(common.completed_epochs(run_dir))  # 0 for a new run: it has no backup yet
    test_images = np.stack([dataset.images[i] for i in _grid_rows(dataset)]).astype(np.float32) / 255.0
    callbacks = common.training_callbacks(run_dir, image_grid_fn=lambda m: common.tile_images(common.swap_grid(m, test_images)),
                                          grid_every=config.grid_every)
    print(f"training cycle_vae on {config.dataset} in {run_dir} ({config.epochs} epochs x {steps} steps, "
          f"precision {precision})", flush=True)
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


def _grid_rows(dataset, n=8):
    """n test images of n different classes where possible, the same ones in every grid of the run.

    Each class contributes an image from a different place in its list (on Sprites: a different animation and
    direction), so that the grid also shows whether z keeps the pose."""
    rows = dataset.rows("test")
    classes = np.asarray(dataset.labels[dataset.class_label])[rows]
    members = [np.flatnonzero(classes == c) for c in np.unique(classes)[:n]]
    picked = [rows[m[(k * len(m)) // n]] for k, m in enumerate(members)]
    extra = [r for r in rows[:: max(1, len(rows) // n)] if r not in picked]
    return (picked + extra)[:n]


if __name__ == "__main__":
    main()
