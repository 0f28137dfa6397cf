"""Evaluate a trained model's codes: probes, swap and interpolation grids, t-SNE, loss curves, codes.npz.

    python eval_latents.py --ckpt runs/cycle_vae_mnist_.../model.keras [--data-dir DIR] [--quick]
    python eval_latents.py --codes FILE.npz [--out FILE.json] [--fast] [--seed N]   (metric suite on given codes)

Writes into <run folder>/eval/ (or --out): report.md (numbers and figures), metrics.json (config, seed,
versions, timings, results), codes.npz (the evaluated codes and labels, keys <name>_<split>) and PNG figures.

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


def build_probe(kind, n_classes):
    if kind == "mlp":
        layers = []
        for _ in range(2):
            layers += [keras.layers.Dense(256), keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5),
                       keras.layers.LeakyReLU(negative_slope=0.2)]
        return keras.Sequential(layers + [keras.layers.Dense(n_classes)]), 1e-4
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
    for title, file in figures:
        lines += [f"## {title}", "", f"![{title}]({file})", ""]
    lines += ["## Timings (s)", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in metrics["timings"].items()]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def main(argv=None):
    config = common.parse_config(EvalConfig, argv, description=__doc__)
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
    common.write_json(out / "metrics.json", metrics)
    write_report(out, info, metrics, figures)
    log(f"report written to {out / 'report.md'}")
    return metrics


if __name__ == "__main__":
    main()
