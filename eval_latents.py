"""Evaluate a trained model's codes: probes, swap and interpolation grids, t-SNE, loss curves, codes.npz.

    python eval_latents.py --ckpt runs/cycle_vae_mnist_.../model.keras [--data-dir DIR] [--quick]
    python eval_latents.py --codes FILE.npz [--out FILE.json] [--fast] [--seed N]   (metric suite on given codes)

Writes into <run folder>/eval/ (or --out): report.md (numbers and figures), metrics.json (config, seed,
versions, timings, results), codes.npz (the evaluated codes and labels, keys <name>_<split>) and PNG figures.

On data with ground-truth factors (dSprites) it also runs the disentanglement_lib suite on the mean code
(disentanglement_metrics.py; `--quick` uses its fast preset) and, for the specified/unspecified models,
evaluation.md Sec. 5: the suite per block (s against the specified factor, z against the others), block-DCI,
leakage against chance with the level the block's own true factors reach, and the ground-truth swap error
(Dec(z_b, s_a) against the real image with a's shape and b's other factors, with the reconstruction floor).
Every specified/unspecified model gets the predictor networks s -> z and z -> s (evaluation.md Sec. 3).

The interface a model script provides (every model in this repository does):
    model.encode(images) -> {"z_mean", "z_logvar"[, "s"[, "s_logvar"]]}, float32 arrays, images in [0, 1]
    model.decode(z[, s]) -> images in [0, 1]
A model without "s" (beta-VAE) is evaluated on z alone.

Probes (../shared/docs/evaluation.md Sec. 1): an MLP (Dense 256, batch norm, LeakyReLU 0.2, twice; Adam 1e-4) and
a linear softmax layer (Adam 1e-3), batch 128, up to 100 epochs with early stopping (patience 10) on a validation
part, best-on-validation weights, tested with batch norm in inference mode. Inputs are standardised with the
probe-training mean and std. Each code is probed from its mean and from one sample (fixed eval seed); s of the
cycle-VAE is deterministic, so its two entries coincide. The raw-pixel row (PCA to 256 dimensions, fitted on
the probe-training images) is the ceiling each number is read against.
  MNIST: digit; probe trained on 90 % of the training images, early-stopped on the other 10 %, tested on the
      10,000 test images.
  Sprites: the 7 attributes, action and direction: probe trained on 40 random frames of each of the 500 train
      identities, early-stopped on the 72 validation identities, tested on every frame of the 100 unseen test
      identities; identity: 2/3 of each test identity's frames (stratified, seeded) against the other 1/3.
  dSprites: each of the five factors, on the fixed train/test split of data.py.
The report also lists z per dimension (mean KL, variance of the mean, posterior variance) and, where only some
dimensions are active, probes the means of the active ones (`z_active`) for the targets that s should carry:
with Adam, dimensions that the decoder ignores keep means that vary slightly with the input, and a
standardised probe reads the class from those as well as from a large signal.
"""
import dataclasses
import json
import pathlib
import sys
import time

import keras
import numpy as np

import common
import data


@dataclasses.dataclass
class EvalConfig:
    ckpt: str = ""  # A model.keras file or its run folder (required).
    data_dir: str = ""  # Data directory; default the one the model was trained with, else data.py's default.
    out: str = ""  # Output folder; default <run folder>/eval.
    seed: int = 0  # Evaluation seed (sampled codes, probe splits, subsets).
    quick: bool = False  # Few probe epochs and t-SNE points: a smoke test, not numbers to report.
    probe_epochs: int = 100  # Maximum probe epochs (evaluation.md).
    patience: int = 10  # Early-stopping patience in epochs (evaluation.md).
    tsne_points: int = 10000  # Test points in each t-SNE plot.
    sprites_frames_per_identity: int = 40  # Probe-training frames drawn per train identity on Sprites.
    active_kl: float = 0.1  # A z dimension is active when its mean KL (nats per image) reaches this.
    pixel_cache: bool = True  # Reuse the raw-pixel ceiling row computed with the same data and probe settings.
    codes: str = ""  # Instead of --ckpt: .npz of codes (N, D) and factors (N, K); runs the metric suite (--out: JSON).
    fast: bool = False  # With --codes: the fast in-training metric preset (never mix it with full-size numbers).
    swap_pairs: int = 5000  # Test pairs drawn for the ground-truth swap error (data with factors).
    predictors: bool = True  # Train the predictor networks s -> z and z -> s (specified/unspecified models).


# ---------------------------------------------------------------------------------------------------------------
# Which rows are encoded, and the probe tasks on them
# ---------------------------------------------------------------------------------------------------------------

def evaluation_rows(dataset, config, rng):
    """Dataset rows to encode, per split ('train', 'val' where there is one, 'test')."""
    if dataset.name == "sprites":
        identity = dataset.labels["identity"]
        rows = {}
        for split in ("train", "val"):
            split_rows = dataset.rows(split)
            rows[split] = np.sort(np.concatenate([
                rng.choice(split_rows[identity[split_rows] == i], config.sprites_frames_per_identity, replace=False)
                for i in np.unique(identity[split_rows])]))
        rows["test"] = dataset.rows("test")
        return rows
    return {"train": dataset.rows("train"), "test": dataset.rows("test")}


# The targets that only the specified code s should carry (the probe on z's active dimensions is run for these).
SPECIFIED_TARGETS = {"mnist": ["digit"], "sprites": list(data.ATTRIBUTES) + ["identity"], "dsprites": ["shape"]}


