"""The report's pictures (docs/evaluation.md Sec. 2): swap and interpolation grids, reconstructions, latent
traversals (PNG and GIF), z per dimension, t-SNE of the codes and the training curves.

`write_figures` writes every one of them for a model into the evaluation folder and returns the report's
(title, file) entries and the figures that failed; the functions below it draw one figure each.
"""
import pathlib

import numpy as np

import common
from evaluation import probes

SWAP_TRUTH_TITLE = ("Swap against the ground truth (rows: image a giving s, image b giving z, Dec(z_b, s_a), the "
                    "real image with a's specified and b's other factors, its own reconstruction)")
PREDICTORS_TITLE = ("Predictor networks (rows: Dec(z, s); Dec(f(s), s); Dec(mean z, s); Dec(z, g(z)); "
                    "Dec(z, mean s))")
# Every name (fnmatch pattern) that write_figures may create in the evaluation folder. evaluation/output.py
# replaces an evaluation folder only while it holds nothing else, so a new figure must be named here.
FIGURE_FILES = ("swap_grid.png", "swap_grid_evidence.png", "interpolation.png", "swap_truth.png", "predictors.png",
                "reconstructions.png", "dimensions.png", "traversal_[0-9]*.png", "traversal.gif", "traversal_dims",
                "tsne.png", "losses.png")


def one_line(error):
    """An exception as one line: its type and the first line of its message."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def write_figures(model, dataset, test_rows, representations, labels, dimensions, config, out, log_csv,
                  swap_figure=None, predictor_images=None, log=print):
    """Every figure of a model's evaluation into `out`; returns (the report's (title, file) entries in order,
    {figure: one-line reason} of the figures that failed).

    `representations` and `labels` hold the probed codes and the targets of the encoded rows, whose last
    len(test_rows) entries are the test rows; `dimensions` are z's statistics (`probes.dimension_statistics`);
    `swap_figure` and `predictor_images` come from evaluation/blocks.py where those ran.

    Each figure is drawn on its own: one that raises is logged, the files it left are removed, and the others
    are still drawn, so that a plotting problem (a t-SNE out of memory, a font) costs that picture and not the
    evaluation's numbers.
    """
    out = pathlib.Path(out)
    entries, failed = [], {}
    picks = np.random.default_rng(config.seed).choice(test_rows, 8, replace=False)
    grid_images = dataset.images[picks].astype(np.float32) / 255.0

    def draw(name, title, make):
        before = set(out.rglob("*"))
        try:
            result = make()
        except Exception as error:  # whatever stops one picture is reported, and the others are drawn
            failed[name] = one_line(error)
            log(f"figure {name} failed: {failed[name]}")
            for path in sorted(set(out.rglob("*")) - before, reverse=True):  # a folder's files before the folder
                if path.is_dir():
                    path.rmdir()
                else:
                    path.unlink()
            return
        entries.extend(result if title is None else [(title, name)])

    if "s" in representations:
        draw("swap_grid.png", "Swap grid (s from the row image, z from the column image)",
             lambda: common.save_image_grid(common.swap_grid(model, grid_images), out / "swap_grid.png"))
    if "s_evidence" in representations:  # the ML-VAE: s with evidence over shifted views of the row image
        draw("swap_grid_evidence.png", f"Swap grid with evidence (s of the row image accumulated over "
                                       f"{probes.EVIDENCE_VIEWS} shifted views of it, z from the column image)",
             lambda: common.save_image_grid(common.swap_grid(
                 model, grid_images, probes.evidence_codes(model, dataset, picks, seed=config.seed + 5)[0]),
                 out / "swap_grid_evidence.png"))
    if "s" in representations:
        draw("interpolation.png", "Interpolation (s down the rows, z across the columns)",
             lambda: common.save_image_grid(interpolation_grid(model, grid_images[0], grid_images[1]),
                                            out / "interpolation.png"))
    if swap_figure is not None:
        draw("swap_truth.png", SWAP_TRUTH_TITLE, lambda: common.save_image_grid(swap_figure, out / "swap_truth.png"))
    if predictor_images is not None:
        order = ["original", "s->z", "s->z constant", "z->s", "z->s constant"]
        draw("predictors.png", PREDICTORS_TITLE, lambda: common.save_image_grid(
            np.stack([predictor_images[k][:8] for k in order]), out / "predictors.png"))
    shown = np.random.default_rng(config.seed + 2).choice(test_rows, min(16, len(test_rows) // 8 * 8), replace=False)
    draw("reconstructions.png", "Reconstructions (each row of test images above its reconstructions from the mean "
         "codes)", lambda: common.save_image_grid(
             reconstruction_grid(model, dataset.images[shown].astype(np.float32) / 255.0), out / "reconstructions.png"))
    draw("dimensions.png", "z per dimension: mean KL and mean posterior variance",
         lambda: plot_dimensions(dimensions, out / "dimensions.png"))
    kl_order = np.argsort(dimensions["kl_nats"])[::-1]
    draw("traversals", None, lambda: write_traversals(model, grid_images[:3], kl_order, out))
    encoded = len(representations["z"]["mean"])
    test_part = slice(encoded - len(test_rows), encoded)
    tsne_codes = {name: versions["mean"][test_part] for name, versions in representations.items()
                  if name in ("s", "z")}
    draw("tsne.png", "t-SNE of the test codes (means)", lambda: plot_tsne(
        tsne_codes, {c: labels[c][test_part] for c in dataset.tsne_colourings()}, out / "tsne.png",
        config.tsne_points, config.seed))
    if log_csv.is_file():
        draw("losses.png", None, lambda: [("Training losses", "losses.png")] if plot_losses(
            log_csv, out / "losses.png") else [])
    return entries, failed


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
    """Latent traversals (docs/evaluation.md Sec. 2): each latent swept over [-2.5, 2.5] in 10 steps around the mean
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
    """An endlessly looping GIF of float images in [0, 1]."""
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
    """One t-SNE panel per code (rows) and colouring (columns), of up to `points` codes drawn with `seed`."""
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
        # Perplexity 30 (docs/evaluation.md Sec. 2); tiny test sets (smoke tests) need a smaller one.
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
    """The training curves of log.csv, one panel per logged term; False when the log has no rows."""
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
    panel_rows = -(-len(panels) // per_row)
    fig, axes = plt.subplots(panel_rows, per_row, figsize=(3.2 * per_row, 2.8 * panel_rows), squeeze=False)
    epochs = [int(r["epoch"]) + 1 for r in rows]
    for ax, panel in zip(axes.ravel(), panels):
        for column in panel:
            # Markers while there are few epochs: a line through one point draws nothing.
            ax.plot(epochs, [number(r[column]) for r in rows], lw=1, marker="o" if len(rows) <= 20 else None, ms=3,
                    label=column[len("kl/"):] if len(panel) > 1 else None)
        if panel == ["gan/d_accuracy"]:  # The range in which neither the discriminator nor the generator won.
            ax.axhspan(0.5, 0.95, color="tab:green", alpha=0.12, lw=0)
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
