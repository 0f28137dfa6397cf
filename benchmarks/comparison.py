"""The three specified/unspecified models side by side on MNIST: one probe table and one figure of swap grids.

    python benchmarks/comparison.py                                     # the table, from pretrained/*.metrics.json
    python benchmarks/comparison.py --figure docs/images/comparison_mnist_swap_grids.png --data-dir DIR
    python benchmarks/comparison.py --study cycle_vae_mnist=runs/cycle_vae_mnist_seeds.json ...
    python benchmarks/comparison.py --sprites                           # the Sprites matrices, one seed each

The table has one row per model (the ML-VAE twice: the paper's MLP, and the convolutional encoder and decoder
the other two use): the MLP probe accuracies (%) of s, of a sampled z and of z's mean for the
digit (docs/evaluation.md), z's active dimensions, chance and the figures the papers published. Without --study
a row is the evaluation of the model's checkpoint in pretrained/ (one seed); with --study NAME=FILE it is the
median over the seeds of a benchmarks/seed_study.py summary (<out>_seeds.json), with the lowest and highest
seed beside it. The figure puts the models' swap grids on the same eight test digits (one per class),
each through the shared encode/decode interface: row r, column c decodes z of the column's image with s of
the row's image, so a good model draws the row's digit in the column's style.

With --sprites it writes the {s, z} x {attributes, pose, identity} matrix on Sprites' unseen test identities
instead: one block of rows per model with a pretrained/<model>_sprites.metrics.json (MLP probes of s, a sampled z
and z's mean), chance on top, the models without a Sprites checkpoint named under the table. Results:
docs/results/comparison.md.
"""
import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import data  # noqa: E402  (ATTRIBUTES: the Sprites attribute names, in the loader's order)
import seed_study  # noqa: E402  (headline(): the probe scores of one metrics.json, as the seed studies read them)

PRETRAINED = ROOT / "pretrained"
# (pretrained name, label, the papers' own figures; docs/results/<model>.md give the sources)
MODELS = (
    ("cycle_vae_mnist", "cycle-VAE (Jha et al. 2018)", "s 98.35, sampled z 17.56"),
    ("adversarial_disentangle_mnist", "Mathieu et al. 2016, KL weight 3", "s 98.52, z 66.83 (KL weight 1)"),
    ("mlvae_mnist", "ML-VAE (Bouchacourt et al. 2018), MLP", "sampled style 42.06"),
    ("mlvae_mnist_conv", "ML-VAE, the cycle-VAE's conv network", "(the paper's network is the MLP)"),
)
# Sprites (every model on cycle_vae.py's conv networks, z 512, s 64). Targets: data.ATTRIBUTES, then the pose
# (action, direction) and the 100-way identity of the unseen identities.
SPRITES_MODELS = (("cycle_vae_sprites", "cycle-VAE"), ("adversarial_disentangle_sprites", "Mathieu et al."),
                  ("adversarial_disentangle_sprites_joint", "Mathieu et al., joint"),
                  ("adversarial_disentangle_sprites_joint_kl5", "Mathieu et al., joint, beta 5"),
                  ("mlvae_sprites", "ML-VAE"))
SPRITES_TARGETS = data.ATTRIBUTES + ("action", "direction", "identity")
SPRITES_CODES = (("s", "s/{}/mlp/mean"), ("z sampled", "z/{}/mlp/sampled"), ("z mean", "z/{}/mlp/mean"))
COLUMNS = (("s (MLP)", "digit: s"), ("sampled z (MLP)", "digit: z sampled"), ("z mean (MLP)", "digit: z mean"),
           ("z active dims", "z active dims"), ("chance", "digit: chance"))


def scores(name, study=None):
    """(seeds, {score: [values, one per seed]}) of one model: its seed study's, else its pretrained evaluation's."""
    if study is not None:
        summary = json.loads(pathlib.Path(study).read_text())
        per_seed = summary["seeds"]
        return sorted(per_seed, key=int), {key: [seed[key] for seed in per_seed.values() if seed.get(key) is not None]
                                           for _, key in COLUMNS}
    path = PRETRAINED / f"{name}.metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: evaluate pretrained/{name}.keras with eval_latents.py --ckpt and "
                                "copy its metrics.json there, or pass the model's seed study with --study.")
    metrics = json.loads(path.read_text())
    _, values = seed_study.headline(metrics, path)
    return [str(metrics.get("training_seed", "?"))], {key: [values[key]] for _, key in COLUMNS}


