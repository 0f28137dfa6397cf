"""The evaluation of specified/unspecified models with ground-truth factors: evaluation/blocks.py's ground-truth swap
error and predictor networks on stand-in models whose answer is known, and the whole `eval_latents.py --ckpt` of a
cycle-VAE trained on a dSprites-format fixture (block metrics, leakage, swap error, predictors, figures)."""
import json

import numpy as np
import pytest

import data
import eval_latents
from evaluation import blocks


class LookupModel:
    """decode(z, s) = the real image whose shape is read from s and whose other factors are read from z.

    With `ignore_s`, the shape is read from z as well (z then holds all five factors): the swap keeps b's shape,
    the failure that the ground-truth swap error must expose."""

    def __init__(self, dataset, ignore_s=False):
        self.dataset, self.ignore_s = dataset, ignore_s
        self.index = dataset.factor_index("all")

    def decode(self, z, s):
        factors = np.rint(np.asarray(z)).astype(np.int64)
        if not self.ignore_s:
            factors[:, 0] = np.rint(np.asarray(s)[:, 0]).astype(np.int64)
        found = self.index.lookup(factors)
        images = self.dataset.images[np.maximum(found, 0)].astype(np.float32) / 255.0
        images[found < 0] = 0.5
        return images


def test_ground_truth_swap_error_is_zero_for_a_true_swap_and_exposes_an_ignored_s(tiny_dsprites):
    _, dataset = tiny_dsprites
    factors = dataset.labels["factors"].astype(np.float32)
    s_all, z_all = factors[:, :1], factors.copy()  # z holds every factor; the decoder decides which it uses
    test = dataset.rows("all")
    good, figure = blocks.ground_truth_swap_error(LookupModel(dataset), dataset, s_all, z_all, [0], test,
                                                  np.random.default_rng(0), pairs=400)
    assert 0.3 < good["coverage"] < 0.9  # the fixture holds half of the product
    assert good["pairs_scored"] == round(good["coverage"] * good["pairs_drawn"])
    assert good["swap"]["iou"] == pytest.approx(1.0) and good["swap"]["mse"] == pytest.approx(0.0)
    assert good["swap"]["bce"] < 0.01 and good["floor"]["bce"] < 0.01
    assert figure.shape == (5, 8, 64, 64, 1)
    np.testing.assert_array_equal(figure[2], figure[3])  # the swap is the real target image

    bad, _ = blocks.ground_truth_swap_error(LookupModel(dataset, ignore_s=True), dataset, s_all, z_all, [0], test,
                                            np.random.default_rng(0), pairs=400)
    assert bad["floor"]["iou"] == pytest.approx(1.0)  # reconstructions are still perfect
    assert bad["swap"]["iou"] < 0.6 and bad["swap"]["bce"] > 100 * good["swap"]["bce"] + 100


class LinearDecoder:
    def __init__(self, z_dim, s_dim, seed=0):
        rng = np.random.default_rng(seed)
        self.weights = rng.standard_normal((z_dim + s_dim, 8 * 8)).astype(np.float32)

    def decode(self, z, s):
        logits = np.concatenate([z, s], 1) @ self.weights
        return (1 / (1 + np.exp(-logits))).reshape(len(z), 8, 8, 1)


@pytest.mark.parametrize("dependent", [False, True])
def test_predictor_networks_separate_independent_from_dependent_blocks(dependent):
    rng = np.random.default_rng(0)
    n = 3000
    s = rng.standard_normal((n, 4)).astype(np.float32)
    z = rng.standard_normal((n, 3)).astype(np.float32)
    if dependent:
        z = (s[:, :3] @ np.array([[1.0, 0.5, 0], [0, 1.0, 0.5], [0.5, 0, 1.0]])).astype(np.float32)
    split = (np.arange(0, 2000), np.arange(2000, 2400), np.arange(2400, n))
    config = eval_latents.EvalConfig(probe_epochs=30, patience=5)
    results, images = blocks.predictor_networks(LinearDecoder(3, 4), s, z, split, config, np.random.default_rng(1),
                                                lambda message: None, max_images=300)
    assert set(images) == {"original", "s->z", "s->z constant", "z->s", "z->s constant"}
    assert images["s->z"].shape == (300, 8, 8, 1)
    if dependent:
        assert results["s->z"]["r2"] > 0.9 and results["s->z"]["ratio"] < 0.2
    else:
        for name in ("s->z", "z->s"):
            assert abs(results[name]["r2"]) < 0.05 and 0.85 < results[name]["ratio"] < 1.15, results[name]


@pytest.mark.slow
def test_cycle_vae_on_dsprites_gets_block_metrics_leakage_and_swap_error(tiny_dsprites, tmp_path, run_script):
    root, _ = tiny_dsprites
    trained = run_script("cycle_vae.py", "--dataset", "dsprites", "--data-dir", str(root), "--batch-size", "16",
                         "--steps-per-epoch", "3", "--epochs", "1", "--out", str(tmp_path / "run"), "--no-evaluate",
                         cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    evaluated = run_script("eval_latents.py", "--ckpt", str(tmp_path / "run"), "--quick", cwd=tmp_path,
                           env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    out = tmp_path / "run" / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    blocks = metrics["blocks"]
    assert blocks["blocks"]["s"]["factors"] == ["shape"]
    assert blocks["blocks"]["z"]["factors"] == ["scale", "orientation", "posX", "posY"]
    assert blocks["s_block"]["disentanglement"]["factor_vae"] is None
    assert 0.0 <= blocks["z_block"]["disentanglement"]["mig"] <= 1.0
    assert set(blocks["block_dci"]["per_factor"]) == set(data.DSPRITES_FACTORS)
    assert set(blocks["leakage"]) == {"z->shape", "s->scale", "s->orientation", "s->posX", "s->posY"}
    swap = metrics["ground_truth_swap"]
    assert 0 < swap["coverage"] <= 1 and swap["pairs_scored"] > 0 and swap["swap"]["bce"] > 0
    assert set(metrics["predictors"]) == {"s->z", "z->s"}
    report = (out / "report.md").read_text()
    for text in ("Specified and unspecified blocks", "Block-DCI", "Ground-truth swap error", "Predictor networks",
                 "swap_truth.png", "predictors.png"):
        assert text in report, text
    assert (out / "swap_truth.png").is_file() and (out / "predictors.png").is_file()
