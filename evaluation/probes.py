"""Probe classifiers on the codes (docs/evaluation.md Sec. 1): which rows are encoded, the probe tasks on them, the
probes themselves, the raw-pixel ceiling and the per-dimension statistics of z.

Probes: an MLP (Dense 256, batch norm, LeakyReLU 0.2, twice; Adam 1e-4) and a linear softmax layer (Adam 1e-3),
batch 128, up to 100 epochs with early stopping (patience 10) on a validation part, best-on-validation weights,
tested with batch norm in inference mode. Inputs are standardised with the probe-training mean and std. Each code
is probed from its mean and from one sample (fixed eval seed); s of the cycle-VAE is deterministic, so its two
entries coincide. The raw-pixel row (PCA to 256 dimensions, fitted on the probe-training images) is the ceiling
each number is read against.

The targets and their splits come from data.py (`Dataset.label_columns`, `Dataset.split_label`):
  MNIST: digit; probe trained on 90 % of the training images, early-stopped on the other 10 %, tested on the
      10,000 test images.
  Sprites: the 7 attributes, action and direction: probe trained on 40 random frames of each of the 500 train
      identities, early-stopped on the 72 validation identities, tested on every frame of the 100 unseen test
      identities; identity (the label the splits keep apart): 2/3 of each test identity's frames (stratified,
      seeded) against the other 1/3.
  dSprites: each of the five factors, on the fixed train/test split of data.py.
Where only some z dimensions are active, the means of the active ones (`z_active`) are probed for the targets
that s should carry (`Dataset.specified_targets`): with Adam, dimensions that the decoder ignores keep means that
vary slightly with the input, and a standardised probe reads the class from those as well as from a large signal.
"""
import hashlib
import json
import time

import keras
import numpy as np

import common
import data

# ---------------------------------------------------------------------------------------------------------------
# Which rows are encoded, and the probe tasks on them
# ---------------------------------------------------------------------------------------------------------------

def evaluation_rows(dataset, config, rng):
    """Dataset rows to encode, per split ('train', 'val' where the splits keep groups apart, 'test')."""
    group = dataset.split_label()
    if group is None:
        return {"train": dataset.rows("train"), "test": dataset.rows("test")}
    # The splits hold whole groups (Sprites identities): probes train on a fixed number of rows of each train
    # group and early-stop on as many of each validation group; every test row is encoded.
    labels = dataset.labels[group]
    rows = {}
    for split in ("train", "val"):
        split_rows = dataset.rows(split)
        rows[split] = np.sort(np.concatenate([
            rng.choice(split_rows[labels[split_rows] == i], config.sprites_frames_per_identity, replace=False)
            for i in np.unique(labels[split_rows])]))
    rows["test"] = dataset.rows("test")
    return rows