def cell(values, key):
    """The median of the values (in %, except dimensions), with the range over seeds when there are several."""
    if not values:
        return "n/a"
    form = (lambda v: f"{v:g}") if key == "z active dims" else (lambda v: f"{100 * v:.1f}")
    ordered = sorted(values)
    median = ordered[len(ordered) // 2] if len(ordered) % 2 else (ordered[len(ordered) // 2 - 1]
                                                                  + ordered[len(ordered) // 2]) / 2
    low, high = form(ordered[0]), form(ordered[-1])
    return form(median) + (f" ({low}-{high})" if low != high else "")


def table(studies):
    lines = ["| model | seeds | " + " | ".join(title for title, _ in COLUMNS) + " | published |",
             "|---" * (len(COLUMNS) + 3) + "|"]
    for name, label, published in MODELS:
        seeds, values = scores(name, studies.get(name))
        lines.append(f"| {label} | {', '.join(seeds)} | "
                     + " | ".join(cell(values[key], key) for _, key in COLUMNS) + f" | {published} |")
    return "\n".join(lines) + "\n"


def sprites_table(folder=None):
    """The Sprites matrices of the models that have a pretrained Sprites evaluation, as Markdown."""
    folder = PRETRAINED if folder is None else folder
    found, missing = [], []
    for name, label in SPRITES_MODELS:
        path = folder / f"{name}.metrics.json"
        if path.is_file():
            found.append((label, json.loads(path.read_text())))
        else:
            missing.append(f"pretrained/{name}.metrics.json")
    if not found:
        raise FileNotFoundError("no Sprites evaluation in pretrained/ (" + ", ".join(missing) + "): evaluate a "
                                "model's pretrained/<name>_sprites.keras with eval_latents.py --ckpt and copy its "
                                "metrics.json there.")

    def percent(value):
        return "" if value is None else f"{100 * value:.1f}"

    lines = ["| model | code (MLP) | " + " | ".join(SPRITES_TARGETS) + " |", "|---" * (len(SPRITES_TARGETS) + 2) + "|",
             "| | chance | " + " | ".join(percent(found[0][1]["chance"].get(t)) for t in SPRITES_TARGETS) + " |"]
    for label, metrics in found:
        for code, key in SPRITES_CODES:
            lines.append(f"| {label} | {code} | "
                         + " | ".join(percent(metrics["probes"].get(key.format(t))) for t in SPRITES_TARGETS) + " |")
    text = "\n".join(lines) + "\n"
    return text + (f"\nNot yet evaluated: {', '.join(missing)}.\n" if missing else "")


def figure(path, data_dir):
    """The models' swap grids on the same eight test digits, side by side, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    import common
    import data

    dataset = data.load_dataset("mnist", data_dir)
    images = np.stack([dataset.images[row] for row in data.grid_rows(dataset)]).astype(np.float32) / 255.0
    panels = []
    for name, label, _ in MODELS:
        model, _ = common.load_checkpoint(PRETRAINED / f"{name}.keras")
        panels.append((label, common.tile_images(common.swap_grid(model, images))))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6))
    for axis, (label, grid) in zip(axes, panels):
        axis.imshow(np.squeeze(grid), cmap="gray", vmin=0, vmax=1)
        axis.set_title(label, fontsize=10)
        axis.axis("off")
    fig.suptitle("swap grids: row = image giving s, column = image giving z", fontsize=10)
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", action="append", default=[], metavar="NAME=FILE",
                        help="a model's seed-study summary (<out>_seeds.json) instead of its pretrained evaluation; "
                             f"NAME is one of {', '.join(name for name, _, _ in MODELS)}")
    parser.add_argument("--figure", help="also write the swap-grid figure to this PNG")
    parser.add_argument("--sprites", action="store_true",
                        help="write the Sprites matrices (pretrained/*_sprites.metrics.json), not the MNIST table")
    parser.add_argument("--data-dir", help="data directory for the figure's test digits (default: data.py's)")
    args = parser.parse_args(argv)
    studies = {}
    for item in args.study:
        name, _, file = item.partition("=")
        if name not in {model for model, _, _ in MODELS} or not file:
            parser.error(f"--study {item!r}: give NAME=FILE with NAME one of "
                         f"{', '.join(model for model, _, _ in MODELS)}")
        if not pathlib.Path(file).is_file():
            parser.error(f"--study {item!r}: {file} does not exist (benchmarks/seed_study.py writes <out>_seeds.json)")
        studies[name] = file
    if args.sprites and (studies or args.figure):
        parser.error("--sprites writes the Sprites matrices of the pretrained checkpoints; --study and --figure "
                     "belong to the MNIST table, run them without --sprites")
    try:
        print(sprites_table() if args.sprites else table(studies), end="")
    except FileNotFoundError as error:
        sys.exit(f"error: {error}")
    if args.figure:
        print(f"figure: {figure(args.figure, args.data_dir)}")


if __name__ == "__main__":
    main()