def label_columns(dataset):
    """Targets as name -> per-row integer labels over the whole dataset."""
    if dataset.name == "mnist":
        return {"digit": dataset.labels["digit"]}
    if dataset.name == "sprites":
        columns = {name: dataset.labels["attributes"][:, k] for k, name in enumerate(data.ATTRIBUTES)}
        columns.update(action=dataset.labels["action"], direction=dataset.labels["direction"],
                       identity=dataset.labels["identity"])
        return columns
    return {name: dataset.labels["factors"][:, k] for k, name in enumerate(dataset.factor_names)}


def probe_tasks(dataset, rows, rng):
    """target -> (train, val, test) positions into the concatenation of rows['train'], rows['val'], rows['test']."""
    offsets, start = {}, 0
    for split in ("train", "val", "test"):
        offsets[split] = np.arange(start, start + len(rows.get(split, ())))
        start += len(rows.get(split, ()))
    tasks = {}
    for target in label_columns(dataset):
        if target == "identity":
            # Disjoint frames of the test identities: 2/3 train (10 % of it for early stopping), 1/3 test.
            test_ids = dataset.labels["identity"][rows["test"]]
            train, val, test = [], [], []
            for i in np.unique(test_ids):
                frames = rng.permutation(offsets["test"][test_ids == i])
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


# ---------------------------------------------------------------------------------------------------------------
# Encoding and probes
# ---------------------------------------------------------------------------------------------------------------