def probe_tasks(dataset, rows, rng):
    """target -> (train, val, test) positions into the concatenation of rows['train'], rows['val'], rows['test']."""
    offsets, start = {}, 0
    for split in ("train", "val", "test"):
        offsets[split] = np.arange(start, start + len(rows.get(split, ())))
        start += len(rows.get(split, ()))
    tasks = {}
    for target in dataset.label_columns():
        if target == dataset.split_label():
            # No test group occurs in training, so the probe uses disjoint rows of the test groups: 2/3 train
            # (10 % of it for early stopping), 1/3 test.
            test_groups = dataset.labels[target][rows["test"]]
            train, val, test = [], [], []
            for i in np.unique(test_groups):
                frames = rng.permutation(offsets["test"][test_groups == i])
                cut = int(round(len(frames) * 2 / 3))
                n_val = max(1, cut // 10)
                val.append(frames[:n_val]), train.append(frames[n_val:cut]), test.append(frames[cut:])
            tasks[target] = tuple(np.sort(np.concatenate(part)) for part in (train, val, test))
        elif len(offsets["val"]):
            tasks[target] = (offsets["train"], offsets["val"], offsets["test"])
        else:
            shuffled = rng.permutation(offsets["train"])
            n_val = len(shuffled) // 10
            tasks[target] = (np.sort(shuffled[n_val:]), np.sort(shuffled[:n_val]), offsets["test"])
    return tasks


def chance_levels(labels, tasks):
    """Per target, the test share of the most frequent test class (the chance row of the probe table)."""
    return {t: float(np.bincount(labels[t][split[2]]).max() / len(split[2])) for t, split in tasks.items()}


# ---------------------------------------------------------------------------------------------------------------
# Codes: encoding, the sampled versions, z per dimension
# ---------------------------------------------------------------------------------------------------------------

def encode(model, dataset, rows, batch_size=512):
    """Codes of the given dataset rows as float32 NumPy arrays (inference mode)."""
    parts = []
    for start in range(0, len(rows), batch_size):
        images = dataset.images[rows[start:start + batch_size]].astype(np.float32) / 255.0
        parts.append({k: np.asarray(v, np.float32) for k, v in model.encode(images).items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


EVIDENCE_VIEWS = 8  # Views per image in the ML-VAE's label-free evidence (evidence_codes).


def shifted_views(images, views, rng, max_shift=2):
    """`views` copies of each image, (N * views, H, W, C) image-major: the image itself, then copies moved by a
    random whole-pixel shift of up to max_shift in each direction (edges repeated). No label is involved."""
    n, height, width = images.shape[:3]
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="edge")
    out = np.empty((n, views) + images.shape[1:], images.dtype)
    out[:, 0] = images
    for v in range(1, views):
        dy, dx = rng.integers(0, 2 * max_shift + 1, size=2)
        out[:, v] = padded[:, dy:dy + height, dx:dx + width]
    return out.reshape((n * views,) + images.shape[1:])


def evidence_codes(model, dataset, rows, views=EVIDENCE_VIEWS, seed=0, batch_size=64):
    """The content posterior (mean, logvar) of each row with evidence accumulated over `views` shifted views of
    the image itself, through the model's encode_groups (ML-VAE).

    docs/evaluation.md Sec. 1: the groups are formed without any label, so the probe on these codes cannot be
    helped by the answer (the public ML-VAE code grouped the test images by their true class, which leaks it).
    """
    rng = np.random.default_rng(seed)
    means, logvars = [], []
    for start in range(0, len(rows), batch_size):
        images = dataset.images[rows[start:start + batch_size]].astype(np.float32) / 255.0
        group_ids = np.repeat(np.arange(len(images)), views).astype(np.int32)
        mean, logvar = model.encode_groups(shifted_views(images, views, rng), group_ids, len(images))
        means.append(np.asarray(mean, np.float32))
        logvars.append(np.asarray(logvar, np.float32))
    return np.concatenate(means), np.concatenate(logvars)


def representations(codes, dataset, config):
    """The probed codes, z's per-dimension statistics and the restrictions of `run_probes`.

    Returns ({code: {"mean": array, "sampled": array or None}}, sampled z, dimension statistics, only): a sample
    is one draw mu + sigma * eps per image with the eval seed + 1 (None: the code is deterministic, so the sample
    is the mean). `only` restricts `z_active` (the means of z's active dimensions, where only some are active)
    to the MLP on the targets that s should carry.
    """
    noise_rng = np.random.default_rng(config.seed + 1)
    sampled_z = codes["z_mean"] + np.exp(0.5 * codes["z_logvar"]) * noise_rng.standard_normal(codes["z_mean"].shape)
    probed = {}
    if "s" in codes:
        sampled_s = None
        if "s_logvar" in codes:
            sampled_s = codes["s"] + np.exp(0.5 * codes["s_logvar"]) * noise_rng.standard_normal(codes["s"].shape)
        probed["s"] = {"mean": codes["s"], "sampled": sampled_s}
    probed["z"] = {"mean": codes["z_mean"], "sampled": sampled_z.astype(np.float32)}
    dimensions = dimension_statistics(codes["z_mean"], codes["z_logvar"], config.active_kl)
    active = np.asarray(dimensions["active"])
    only = {}
    if "s" in codes and 0 < active.sum() < len(active):
        # Where does the leakage into z live: in the dimensions that carry information, or below the noise?
        probed["z_active"] = {"mean": codes["z_mean"][:, active]}
        only["z_active"] = (dataset.specified_targets(), ("mlp",))
    return probed, sampled_z, dimensions, only


def dimension_statistics(z_mean, z_logvar, active_kl):
    """Per z dimension: mean KL to N(0, 1) in nats, variance of the mean over images, mean posterior variance.

    A dimension whose KL is near 0 transmits (almost) nothing through the sampled code, yet its mean can still
    vary a little with the input, and a standardised probe reads that variation as well as a large one. The
    probe on the active dimensions alone tells such sub-noise leakage apart from what z really carries.
    """
    kl = 0.5 * np.mean(np.square(z_mean) + np.exp(z_logvar) - z_logvar - 1.0, axis=0)
    stats = {"kl_nats": kl.tolist(), "mean_variance": z_mean.var(0).tolist(),
             "posterior_variance": np.exp(z_logvar).mean(0).tolist()}
    stats["active"] = [bool(v >= active_kl) for v in kl]
    return stats


# ---------------------------------------------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------------------------------------------

def mlp_body():
    """The probes' MLP body (docs/evaluation.md Sec. 1): Dense 256, batch norm, LeakyReLU 0.2, twice."""
    layers = []
    for _ in range(2):
        layers += [keras.layers.Dense(256), keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5),
                   keras.layers.LeakyReLU(negative_slope=0.2)]
    return layers


def build_probe(kind, n_classes):
    """The MLP probe (Adam 1e-4) or the linear one (Adam 1e-3), with its learning rate."""
    if kind == "mlp":
        return keras.Sequential(mlp_body() + [keras.layers.Dense(n_classes)]), 1e-4
    return keras.Sequential([keras.layers.Dense(n_classes)]), 1e-3


def train_probe(kind, x, y, split, config, seed):
    """Fit one probe; return train and test accuracy of the best-on-validation weights, and its epochs."""
    train, val, test = split
    mean, std = x[train].mean(0), x[train].std(0) + 1e-8
    x = (x - mean) / std
    n_classes = int(y.max()) + 1
    keras.utils.set_random_seed(seed)
    probe, learning_rate = build_probe(kind, n_classes)
    probe.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
                  steps_per_execution=16)
    stop = keras.callbacks.EarlyStopping("val_accuracy", patience=config.patience, restore_best_weights=True)
    history = probe.fit(x[train], y[train], batch_size=128, epochs=config.probe_epochs, verbose=0,
                        validation_data=(x[val], y[val]), callbacks=[stop])

    correct = np.argmax(probe.predict(x, batch_size=4096, verbose=0), 1) == y
    return {"train": float(correct[train].mean()), "test": float(correct[test].mean()),
            "epochs": len(history.history["loss"])}


