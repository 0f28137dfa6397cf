"""Evaluate a trained model's codes: probes, swap and interpolation grids, t-SNE, loss curves, codes.npz.

    python eval_latents.py --ckpt runs/cycle_vae_mnist_.../model.keras [--data-dir DIR] [--quick]
    python eval_latents.py --ckpt runs/<run>/model.keras --probes-only   (the probes alone, e.g. during training)
    python eval_latents.py --codes FILE.npz [--out FILE.json] [--fast] [--seed N]   (metric suite on given codes)

Writes into <run folder>/eval/ (or --out): report.md (numbers and figures), metrics.json (config, seed,
versions, timings, results), codes.npz (the evaluated codes and labels, keys <name>_<split>) and PNG figures.
The folder is written whole or not at all: the evaluation fills <out>.partial-<pid> beside it and only then
replaces the previous evaluation (evaluation/output.py), so a kill or a full disk leaves the previous one as it
was. An --out that holds files an evaluation did not write is refused, never emptied. --probes-only runs the
probes, the pixel ceiling and z's per-dimension statistics and nothing else (no suite, predictors or figures),
into <run folder>/eval_probes/ so that it never replaces a full evaluation: a read of the headline numbers in a
few minutes, on the model.keras that a training run rewrites (atomically) after every epoch.

Failures: a size flag beyond what the data holds is refused (exit 2) before any work; a figure that fails is
reported in the log and in report.md, the numbers and the other figures are written, and the process then ends
with exit status 1 and a message naming the figure. A flag given explicitly that does not apply to the model or
the data (--predictors on a model without s, --sprites-frames-per-identity off Sprites, ...) gets a one-line
notice on stderr. --codes refuses fewer than evaluation/codes.py's MIN_ROWS rows and warns (in the JSON as well)
below FEW_ROWS.

Probes (docs/evaluation.md Sec. 1): an MLP and a linear softmax layer on the mean and on a sampled code of every
block, per target of the dataset, beside the raw-pixel ceiling and chance. On data with ground-truth factors
(dSprites) it also runs the disentanglement_lib suite on the mean code (Sec. 4; `--quick` uses its fast preset)
and, for the specified/unspecified models, Sec. 5: the suite per block (s against the specified factor, z
against the others), block-DCI, leakage against chance with the level the block's own true factors reach, and
the ground-truth swap error (Dec(z_b, s_a) against the real image with a's shape and b's other factors, with the
reconstruction floor). Every specified/unspecified model gets the predictor networks s -> z and z -> s (Sec. 3).

The interface a model script provides (every model in this repository does):
    model.encode(images) -> {"z_mean", "z_logvar"[, "s"[, "s_logvar"]]}, float32 arrays, images in [0, 1]
    model.decode(z[, s]) -> images in [0, 1]
A model without "s" (beta-VAE) is evaluated on z alone.

The code lives in the evaluation/ package (evaluation/__init__.py lists its modules, and evaluation/checkpoint.py
is the table of contents of `--ckpt`).
"""
import dataclasses
import sys
from typing import Optional

import common
from evaluation import checkpoint, codes


# The ground-truth swap error decodes and compares every pair at once (evaluation/blocks.py): about 200 KB of
# memory per pair of dSprites images at its peak, so 20,000 pairs take ~4 GB. The default 5,000 already puts the
# standard error of the mean IoU below 0.005; more pairs only cost memory.
MAX_SWAP_PAIRS = 20000


@dataclasses.dataclass
class EvalConfig:
    ckpt: Optional[str] = None  # A model.keras file or its run folder (this or --codes is required).
    data_dir: Optional[str] = None  # Data directory; default the one the model was trained with, else data.py's.
    out: Optional[str] = None  # Output folder; default <run folder>/eval (--codes: FILE.metrics.json).
    seed: int = 0  # Evaluation seed (sampled codes, probe splits, subsets).
    quick: bool = False  # Few probe epochs and t-SNE points: a smoke test, not numbers to report.
    probe_epochs: int = 100  # Maximum probe epochs (docs/evaluation.md Sec. 1).
    patience: int = 10  # Early-stopping patience in epochs (docs/evaluation.md Sec. 1).
    tsne_points: int = 10000  # Test points in each t-SNE plot (at most the test set: larger values are capped).
    sprites_frames_per_identity: int = 40  # Probe-training frames drawn per train identity on Sprites.
    active_kl: float = 0.1  # A z dimension is active when its mean KL (nats per image) reaches this.
    pixel_cache: bool = True  # Reuse the raw-pixel ceiling row computed with the same data and probe settings.
    codes: Optional[str] = None  # Instead of --ckpt: .npz of codes (N, D) and factors (N, K) for the metric suite.
    fast: bool = False  # Fast metric-suite preset (--codes; --ckpt on dSprites): never mix with full-size numbers.
    swap_pairs: int = 5000  # Test pairs for the ground-truth swap error (data with factors), at most 20,000.
    predictors: bool = True  # Train the predictor networks s -> z and z -> s (specified/unspecified models).
    probes_only: bool = False  # Probes, pixel ceiling and z per dimension only, into <run folder>/eval_probes.

    def __post_init__(self):
        common.check_ranges(self, at_least_one=("probe_epochs", "tsne_points", "sprites_frames_per_identity",
                                                "swap_pairs"), non_negative=("patience", "active_kl"))
        if self.swap_pairs > MAX_SWAP_PAIRS:
            raise ValueError(f"--swap-pairs must be at most {MAX_SWAP_PAIRS}, got {self.swap_pairs}: the swap error "
                             f"holds ~200 KB per pair of 64x64 images in memory, and {MAX_SWAP_PAIRS} pairs already "
                             "measure it to about 0.002 IoU.")


def main(argv=None):
    """Parse the flags and run one of the two evaluations; returns what it wrote to its JSON."""
    config = common.parse_config(EvalConfig, argv, description=__doc__)
    common.configure_cpu()  # the pooled CPU allocator, for the probes' training (see its docstring)
    if config.codes:
        return codes.score_given_codes(config)
    if not config.ckpt:
        sys.exit("error: --ckpt is required: a model.keras file or the run folder that holds it (or --codes FILE.npz "
                 "to score given codes).")
    return checkpoint.evaluate_checkpoint(config)


if __name__ == "__main__":
    main()
