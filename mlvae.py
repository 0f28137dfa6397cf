"""Multi-Level VAE (Bouchacourt, Tomioka and Nowozin, AAAI 2018, arXiv 1705.08841): group evidence for the class
code.

Images come in groups that share their class (the digit, the sprite identity, the dSprites shape). Each image x_i
gets a style posterior q(z_i | x_i) = N(mu_z, sigma_z^2) and a content posterior N(mu_s,i, sigma_s,i^2); a group's
content posterior is the product of its members' (the evidence, Sec. 3.2):

    1 / sigma_g^2 = sum_i 1 / sigma_s,i^2        mu_g = sigma_g^2 * sum_i mu_s,i / sigma_s,i^2

computed in log space (log precision = logsumexp_i(-log sigma_s,i^2), mu_g = softmax-weighted mean of the mu_s,i)
and differentiable end to end. The ELBO of a batch of G groups, normalised per group (Eq. 5, docs/methods.md Sec. 5):

    L = (1 / G) * [ sum_i E(Dec(z_i, s_i), x_i) + sum_i KL(z_i) + sum_g KL(s_g) ]

Code names: E is `_reconstruction` (SSE per image, as the reference; Bernoulli NLL on dSprites), KL(z_i) `kl_style`,
KL(s_g) `kl_content` (once per group), `group_evidence` the product of Gaussians. z_i = mu_z + sigma_z * eps per
image; s_i = mu_g + sigma_g * eps with eps ~ N(0, std^2): one eps per member (default) or one per group
(`--content-sampling group`), std 1 (the ELBO) or the public code's 0.1 (`--content-noise-std 0.1`).

Where we deliberately differ from the public code (ananyahjha93/multi-level-vae): the class heads are trained
(there the evidence is computed on detached tensors, so they never get a gradient); the content KL is counted once
per group and the loss divided by the number of groups (as the first author's fix, DianeBouchacourt/multi-level-vae,
and the paper's Eq. 5), not once per member over batch x pixels; eps ~ N(0, 1) unless asked; groups are never formed
from test labels in the evaluation. Groups come from data.class_groups (32 groups of 8, default) or, as in the public
code, from the class labels inside a random batch (`--grouping batch`).

Usage:
  python mlvae.py --dataset mnist --quick            # a short run and a quick evaluation
  python mlvae.py --dataset mnist                    # the paper's setting: MLP, 10/10 codes, 400 epochs
  python mlvae.py --dataset mnist --architecture conv
  python eval_latents.py --ckpt runs/mlvae_mnist_.../model.keras
Results: docs/results/mlvae.md.
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

# Per-dataset defaults of the fields that are None in Config. MNIST: the public code (MLP, 10/10, Adam 1e-3,
# 400 epochs); Sprites and dSprites: cycle_vae.py's conv networks and code sizes with CPU-sized schedules.
DATASET_DEFAULTS = {
    "mnist": {"architecture": "mlp", "z_dim": 10, "s_dim": 10, "epochs": 400},
    "sprites": {"architecture": "conv", "z_dim": 512, "s_dim": 64, "epochs": 16},
    "dsprites": {"architecture": "conv", "z_dim": 10, "s_dim": 10, "epochs": 15},
}
QUICK = {"epochs": 5}  # --quick: a few CPU minutes with the MLP on MNIST.


@dataclasses.dataclass
class Config(common.RunConfig):
    dataset: Literal["mnist", "sprites", "dsprites"] = "mnist"  # MNIST digit, Sprites identity, dSprites shape.
    architecture: Optional[Literal["mlp", "conv"]] = None  # Default MNIST mlp (paper), else conv (cycle_vae.py's).
    z_dim: Optional[int] = None  # Style code size; default MNIST 10, Sprites 512, dSprites 10.
    s_dim: Optional[int] = None  # Content (class) code size; default MNIST 10, Sprites 64, dSprites 10.
    grouping: Literal["sampler", "batch"] = "sampler"  # data.class_groups, or class labels in a random batch.
    groups: int = 32  # Groups per batch (--grouping sampler).
    group_size: int = 8  # Images per group (--grouping sampler); batch 32 x 8 = 256 as the public code's.
    batch_size: int = 256  # Images per batch with --grouping batch (public code).
    content_sampling: Literal["member", "group"] = "member"  # One content eps per image or per group.
    content_noise_std: float = 1.0  # Std of the content eps: 1 (the ELBO) or the public code's 0.1.
    epochs: Optional[int] = None  # Default MNIST 400 (public code), Sprites 16, dSprites 15; --quick 5.
    steps_per_epoch: Optional[int] = None  # Default one pass over the training split.
    learning_rate: float = 1e-3  # Adam (public code; betas 0.9 / 0.999, epsilon 1e-8).
    reconstruction: Literal["auto", "mse", "bernoulli"] = "auto"  # auto: bernoulli on dSprites, else SSE.
    reference_init: bool = False  # N(0, 0.05) weights as in the public code instead of Keras' defaults.
    grid_every: int = 10  # Write a swap grid every this many epochs.
    quick: bool = False  # A short CPU run (5 epochs) and a quick evaluation: try it end to end.
    evaluate: bool = True  # Run eval_latents.py on the trained model at the end.

    # What `--resume` may change (more epochs, another learning rate); anything else would not fit the checkpoint.
    CHANGEABLE_ON_RESUME: ClassVar[tuple] = common.RunConfig.CHANGEABLE_ON_RESUME + (
        "epochs", "learning_rate", "grid_every", "evaluate")

    def __post_init__(self):
        common.check_ranges(
            self, at_least_one=("z_dim", "s_dim", "groups", "group_size", "batch_size", "epochs", "steps_per_epoch",
                                "grid_every"),
            positive=("learning_rate", "content_noise_std"))


def resolve(config):
    """Fill the None fields from --quick and the dataset; an explicit value is kept."""
    for preset in ([QUICK] if config.quick else []) + [DATASET_DEFAULTS[config.dataset]]:
        for name, value in preset.items():
            if getattr(config, name) is None:
                setattr(config, name, value)
    if config.reconstruction == "auto":
        config.reconstruction = "bernoulli" if config.dataset == "dsprites" else "mse"
    return config


# ---------------------------------------------------------------------------------------------------------------
# Networks. mlp: the public code's 784-500-tanh encoder with four linear heads and 500-tanh decoder (flattening any
# image). conv: cycle_vae.py's encoder trunk and decoder (docs/methods.md Sec. 3), repeated here so that this file
# stands alone (tests/test_mlvae.py checks that they stay the same), with a content log-variance head added.
# ---------------------------------------------------------------------------------------------------------------

def _init(reference_init):
    return keras.initializers.RandomNormal(0.0, 0.05) if reference_init else "glorot_uniform"


def instance_norm():
    return layers.GroupNormalization(groups=-1, center=False, scale=False, epsilon=1e-5)


def build_encoder(image_shape, z_dim, s_dim, dataset, architecture, reference_init=False):
    init = _init(reference_init)
    images = keras.Input(image_shape)
    x = images
    if architecture == "mlp":
        x = layers.Dense(500, activation="tanh", kernel_initializer=init)(layers.Flatten()(x))
    elif dataset == "dsprites":  # disentanglement_lib's conv encoder, 64 -> 32 -> 16 -> 8 -> 4
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
    heads = [layers.Dense(size, kernel_initializer=init, dtype="float32", name=name)(x)
             for name, size in (("z_mean", z_dim), ("z_logvar", z_dim), ("s_mean", s_dim), ("s_logvar", s_dim))]
    return keras.Model(images, heads, name="encoder")


def build_decoder(image_shape, z_dim, s_dim, dataset, architecture, reference_init=False):
    init = _init(reference_init)
    unspecified, specified = keras.Input((z_dim,)), keras.Input((s_dim,))
    if architecture == "mlp":
        x = layers.Concatenate()([unspecified, specified])
        x = layers.Dense(500, activation="tanh", kernel_initializer=init)(x)
        x = layers.Dense(int(np.prod(image_shape)), kernel_initializer=init, dtype="float32")(x)
        logits = layers.Reshape(image_shape, dtype="float32")(x)
    elif dataset == "dsprites":  # disentanglement_lib's conv decoder fed Dense(z) || Dense(s)
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

def group_evidence(mean, logvar, group_ids, num_groups):
    """The product of the Gaussians N(mean_i, exp(logvar_i)) over each group's members, in log space.

    mean, logvar: (N, d); group_ids: (N,) ints in [0, num_groups). Returns the groups' (mean, logvar), each
    (num_groups, d): log precision_g = logsumexp_i(-logvar_i), mean_g = sum_i softmax_i(-logvar_i) * mean_i. A group
    of one gives back its member's posterior. Differentiable in mean and logvar.
    """
    precision_logits = -logvar
    peak = tf.math.unsorted_segment_max(precision_logits, group_ids, num_groups)  # for a stable logsumexp
    weights = ops.exp(precision_logits - ops.take(peak, group_ids, axis=0))
    total = tf.math.unsorted_segment_sum(weights, group_ids, num_groups)
    group_logvar = -(peak + ops.log(total))
    group_mean = tf.math.unsorted_segment_sum(weights * mean, group_ids, num_groups) / total
    return group_mean, group_logvar


def gaussian_kl(mean, logvar):
    """KL(N(mean, exp(logvar)) || N(0, I)) in nats, summed over the last axis."""
    return 0.5 * ops.sum(ops.square(mean) + ops.exp(logvar) - logvar - 1.0, axis=-1)


@keras.saving.register_keras_serializable(package="disentangle")
class MLVAE(keras.Model):
    """Encoder (style z and content s posteriors), decoder (z, s) -> image, trained on the grouped ELBO.

    Batches: {"images": (G, K, H, W, C)} from data.class_groups (every group of K members), or {"image": (B, H, W, C),
    "label": (B,)} (--grouping batch: a group per class present). The interface of eval_latents.py: `encode(images)`
    -> {"s", "s_logvar", "z_mean", "z_logvar"} (the content posterior of each image alone), `decode(z, s)` ->
    images in [0, 1]; `encode_groups(images, group_ids)` gives the content evidence of images known to share it.
    """

    def __init__(self, image_shape, *, dataset, z_dim, s_dim, architecture="mlp", content_sampling="member",
                 content_noise_std=1.0, reconstruction="mse", reference_init=False, seed=0, **kwargs):
        super().__init__(**kwargs)
        for name, value, choices in (("architecture", architecture, ("mlp", "conv")),
                                     ("content_sampling", content_sampling, ("member", "group")),
                                     ("reconstruction", reconstruction, ("mse", "bernoulli"))):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        self.image_shape, self.dataset, self.z_dim, self.s_dim = tuple(image_shape), dataset, z_dim, s_dim
        self.architecture, self.content_sampling = architecture, content_sampling
        self.content_noise_std = content_noise_std
        self.reconstruction, self.reference_init, self.seed = reconstruction, reference_init, seed
        self.encoder = build_encoder(self.image_shape, z_dim, s_dim, dataset, architecture, reference_init)
        self.decoder = build_decoder(self.image_shape, z_dim, s_dim, dataset, architecture, reference_init)
        self.seed_generator = keras.random.SeedGenerator(seed)
        names = ["loss", "loss/reconstruction", "loss/kl_style", "loss/kl_content", "per_image/sse",
                 "per_image/kl_style_nats", "per_group/kl_content_nats", "content/group_size"]
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def build(self, input_shape=None):
        # Build the networks and the optimizer so that checkpoints restore all of their state.
        self.encoder.build((None,) + self.image_shape)
        self.decoder.build([(None, self.z_dim), (None, self.s_dim)])
        if getattr(self, "optimizer", None) is not None:  # not yet compiled when a checkpoint is loaded
            self.optimizer.build(self.trainable_variables)
        self.built = True

    def build_from_config(self, config):
        self.build()

    def call(self, images, training=False):
        codes = self.encode(images, training=training)
        return self.decode(codes["z_mean"], codes["s"], training=training)

    # The shared encode/decode interface of eval_latents.py.
    def encode(self, images, training=False):
        z_mean, z_logvar, s_mean, s_logvar = self.encoder(images, training=training)
        return {"s": s_mean, "s_logvar": s_logvar, "z_mean": z_mean, "z_logvar": z_logvar}

    def decode(self, z, s, training=False):
        # NumPy arrays and tensors alike, also one of each (Keras refuses a list that mixes them).
        z, s = ops.convert_to_tensor(z), ops.convert_to_tensor(s)
        return ops.sigmoid(self.decoder([z, s], training=training))

    def encode_groups(self, images, group_ids, num_groups):
        """The content evidence (mean, logvar), (num_groups, s_dim), of images whose group_ids say which share it."""
        codes = self.encode(images)
        return group_evidence(codes["s"], codes["s_logvar"], ops.convert_to_tensor(group_ids, "int32"), num_groups)

    # ---- training ----

    @staticmethod
    def _grouped(batch):
        """Flat images, each one's group id and the number of groups, from either kind of batch."""
        if "images" in batch:  # data.class_groups: (G, K, ...) with every group full
            images = batch["images"]
            groups, size = ops.shape(images)[0], ops.shape(images)[1]
            flat = ops.reshape(images, (-1,) + tuple(images.shape[2:]))
            return flat, ops.repeat(ops.arange(groups, dtype="int32"), size), groups
        ids, group_ids = tf.unique(batch["label"])  # the public code: a group per class in the batch
        return batch["image"], ops.cast(group_ids, "int32"), ops.shape(ids)[0]

    def _reconstruction(self, logits, x):
        """Per image: SSE (or the Bernoulli NLL in nats), and the SSE for the logs."""
        sse = ops.sum(ops.square(ops.sigmoid(logits) - x), axis=(1, 2, 3))
        if self.reconstruction == "bernoulli":
            return ops.sum(ops.binary_crossentropy(x, logits, from_logits=True), axis=(1, 2, 3)), sse
        return sse, sse

    def losses_of(self, images, group_ids, num_groups, training=True):
        """The grouped ELBO's terms, each a sum divided by the number of groups (Eq. 5), and the logged values."""
        z_mean, z_logvar, s_mean, s_logvar = self.encoder(images, training=training)
        group_mean, group_logvar = group_evidence(s_mean, s_logvar, group_ids, num_groups)
        z = z_mean + ops.exp(0.5 * z_logvar) * common.replica_normal(ops.shape(z_mean), self.seed_generator)
        if self.content_sampling == "group":  # one draw per group, shared by its members
            noise = ops.take(common.replica_normal(ops.shape(group_mean), self.seed_generator), group_ids, axis=0)
        else:
            noise = common.replica_normal(ops.shape(s_mean), self.seed_generator)
        s = ops.take(group_mean, group_ids, axis=0) + ops.take(ops.exp(0.5 * group_logvar), group_ids, axis=0) * (
            self.content_noise_std * noise)
        error, sse = self._reconstruction(self.decoder([z, s], training=training), images)
        kl_style, kl_content = gaussian_kl(z_mean, z_logvar), gaussian_kl(group_mean, group_logvar)
        groups = ops.cast(num_groups, "float32")
        terms = {"loss/reconstruction": ops.sum(error) / groups, "loss/kl_style": ops.sum(kl_style) / groups,
                 "loss/kl_content": ops.sum(kl_content) / groups}
        logged = {"per_image/sse": ops.mean(sse), "per_image/kl_style_nats": ops.mean(kl_style),
                  "per_group/kl_content_nats": ops.mean(kl_content),
                  "content/group_size": ops.cast(ops.shape(images)[0], "float32") / groups}
        return terms, logged

    def train_step(self, batch):
        images, group_ids, num_groups = self._grouped(batch)
        with tf.GradientTape() as tape:
            terms, logged = self.losses_of(images, group_ids, num_groups)
            loss = terms["loss/reconstruction"] + terms["loss/kl_style"] + terms["loss/kl_content"]
            scaled = self.optimizer.scale_loss(loss / common.replicas())
        self.optimizer.apply(tape.gradient(scaled, self.trainable_variables), self.trainable_variables)
        for name, value in {"loss": loss, **terms, **logged}.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def get_config(self):
        config = super().get_config()
        config.update(image_shape=list(self.image_shape), dataset=self.dataset, z_dim=self.z_dim, s_dim=self.s_dim,
                      architecture=self.architecture, content_sampling=self.content_sampling,
                      content_noise_std=self.content_noise_std, reconstruction=self.reconstruction,
                      reference_init=self.reference_init, seed=self.seed)
        return config


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------