def encode(model, dataset, rows, batch_size=512):
    """Codes of the given dataset rows as float32 NumPy arrays (inference mode)."""
    parts = []
    for start in range(0, len(rows), batch_size):
        images = dataset.images[rows[start:start + batch_size]].astype(np.float32) / 255.0
        parts.append({k: np.asarray(v, np.float32) for k, v in model.encode(images).items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def mlp_body():
    """The probes' MLP body (evaluation.md Sec. 1): Dense 256, batch norm, LeakyReLU 0.2, twice."""
    layers = []
    for _ in range(2):
        layers += [keras.layers.Dense(256), keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5),
                   keras.layers.LeakyReLU(negative_slope=0.2)]
    return layers


def build_probe(kind, n_classes):
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


def pixel_features(dataset, rows_all, train_positions, n_components=256, seed=0):
    """Raw pixels reduced by PCA fitted on the probe-training images (the ceiling row)."""
    from sklearn.decomposition import PCA

    flat = dataset.images[rows_all].reshape(len(rows_all), -1).astype(np.float32) / 255.0
    pca = PCA(min(n_components, flat.shape[1], len(train_positions)), svd_solver="randomized", random_state=seed)
    pca.fit(flat[train_positions])
    return pca.transform(flat).astype(np.float32)


def pixel_cache_path(dataset, rows, config):
    """Where the pixel-ceiling probe results for this data and these probe settings are kept between evaluations."""
    import hashlib

    key = {"dataset": dataset.name, "shape": list(dataset.images.shape), "seed": config.seed,
           "probe_epochs": config.probe_epochs, "patience": config.patience,
           "frames_per_identity": config.sprites_frames_per_identity, "versions": common.package_versions(),
           # A fingerprint of the rows and of the data, so that other data never reuses these numbers.
           "rows": hashlib.sha1(np.ascontiguousarray(rows).tobytes()).hexdigest(),
           "images": hashlib.sha1(np.ascontiguousarray(dataset.images[::max(1, len(dataset.images) // 64)]).tobytes()
                                  ).hexdigest()}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return data.default_data_dir() / "eval-cache" / f"{dataset.name}-pixel-probes-{digest}.json"


def pixel_ceiling(dataset, all_rows, labels, tasks, config, log):
    """The probes on PCA-256 pixels ({"probes", "details"}), read from the cache when they were run before."""
    cache = pixel_cache_path(dataset, all_rows, config) if config.pixel_cache else None
    if cache is not None and cache.is_file():
        log(f"pixel ceiling row read from {cache}")
        return json.loads(cache.read_text())
    features = pixel_features(dataset, all_rows, next(iter(tasks.values()))[0], seed=config.seed)
    results, details = run_probes({"pixels": {"mean": features}}, labels, tasks, config, log)
    pixels = {"probes": results, "details": details, "computed": time.strftime("%Y-%m-%d %H:%M:%S")}
    if cache is not None:
        common.write_json(cache, pixels)
    return pixels


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


def dimension_table(stats, limit=32):
    order = np.argsort(stats["kl_nats"])[::-1]
    lines = ["| dim | KL (nats) | var of mean | mean posterior variance | active |", "|---|---|---|---|---|"]
    for j in order[:limit]:
        lines.append(f"| {j} | {stats['kl_nats'][j]:.3f} | {stats['mean_variance'][j]:.2e} | "
                     f"{stats['posterior_variance'][j]:.3f} | {'yes' if stats['active'][j] else ''} |")
    if len(order) > limit:
        lines.append(f"| ... {len(order) - limit} more, all with KL <= {stats['kl_nats'][order[limit - 1]]:.3f} | | | | |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------------

def interpolation_grid(model, image_a, image_b, steps=10):
    """steps x steps cells: s moves from s_a to s_b down the rows, z from z_a to z_b across the columns."""
    codes = model.encode(np.stack([image_a, image_b]))
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    z = (1 - t) * codes["z_mean"][0] + t * codes["z_mean"][1]
    s = (1 - t) * codes["s"][0] + t * codes["s"][1]
    cells = model.decode(np.tile(z, (steps, 1)), np.repeat(s, steps, axis=0))
    return np.asarray(cells).reshape((steps, steps) + image_a.shape)


def decode_means(model, codes):
    """Decode mean codes through the shared interface: decode(z, s) for s/z models, decode(z) otherwise."""
    if "s" in codes:
        return np.asarray(model.decode(codes["z_mean"], codes["s"]))
    return np.asarray(model.decode(codes["z_mean"]))


def reconstruction_grid(model, images, columns=8):
    """Rows of originals, each followed by the row of their reconstructions from the mean codes."""
    codes = {k: np.asarray(v) for k, v in model.encode(images).items()}
    rebuilt = decode_means(model, codes)
    rows = len(images) // columns
    pairs = np.stack([images[:rows * columns], rebuilt[:rows * columns]]).reshape((2, rows, columns) + images.shape[1:])
    return pairs.transpose((1, 0) + tuple(range(2, pairs.ndim))).reshape((2 * rows, columns) + images.shape[1:])


def write_traversals(model, images, kl_order, out, max_latents=10):
    """Latent traversals (evaluation.md Sec. 2): each latent swept over [-2.5, 2.5] in 10 steps around the mean
    code of each seed image, latents sorted by mean KL (largest first).

    Writes traversal_<k>.png per seed image (rows: latents, columns: values), traversal.gif (each frame one
    value, rows: latents, columns: seed images) and traversal_dims/dim_<j>.gif per latent (the seed images side
    by side as latent j sweeps). Returns the report's figure entries."""
    codes = {k: np.asarray(v) for k, v in model.encode(images).items()}
    order = np.asarray(kl_order)[:max_latents]
    grids = [common.traversal_grid(model, codes["z_mean"][k], order, s=codes["s"][k] if "s" in codes else None)
             for k in range(len(images))]
    figures = []
    for k, grid in enumerate(grids):
        common.save_image_grid(grid, out / f"traversal_{k}.png")
        figures.append((f"Latent traversal around test image {k} (rows: z dimensions by KL, "
                        f"{', '.join(map(str, order))}; columns: -2.5 to 2.5)", f"traversal_{k}.png"))
    cells = np.stack(grids, axis=1)  # (latents, seeds, values, H, W, C)
    steps = list(range(cells.shape[2])) + list(range(cells.shape[2] - 2, 0, -1))  # there and back
    frames = [common.tile_images(cells[:, :, v]) for v in steps]
    _write_gif(frames, out / "traversal.gif")
    figures.append(("Traversal animation (rows: z dimensions by KL; columns: test images)", "traversal.gif"))
    for row, dim in enumerate(order):
        _write_gif([common.tile_images(cells[row:row + 1, :, v]) for v in steps],
                   out / "traversal_dims" / f"dim_{dim:02d}.gif")
    return figures


def decode_batched(model, z, s=None, batch_size=512):
    """decode(z[, s]) in batches, as a float32 NumPy array."""
    parts = []
    for start in range(0, len(z), batch_size):
        part = slice(start, start + batch_size)
        parts.append(np.asarray(model.decode(z[part]) if s is None else model.decode(z[part], s[part]), np.float32))
    return np.concatenate(parts)


def image_errors(predicted, target):
    """Per-image BCE (nats, summed over pixels), MSE (mean over pixels) and IoU of the 0.5-thresholded images."""
    predicted = np.clip(predicted.reshape(len(predicted), -1).astype(np.float64), 1e-7, 1 - 1e-7)
    target = target.reshape(len(target), -1).astype(np.float64)
    bce = -np.sum(target * np.log(predicted) + (1 - target) * np.log1p(-predicted), axis=1)
    mse = np.mean(np.square(predicted - target), axis=1)
    on_predicted, on_target = predicted > 0.5, target > 0.5
    union = np.sum(on_predicted | on_target, axis=1)
    iou = np.where(union > 0, np.sum(on_predicted & on_target, axis=1) / np.maximum(union, 1), 1.0)
    return {"bce": bce, "mse": mse, "iou": iou}


def ground_truth_swap_error(model, dataset, s_all, z_all, specified, test_rows, rng, pairs=5000):
    """Ground-truth swap error (evaluation.md Sec. 5.4) on a dataset with factors (dSprites).

    Test pairs (a, b) whose specified factors differ are drawn uniformly; the swap x^ = Dec(z_b, s_a) is compared
    with the real image x* that has a's specified factors and b's other factors, where that image exists in the
    data (`coverage` is the share of pairs for which it does; a subset of the factor product lacks the rest).
    The floor is the same errors for the plain reconstruction of x* from its own mean codes. `s_all`, `z_all`
    are the codes of every dataset row. Returns the summary and the arrays for the figure.
    """
    index = dataset.factor_index("all")
    factors = dataset.labels["factors"]
    a = rng.choice(test_rows, 4 * pairs)
    b = rng.choice(test_rows, 4 * pairs)
    differ = np.any(factors[a][:, specified] != factors[b][:, specified], axis=1)
    a, b = a[differ][:pairs], b[differ][:pairs]
    wanted = factors[b].copy()
    wanted[:, specified] = factors[a][:, specified]
    position = index.lookup(wanted)
    found = position >= 0
    a, b, target = a[found], b[found], index.dataset_rows[position[found]]
    swapped = decode_batched(model, z_all[b], s_all[a])
    rebuilt = decode_batched(model, z_all[target], s_all[target])
    truth = dataset.images[target].astype(np.float32) / 255.0
    swap, floor = image_errors(swapped, truth), image_errors(rebuilt, truth)
    summary = {"pairs_drawn": int(len(found)), "pairs_scored": int(found.sum()), "coverage": float(found.mean()),
               "swap": {k: float(v.mean()) for k, v in swap.items()},
               "floor": {k: float(v.mean()) for k, v in floor.items()},
               "specified": [dataset.factor_names[k] for k in specified]}
    show = slice(0, 8)
    figure = np.stack([dataset.images[a[show]].astype(np.float32) / 255.0,
                       dataset.images[b[show]].astype(np.float32) / 255.0, swapped[show], truth[show], rebuilt[show]])
    return summary, figure


def train_predictor(x, y, split, config, seed):
    """Fit x -> y by MSE (Adam 1e-3, batch 128, early stopping on the validation part); predictions for every row."""
    train, val, _ = split
    mean, std = x[train].mean(0), x[train].std(0) + 1e-8
    x = (x - mean) / std
    keras.utils.set_random_seed(seed)
    net = keras.Sequential(mlp_body() + [keras.layers.Dense(y.shape[1])])  # linear output
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", steps_per_execution=16)
    stop = keras.callbacks.EarlyStopping("val_loss", patience=config.patience, restore_best_weights=True)
    history = net.fit(x[train], y[train], batch_size=128, epochs=config.probe_epochs, verbose=0,
                      validation_data=(x[val], y[val]), callbacks=[stop])
    return np.asarray(net.predict(x, batch_size=4096, verbose=0), np.float32), len(history.history["loss"])


def predictor_networks(model, s, z, split, config, rng, log, max_images=2000):
    """Predictor networks f: s -> z and g: z -> s and their regeneration error (evaluation.md Sec. 3).

    On mean codes with the probes' splits. Code-space R^2 = 1 - sum_j MSE_j / sum_j Var_j over the test codes
    (pooled over dims). Regeneration error on up to `max_images` test images: RE_f = MSE(Dec(z, s), Dec(f(s), s)),
    RE_g = MSE(Dec(z, s), Dec(z, g(z))), against the constant predictor (training mean of the predicted code).
    For a disentangled model neither block predicts the other: R^2 near 0 and RE / RE_baseline near 1.
    """
    train, _, test = split
    shown = np.sort(rng.choice(test, min(max_images, len(test)), replace=False))
    reference = decode_batched(model, z[shown], s[shown])
    results, images = {}, {"original": reference}
    for name, source, target in (("s->z", s, z), ("z->s", z, s)):
        started = time.time()
        predicted, epochs = train_predictor(source, target, split, config, config.seed)
        constant = np.broadcast_to(target[train].mean(0), target.shape)
        residual = np.sum(np.square(predicted[test] - target[test]), axis=0)
        total = np.sum(np.square(target[test] - target[test].mean(0)), axis=0)
        if name == "s->z":
            regenerated, baseline = (decode_batched(model, predicted[shown], s[shown]),
                                     decode_batched(model, np.array(constant[shown]), s[shown]))
        else:
            regenerated, baseline = (decode_batched(model, z[shown], predicted[shown]),
                                     decode_batched(model, z[shown], np.array(constant[shown])))
        error = float(np.mean(np.square(regenerated - reference)))
        error_baseline = float(np.mean(np.square(baseline - reference)))
        results[name] = {"r2": float(1.0 - residual.sum() / max(total.sum(), 1e-12)),
                         "regeneration_mse": error, "baseline_mse": error_baseline,
                         "ratio": error / error_baseline if error_baseline > 0 else None, "epochs": epochs,
                         "images": int(len(shown))}
        images[name], images[f"{name} constant"] = regenerated, baseline
        log(f"predictor {name}: R2 {results[name]['r2']:.3f}, regeneration MSE {error:.3e} vs constant "
            f"{error_baseline:.3e} ({epochs} epochs, {time.time() - started:.0f} s)")
    return results, images


def _write_gif(frames, path, milliseconds=120):
    import PIL.Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pictures = []
    for frame in frames:
        frame = np.round(np.clip(np.asarray(frame), 0.0, 1.0) * 255).astype(np.uint8)
        pictures.append(PIL.Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame))
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=milliseconds, loop=0)


def plot_dimensions(stats, path, limit=64):
    """Bar charts of the mean KL and the mean posterior variance per z dimension (sorted by KL), active ones dark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(stats["kl_nats"])[::-1][:limit]
    colours = ["tab:blue" if stats["active"][j] else "lightgray" for j in order]
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 0.32 * len(order) + 2) * 2, 3.0))
    for ax, key, title in ((axes[0], "kl_nats", "mean KL (nats per image)"),
                           (axes[1], "posterior_variance", "mean posterior variance")):
        ax.bar(range(len(order)), [stats[key][j] for j in order], color=colours)
        ax.set_xticks(range(len(order)), [str(j) for j in order], fontsize=7)
        ax.set_xlabel("z dimension (sorted by KL; grey: inactive)", fontsize=8)
        ax.set_title(title, fontsize=9)
    axes[1].axhline(1.0, color="k", lw=0.5, ls="--")  # the prior's variance
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_tsne(codes, colourings, path, points, seed):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    names = list(codes)
    fig, axes = plt.subplots(len(names), len(colourings), figsize=(4.5 * len(colourings), 4.2 * len(names)),
                             squeeze=False)
    rng = np.random.default_rng(seed)
    for i, name in enumerate(names):
        chosen = rng.choice(len(codes[name]), min(points, len(codes[name])), replace=False)
        # Perplexity 30 (evaluation.md); tiny test sets (smoke tests) need a smaller one.
        perplexity = min(30.0, (len(chosen) - 1) / 3)
        embedded = TSNE(2, perplexity=perplexity, max_iter=1000, init="pca", random_state=seed).fit_transform(
            codes[name][chosen])
        for j, (label, values) in enumerate(colourings.items()):
            ax = axes[i, j]
            ax.scatter(embedded[:, 0], embedded[:, 1], c=values[chosen], s=2, cmap="tab10", rasterized=True)
            ax.set_title(f"t-SNE of {name}, coloured by {label}", fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_losses(log_csv, path):
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return False
    def number(text):
        try:
            return float(text)
        except ValueError:  # CSVLogger writes "NA" for values an epoch did not log
            return np.nan

    # One panel per logged term; the per-dimension KLs of a beta-VAE (kl/dim_*) share one panel. CSVLogger also
    # writes val_* columns, all "NA" here since no run validates.
    columns = [c for c in rows[0] if c not in ("epoch", "learning_rate") and not c.startswith(("time/", "val_"))]
    panels = [[c] for c in columns if not c.startswith("kl/dim_")]
    if any(c.startswith("kl/dim_") for c in columns):
        panels.append([c for c in columns if c.startswith("kl/dim_")])
    per_row = min(5, len(panels))
    fig, axes = plt.subplots(-(-len(panels) // per_row), per_row, figsize=(3.2 * per_row, 2.8 * -(-len(panels) // per_row)),
                             squeeze=False)
    epochs = [int(r["epoch"]) + 1 for r in rows]
    for ax, panel in zip(axes.ravel(), panels):
        for column in panel:
            ax.plot(epochs, [number(r[column]) for r in rows], lw=1, label=column[len("kl/"):] if len(panel) > 1 else None)
        ax.set_title(panel[0] if len(panel) == 1 else "KL per z dimension (nats)", fontsize=8)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(panel) > 1:
            ax.legend(fontsize=5, ncol=2)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------

def probe_table(results, chance, codes):
    targets = list(chance)
    lines = ["| code | probe | " + " | ".join(targets) + " |", "|---|---|" + "---|" * len(targets),
             "| chance (test majority) | | " + " | ".join(f"{100 * chance[t]:.1f}" for t in targets) + " |"]
    for code, versions in codes.items():
        for kind in ("mlp", "linear"):
            for version in versions:
                keys = [f"{code}/{t}/{kind}/{version}" for t in targets]
                if not any(k in results for k in keys):
                    continue
                cells = [f"{100 * results[k]:.1f}" if k in results else "" for k in keys]
                lines.append(f"| {code} ({version}) | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def block_report(blocks, swap):
    """The report's section on the s and z blocks: suites per block, block-DCI, leakage, ground-truth swap."""
    from disentanglement_metrics import format_score as _score

    s_block, z_block = blocks["blocks"]["s"], blocks["blocks"]["z"]
    lines = ["## Specified and unspecified blocks (evaluation.md Sec. 5)", "",
             f"s = code dims {s_block['code_dims'][0]}-{s_block['code_dims'][1] - 1} against "
             f"{', '.join(s_block['factors'])}; z = dims {z_block['code_dims'][0]}-{z_block['code_dims'][1] - 1} "
             f"against {', '.join(z_block['factors'])}. n/a: the metric needs two or more factors.", "",
             "| metric | s block | z block |", "|---|---|---|"]
    for name in blocks["s_block"]["disentanglement"]:
        lines.append(f"| {name} | {_score(blocks['s_block']['disentanglement'][name])} | "
                     f"{_score(blocks['z_block']['disentanglement'][name])} |")
    share = blocks["block_dci"]
    lines += ["", "Block-DCI: the share of each factor's DCI importance that falls in its intended block (ideal 1).",
              "", "| factor | intended block | share |", "|---|---|---|"]
    lines += [f"| {name} | {share['intended_block'][name]} | {_score(value)} |"
              for name, value in share["per_factor"].items()]
    lines += [f"| mean | | {_score(share['mean'])} |", "",
              f"Leakage: a block predicting the factors it should not hold "
              f"({blocks['leakage_settings']['num_train']} / {blocks['leakage_settings']['num_test']} rows); "
              "normalised = (accuracy - chance) / (1 - chance), 0 is chance; MI ratio = max over the block's dims of "
              "MI(dim, factor) / H(factor).", "",
              "The last column is the GBT given the true factors that the block should hold instead of the code: what "
              "those factors alone predict in this data (above chance only where the data lacks combinations).", "",
              "| block -> factor | chance | LR | LR normalised | GBT | GBT normalised | MI ratio | GBT on true factors |",
              "|---|---|---|---|---|---|---|---|"]
    for name, entry in blocks["leakage"].items():
        lines.append(f"| {name} | {entry['chance']:.3f} | {entry['lr']['accuracy']:.3f} | "
                     f"{entry['lr']['normalised']:.3f} | {entry['gbt']['accuracy']:.3f} | "
                     f"{entry['gbt']['normalised']:.3f} | {_score(entry['mi_ratio'])} | "
                     f"{entry['data_baseline']['gbt']['accuracy']:.3f} |")
    lines += ["", f"Ground-truth swap error: Dec(z_b, s_a) against the real image with a's "
              f"{', '.join(swap['specified'])} and b's other factors, over {swap['pairs_scored']} test pairs "
              f"(coverage {swap['coverage']:.2f} of {swap['pairs_drawn']} drawn pairs); the floor is the "
              "reconstruction of that real image.", "",
              "| | BCE (nats per image) | MSE per pixel | IoU (0.5) |", "|---|---|---|---|"]
    for row in ("swap", "floor"):
        lines.append(f"| {row} | {swap[row]['bce']:.2f} | {swap[row]['mse']:.3e} | {swap[row]['iou']:.3f} |")
    return lines + [""]


def write_report(out, info, metrics, figures):
    lines = [f"# Evaluation of {info['script']} on {info['config'].get('dataset')}", "",
             f"Checkpoint: `{metrics['checkpoint']}`  ", f"Evaluated {metrics['date']} in "
             f"{metrics['timings']['total']:.0f} s (eval seed {metrics['eval_seed']}).", "",
             "## Probe test accuracy (%)", "",
             "Lower is better on the block that should not carry the target; `pixels` is the ceiling.", "",
             probe_table(metrics["probes"], metrics["chance"], metrics["representations"]), ""]
    dims = metrics["z_dimensions"]
    n_active = sum(dims["active"])
    lines += ["## The unspecified code z, per dimension", "",
              f"{n_active} of {len(dims['active'])} dimensions are active (mean KL >= "
              f"{metrics['eval_config']['active_kl']} nats per image); total KL {sum(dims['kl_nats']):.2f} nats per image.",
              "A dimension with KL near 0 transmits almost nothing through a sampled code, but its mean may still vary "
              "with the input; the `z_active` row probes the active dimensions' means alone.", "",
              dimension_table(dims), ""]
    if "disentanglement" in metrics:
        details = metrics["disentanglement_details"]
        lines += ["## Disentanglement metrics (disentanglement_lib definitions)", "",
                  f"Representation: {details['representation']} (encoder mean) over the factors "
                  f"{', '.join(f'{n} ({k})' for n, k in zip(details['factor_names'], details['factor_sizes']))}; "
                  f"{details['num_rows']} rows, smallest conditional group {details['min_group_size']}; "
                  f"{details['preset']} preset, seed {details['seed']}.", "",
                  "| metric | score | seconds |", "|---|---|---|"]
        import disentanglement_metrics

        seconds = {name: details["seconds"][disentanglement_metrics.HEADLINE[name][0]]
                   for name in metrics["disentanglement"]}
        lines += [f"| {name} | {value:.3f} | {seconds[name]:.1f} |" for name, value in metrics["disentanglement"].items()]
        lines += [""]
    if "blocks" in metrics:
        lines += block_report(metrics["blocks"], metrics["ground_truth_swap"])
    if "predictors" in metrics:
        lines += ["## Predictor networks (evaluation.md Sec. 3)", "",
                  "An MLP predicts one block's mean code from the other's. R^2 is pooled over the predicted code's "
                  "dims on the test codes; the regeneration MSE compares Dec(z, s) with the decoding that uses the "
                  "predicted block, against the constant predictor (the training mean). Disentangled: R^2 near 0, "
                  "ratio near 1.", "", "| predictor | R^2 | regeneration MSE | constant predictor | ratio |",
                  "|---|---|---|---|---|"]
        for name, entry in metrics["predictors"].items():
            ratio = "" if entry["ratio"] is None else f"{entry['ratio']:.3f}"
            lines.append(f"| {name} | {entry['r2']:.3f} | {entry['regeneration_mse']:.3e} | "
                         f"{entry['baseline_mse']:.3e} | {ratio} |")
        lines += [""]
    for title, file in figures:
        lines += [f"## {title}", "", f"![{title}]({file})", ""]
    lines += ["## Timings (s)", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in metrics["timings"].items()]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def main(argv=None):
    config = common.parse_config(EvalConfig, argv, description=__doc__)
    common.configure_cpu()  # the pooled CPU allocator, for the probes' training (see its docstring)
    if config.codes:
        # Given codes: only the disentanglement metric suite (disentanglement_metrics.score_codes_file).
        import disentanglement_metrics

        if config.ckpt:
            sys.exit("error: --ckpt and --codes exclude each other: pass a model (--ckpt) or an .npz of codes and "
                     "factors (--codes), not both.")
        try:
            return disentanglement_metrics.score_codes_file(config.codes, config.out or None, config.fast,
                                                            config.seed)
        except disentanglement_metrics.CodesError as error:
            sys.exit(f"error: {error}")
    if not config.ckpt:
        sys.exit("error: --ckpt is required: a model.keras file or the run folder that holds it (or --codes FILE.npz "
                 "to score given codes).")
    if config.quick:
        config.probe_epochs, config.patience = min(config.probe_epochs, 3), min(config.patience, 2)
        config.tsne_points = min(config.tsne_points, 500)
        config.sprites_frames_per_identity = min(config.sprites_frames_per_identity, 8)
    started, timings = time.time(), {}
    try:
        model, info = common.load_checkpoint(config.ckpt)
    except common.CheckpointError as error:
        sys.exit(f"error: {error}")
    if not (hasattr(model, "encode") and hasattr(model, "decode")):
        sys.exit(f"error: {config.ckpt} holds a {type(model).__name__}, which lacks the encode/decode interface "
                 f"that eval_latents.py needs (see this file's docstring).")
    trained = info["config"]
    out = pathlib.Path(config.out) if config.out else pathlib.Path(info["run_dir"]) / "eval"
    out.mkdir(parents=True, exist_ok=True)

    def log(message):
        print(f"[{time.time() - started:6.0f} s] {message}", flush=True)

    try:
        dataset = data.load_dataset(trained["dataset"], config.data_dir or trained.get("data_dir") or None)
    except data.DataError as error:
        sys.exit(f"error: {error}")
    rng = np.random.default_rng(config.seed)
    rows = evaluation_rows(dataset, config, rng)
    all_rows = np.concatenate([rows[s] for s in ("train", "val", "test") if s in rows])

    log(f"encoding {len(all_rows)} images of {dataset.name}")
    tick = time.time()
    codes = encode(model, dataset, all_rows)
    timings["encode"] = time.time() - tick
    noise_rng = np.random.default_rng(config.seed + 1)
    sampled_z = codes["z_mean"] + np.exp(0.5 * codes["z_logvar"]) * noise_rng.standard_normal(codes["z_mean"].shape)
    representations = {}
    if "s" in codes:
        sampled_s = None
        if "s_logvar" in codes:
            sampled_s = codes["s"] + np.exp(0.5 * codes["s_logvar"]) * noise_rng.standard_normal(codes["s"].shape)
        representations["s"] = {"mean": codes["s"], "sampled": sampled_s}
    representations["z"] = {"mean": codes["z_mean"], "sampled": sampled_z.astype(np.float32)}
    dimensions = dimension_statistics(codes["z_mean"], codes["z_logvar"], config.active_kl)
    active = np.asarray(dimensions["active"])
    only = {}
    if "s" in codes and 0 < active.sum() < len(active):
        # Where does the leakage into z live: in the dimensions that carry information, or below the noise?
        representations["z_active"] = {"mean": codes["z_mean"][:, active]}
        only["z_active"] = (SPECIFIED_TARGETS[dataset.name], ("mlp",))

    labels = {name: np.asarray(column)[all_rows] for name, column in label_columns(dataset).items()}
    tasks = probe_tasks(dataset, rows, rng)
    chance = {t: float(np.bincount(labels[t][split[2]]).max() / len(split[2])) for t, split in tasks.items()}

    tick = time.time()
    probes, probe_details = run_probes(representations, labels, tasks, config, log, only)
    timings["probes"] = time.time() - tick

    # The raw-pixel ceiling depends on the data and the probe settings only, not on the model.
    tick = time.time()
    pixels = pixel_ceiling(dataset, all_rows, labels, tasks, config, log)
    probes.update(pixels["probes"]), probe_details.update(pixels["details"])
    representations["pixels"] = {"mean": None}
    timings["pixel_ceiling"] = time.time() - tick

    # The disentanglement_lib suite (evaluation.md Sec. 4) where the data has ground-truth factors. Every row of
    # the dataset is encoded above, so the interventional metrics look their draws up instead of re-encoding
    # ~2.9M images; the representation is the encoder mean ([s, z_mean] for the specified/unspecified models).
    suite = None
    if dataset.factor_names and len(all_rows) == len(dataset.images):
        import disentanglement_metrics

        tick = time.time()
        mean_code = np.concatenate([codes["s"], codes["z_mean"]], 1) if "s" in codes else codes["z_mean"]
        full = np.empty_like(mean_code)
        full[all_rows] = mean_code
        preset = config.quick or config.fast
        log(f"disentanglement metrics ({'fast preset' if preset else 'study sizes'}) on the "
            f"{'[s, z_mean]' if 's' in codes else 'z_mean'} code over {', '.join(dataset.factor_names)}")
        suite = disentanglement_metrics.all_metrics(disentanglement_metrics.codes_representation(full),
                                                    disentanglement_metrics.FactorSampler(dataset.labels["factors"]),
                                                    seed=config.seed, fast=preset, progress=log)
        suite["representation"] = "[s, z_mean]" if "s" in codes else "z_mean"
        suite["factor_names"], suite["factor_sizes"] = list(dataset.factor_names), list(dataset.factor_sizes)
        timings["disentanglement"] = time.time() - tick

    # Specified/unspecified models on data with factors (evaluation.md Sec. 5): the suite per block, block-DCI,
    # leakage against chance, and the swap against the real image that has the swapped factors.
    blocks = swap_truth = swap_figure = None
    if suite is not None and "s" in codes:
        tick = time.time()
        specified = [list(dataset.factor_names).index(dataset.class_label)]
        s_dims = codes["s"].shape[1]
        blocks = disentanglement_metrics.specified_unspecified_metrics(
            disentanglement_metrics.codes_representation(full), disentanglement_metrics.FactorSampler(
                dataset.labels["factors"]), s_dims, specified, dataset.factor_names, seed=config.seed,
            fast=preset, importance=suite["dci"]["importance_matrix"], progress=log)
        timings["blocks_and_leakage"] = time.time() - tick
        tick = time.time()
        swap_truth, swap_figure = ground_truth_swap_error(
            model, dataset, full[:, :s_dims], full[:, s_dims:], specified, rows["test"],
            np.random.default_rng(config.seed + 3), config.swap_pairs)
        log(f"ground-truth swap error over {swap_truth['pairs_scored']} test pairs (coverage "
            f"{swap_truth['coverage']:.2f}): BCE {swap_truth['swap']['bce']:.1f} nats (floor "
            f"{swap_truth['floor']['bce']:.1f}), IoU {swap_truth['swap']['iou']:.3f} (floor "
            f"{swap_truth['floor']['iou']:.3f})")
        timings["ground_truth_swap"] = time.time() - tick

    # Predictor networks s -> z and z -> s (evaluation.md Sec. 3), on the split of the first specified target.
    predictors = predictor_images = None
    if "s" in codes and config.predictors:
        tick = time.time()
        predictors, predictor_images = predictor_networks(
            model, codes["s"], codes["z_mean"], tasks[SPECIFIED_TARGETS[dataset.name][0]], config,
            np.random.default_rng(config.seed + 4), log)
        timings["predictors"] = time.time() - tick

    # codes.npz: keys <name>_<split>, so that any other tool can re-score the same codes.
    arrays, start = {}, 0
    label_keys = {"mnist": ("digit",), "sprites": ("identity", "attributes", "action", "direction", "frame"),
                  "dsprites": ("factors",)}[dataset.name]
    for split in ("train", "val", "test"):
        if split not in rows:
            continue
        part = slice(start, start + len(rows[split]))
        start += len(rows[split])
        for key, values in codes.items():
            arrays[f"{key}_{split}"] = values[part]
        arrays[f"z_sampled_{split}"] = sampled_z[part].astype(np.float32)
        for key in label_keys:
            arrays[f"{key}_{split}"] = dataset.labels[key][rows[split]]
        arrays[f"row_{split}"] = rows[split]
    np.savez_compressed(out / "codes.npz", **arrays)

    # Figures.
    tick = time.time()
    figures = []
    test = rows["test"]
    picks = np.random.default_rng(config.seed).choice(test, 8, replace=False)
    grid_images = dataset.images[picks].astype(np.float32) / 255.0
    if "s" in codes:
        common.save_image_grid(common.swap_grid(model, grid_images), out / "swap_grid.png")
        figures.append(("Swap grid (s from the row image, z from the column image)", "swap_grid.png"))
        common.save_image_grid(interpolation_grid(model, grid_images[0], grid_images[1]), out / "interpolation.png")
        figures.append(("Interpolation (s down the rows, z across the columns)", "interpolation.png"))
    if swap_figure is not None:
        common.save_image_grid(swap_figure, out / "swap_truth.png")
        figures.append(("Swap against the ground truth (rows: image a giving s, image b giving z, Dec(z_b, s_a), the "
                        "real image with a's specified and b's other factors, its own reconstruction)", "swap_truth.png"))
    if predictor_images is not None:
        order = ["original", "s->z", "s->z constant", "z->s", "z->s constant"]
        common.save_image_grid(np.stack([predictor_images[k][:8] for k in order]), out / "predictors.png")
        figures.append(("Predictor networks (rows: Dec(z, s); Dec(f(s), s); Dec(mean z, s); Dec(z, g(z)); "
                        "Dec(z, mean s))", "predictors.png"))
    shown = np.random.default_rng(config.seed + 2).choice(test, min(16, len(test) // 8 * 8), replace=False)
    common.save_image_grid(reconstruction_grid(model, dataset.images[shown].astype(np.float32) / 255.0),
                           out / "reconstructions.png")
    figures.append(("Reconstructions (each row of test images above its reconstructions from the mean codes)",
                    "reconstructions.png"))
    plot_dimensions(dimensions, out / "dimensions.png")
    figures.append(("z per dimension: mean KL and mean posterior variance", "dimensions.png"))
    kl_order = np.argsort(dimensions["kl_nats"])[::-1]
    figures += write_traversals(model, grid_images[:3], kl_order, out)
    test_part = slice(len(all_rows) - len(test), len(all_rows))
    colour_by = {"mnist": ["digit"], "sprites": ["body", "hair", "action", "direction"],
                 "dsprites": ["shape", "scale", "posX"]}[dataset.name]
    tsne_codes = {name: versions["mean"][test_part] for name, versions in representations.items()
                  if name in ("s", "z")}
    plot_tsne(tsne_codes, {c: labels[c][test_part] for c in colour_by}, out / "tsne.png", config.tsne_points,
              config.seed)
    figures.append(("t-SNE of the test codes (means)", "tsne.png"))
    log_csv = pathlib.Path(info["run_dir"]) / "log.csv"
    if log_csv.is_file() and plot_losses(log_csv, out / "losses.png"):
        figures.append(("Training losses", "losses.png"))
    timings["figures"] = time.time() - tick
    timings["total"] = time.time() - started

    metrics = {"schema": 1, "checkpoint": str(config.ckpt), "model": info["script"], "dataset": dataset.name,
               "config": trained, "eval_config": dataclasses.asdict(config), "eval_seed": config.seed,
               "training_seed": trained.get("seed"), "versions": common.package_versions(),
               "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": {k: len(v) for k, v in rows.items()},
               "probes": probes, "probe_details": probe_details, "chance": chance, "z_dimensions": dimensions,
               "representations": {k: list(v) for k, v in representations.items()}, "timings": timings}
    if suite is not None:
        metrics["disentanglement"] = suite["disentanglement"]
        metrics["disentanglement_details"] = suite
    if blocks is not None:
        metrics["blocks"] = blocks
        metrics["ground_truth_swap"] = swap_truth
    if predictors is not None:
        metrics["predictors"] = predictors
    common.write_json(out / "metrics.json", metrics)
    write_report(out, info, metrics, figures)
    log(f"report written to {out / 'report.md'}")
    return metrics


if __name__ == "__main__":
    main()