def run_probes(representations, labels, tasks, config, log, only=None):
    """Every probe on every representation: flat keys <code>/<target>/<probe>/<mean|sampled> -> test accuracy.

    only maps a code to the (targets, probe kinds) it is run for; by default every target with both probes."""
    results, details = {}, {}
    for code, versions in representations.items():
        targets, kinds = (only or {}).get(code, (tasks, ("mlp", "linear")))
        for target, split in tasks.items():
            if target not in targets:
                continue
            y = labels[target]
            for kind in kinds:
                computed = {}
                for version, x in versions.items():
                    if x is None:  # deterministic code: the sample is the mean
                        computed[version] = computed["mean"]
                    else:
                        started = time.time()
                        computed[version] = train_probe(kind, x, y, split, config, config.seed)
                        log(f"probe {code}/{target}/{kind}/{version}: test {computed[version]['test']:.4f} "
                            f"(train {computed[version]['train']:.4f}, {computed[version]['epochs']} epochs, "
                            f"{time.time() - started:.0f} s)")
                    key = f"{code}/{target}/{kind}/{version}"
                    results[key], details[key] = computed[version]["test"], computed[version]
    return results, details


# ---------------------------------------------------------------------------------------------------------------
# The raw-pixel ceiling
# ---------------------------------------------------------------------------------------------------------------

def pixel_features(dataset, rows_all, train_positions, n_components=256, seed=0):
    """Raw pixels reduced by PCA fitted on the probe-training images (the ceiling row)."""
    from sklearn.decomposition import PCA

    flat = dataset.images[rows_all].reshape(len(rows_all), -1).astype(np.float32) / 255.0
    pca = PCA(min(n_components, flat.shape[1], len(train_positions)), svd_solver="randomized", random_state=seed)
    pca.fit(flat[train_positions])
    return pca.transform(flat).astype(np.float32)


def pixel_cache_path(dataset, rows, config):
    """Where the pixel-ceiling probe results for this data and these probe settings are kept between evaluations."""
    key = {"dataset": dataset.name, "shape": list(dataset.images.shape), "seed": config.seed,
           "probe_epochs": config.probe_epochs, "patience": config.patience,
           "frames_per_identity": config.sprites_frames_per_identity, "versions": common.package_versions(),
           # A fingerprint of the rows and of the data, so that other data never reuses these numbers.
           "rows": hashlib.sha1(np.ascontiguousarray(rows).tobytes()).hexdigest(),
           "images": hashlib.sha1(np.ascontiguousarray(dataset.images[::max(1, len(dataset.images) // 64)]).tobytes()
                                  ).hexdigest()}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return data.cache_root() / "eval-cache" / f"{dataset.name}-pixel-probes-{digest}.json"


def pixel_ceiling(dataset, all_rows, labels, tasks, config, log):
    """The probes on PCA-256 pixels ({"probes", "details"}), read from the cache when they were run before.

    The ceiling depends on the data and the probe settings only, not on the model."""
    cache = pixel_cache_path(dataset, all_rows, config) if config.pixel_cache else None
    if cache is not None and cache.is_file():
        try:
            cached = json.loads(cache.read_text())
            log(f"pixel ceiling row read from {cache}")
            return cached
        except (OSError, ValueError) as error:  # A damaged cache file is recomputed, not trusted.
            log(f"pixel ceiling cache {cache} unreadable ({error}); computing it again")
    features = pixel_features(dataset, all_rows, next(iter(tasks.values()))[0], seed=config.seed)
    results, details = run_probes({"pixels": {"mean": features}}, labels, tasks, config, log)
    pixels = {"probes": results, "details": details, "computed": time.strftime("%Y-%m-%d %H:%M:%S")}
    if cache is not None:
        try:
            common.write_json(cache, pixels)
        except OSError as error:  # A cache that cannot be written costs time next run, never this evaluation.
            log(f"pixel ceiling not cached ({common.describe_error(error, 'writing ' + str(cache))})")
    return pixels