def training_data(dataset, config, first_epoch=0):
    """Grouped batches; epoch k's groups depend only on (seed, k), also in a resumed run."""
    if config.grouping == "batch":
        return data.images(dataset, "train", config.batch_size, shuffle=True, seed=config.seed, drop_remainder=True,
                           first_epoch=first_epoch)
    return data.class_groups(dataset, "train", groups=config.groups, group_size=config.group_size, seed=config.seed,
                             first_epoch=first_epoch)


def main(argv=None):
    config = common.parse_config(Config, argv, description=__doc__, resolve=resolve, script="mlvae")
    common.configure_cpu(one_thread_per_op=False)  # one chain of ops per step: TensorFlow's default threads
    common.set_precision(config.precision)
    common.set_seed(config.seed)
    # Before TensorFlow's first op, which --distribute multiworker must precede (it configures the runtime).
    strategy = common.distribution(config, config.batch_size if config.grouping == "batch" else config.groups)
    if config.grouping == "batch" and strategy.num_replicas_in_sync > 1:
        sys.exit("error: --grouping batch forms its groups from the labels of the whole batch, which --distribute "
                 "would split over the replicas; use --grouping sampler (the default), whose groups stay whole.")
    try:
        dataset = data.load_dataset(config.dataset, config.data_dir)
        first = training_data(dataset, config)  # fails here, not in fit(), when the split cannot fill a batch of groups
    except data.DataError as error:
        sys.exit(f"error: {error}")
    except ValueError as error:
        sys.exit(f"error: {error}; lower --groups or --group-size.")
    images_per_step = config.batch_size if config.grouping == "batch" else config.groups * config.group_size
    # An epoch is the batches the sampler gives: each class's remainder after its last whole group is left out.
    steps = config.steps_per_epoch or int(first.cardinality())
    with strategy.scope():  # the model and its optimizer are built where --distribute trains them
        model = MLVAE(dataset.image_shape, dataset=config.dataset, z_dim=config.z_dim, s_dim=config.s_dim,
                      architecture=config.architecture, content_sampling=config.content_sampling,
                      content_noise_std=config.content_noise_std, reconstruction=config.reconstruction,
                      reference_init=config.reference_init, seed=config.seed)
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-8))
        model.build()

    def pipeline(first_epoch):
        train = training_data(dataset, config, first_epoch)
        return train.repeat() if config.steps_per_epoch else train

    grid_images = np.stack([dataset.images[i] for i in data.grid_rows(dataset)]).astype(np.float32) / 255.0
    grouping = (f"{config.groups} groups of {config.group_size}" if config.grouping == "sampler" else
                f"class groups in batches of {config.batch_size}")
    common.train(model, config, script="mlvae", pipeline=pipeline, steps=steps, argv=argv,
                 describe=f"{config.architecture}, z {config.z_dim}, s {config.s_dim}, {grouping}, content eps per "
                          f"{config.content_sampling} ~ N(0, {config.content_noise_std:g}^2)",
                 image_grid_fn=lambda m: common.tile_images(common.swap_grid(m, grid_images)),
                 images_per_step=images_per_step)


if __name__ == "__main__":
    main()
