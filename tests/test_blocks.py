"""Block metrics, block-DCI and leakage for specified/unspecified codes (docs/evaluation.md Sec. 5.1-5.2), on codes
whose answer is known by construction."""
import numpy as np
import pytest

from evaluation import blocks, sampling


def full_product(sizes):
    return np.stack(np.meshgrid(*[np.arange(n) for n in sizes], indexing="ij"), -1).reshape(-1, len(sizes))


@pytest.fixture(scope="module")
def factors():
    # A shape-like specified factor (3 values) and three others, over the full product: there the other factors
    # carry no information about shape, so any that z carries is leakage.
    return full_product((3, 6, 8, 8))


def split_code(factors, leak=0.0, seed=1):
    """[s, z]: s = two noisy copies of factor 0; z = noisy copies of factors 1-3 (+ leak * factor 0)."""
    rng = np.random.RandomState(seed)
    s = factors[:, [0, 0]] + 0.05 * rng.randn(len(factors), 2)
    z = factors[:, 1:] + 0.05 * rng.randn(len(factors), 3) + leak * factors[:, [0]] * 7.0
    return np.hstack([s, z]).astype(np.float64)


def test_block_importance_share_on_a_hand_built_matrix():
    importance = np.array([[1.0, 0.0, 0.0],   # s dim
                           [0.0, 3.0, 0.0],   # z dim
                           [1.0, 1.0, 0.0]])  # z dim
    share = blocks.block_importance_share(importance, {"s": [0], "z": [1, 2]}, ["s", "z", "z"])
    # factor 0: 1 of 2 in s; factor 1: all 4 in z; factor 2: no dim predicts it (undefined, left out of the mean)
    assert share["per_factor"] == [pytest.approx(0.5), pytest.approx(1.0), None]
    assert share["mean"] == pytest.approx(0.75)


def test_leakage_is_chance_for_noise_and_one_for_a_copy():
    rng = np.random.RandomState(0)
    target = rng.randint(0, 4, 3000)
    noise = rng.randn(3000, 3)
    unrelated = blocks.leakage_from_codes(noise[:2000], target[:2000], noise[2000:], target[2000:])
    assert unrelated["chance"] == pytest.approx(np.bincount(target[2000:]).max() / 1000)
    for name in ("lr", "gbt"):
        assert abs(unrelated[name]["normalised"]) < 0.06, (name, unrelated[name])
    assert unrelated["mi_ratio"] < 0.05
    copy = np.hstack([target[:, None] + 0.01 * rng.randn(3000, 1), noise])
    leaked = blocks.leakage_from_codes(copy[:2000], target[:2000], copy[2000:], target[2000:])
    for name in ("lr", "gbt"):
        assert leaked[name]["normalised"] > 0.97, (name, leaked[name])
    assert leaked["mi_ratio"] > 0.97


@pytest.mark.slow
def test_separated_code_scores_well_and_a_leaky_one_is_caught(factors):
    sampler = sampling.FactorSampler(factors)
    names = ["shape", "a", "b", "c"]
    clean = blocks.specified_unspecified_metrics(sampling.codes_representation(split_code(factors)), sampler, 2, [0],
                                                 names, fast=True, progress=None)
    assert clean["blocks"]["s"] == {"code_dims": [0, 2], "factors": ["shape"]}
    assert clean["blocks"]["z"] == {"code_dims": [2, 5], "factors": ["a", "b", "c"]}
    # One specified factor: the metrics that need two or more are undefined, the others are computed.
    s_scores = clean["s_block"]["disentanglement"]
    assert all(s_scores[name] is None for name in blocks.NEEDS_TWO_FACTORS)
    assert s_scores["dci/informativeness"] > 0.95 and s_scores["explicitness"] > 0.95
    assert s_scores["mig"] < 0.2  # s holds shape twice: the gap between its two dims is small (as for a duplicate)
    z_scores = clean["z_block"]["disentanglement"]
    assert z_scores["mig"] > 0.7 and z_scores["dci/disentanglement"] > 0.8 and z_scores["beta_vae"] > 0.95
    assert clean["block_dci"]["mean"] > 0.95
    assert set(clean["leakage"]) == {"z->shape", "s->a", "s->b", "s->c"}
    for entry in clean["leakage"].values():
        # No information: at or below chance (the test majority share, which a classifier without information
        # does not reach on a finite test set, so the normalised score may be negative).
        assert entry["lr"]["normalised"] < 0.1 and entry["gbt"]["normalised"] < 0.1, entry

    leaky = blocks.specified_unspecified_metrics(sampling.codes_representation(split_code(factors, leak=1.0)), sampler,
                                                 2, [0], names, fast=True, progress=None)
    assert leaky["leakage"]["z->shape"]["gbt"]["normalised"] > 0.9
    assert leaky["leakage"]["z->shape"]["mi_ratio"] > clean["leakage"]["z->shape"]["mi_ratio"] + 0.2
    assert leaky["block_dci"]["per_factor"]["shape"] < clean["block_dci"]["per_factor"]["shape"]


def test_specified_unspecified_metrics_rejects_empty_blocks(factors):
    sampler = sampling.FactorSampler(factors)
    represent = sampling.codes_representation(split_code(factors))
    with pytest.raises(ValueError, match="proper subset"):
        blocks.specified_unspecified_metrics(represent, sampler, 2, [0, 1, 2, 3], fast=True, progress=None)
    with pytest.raises(ValueError, match="s_dims"):
        blocks.specified_unspecified_metrics(represent, sampler, 5, [0], fast=True, progress=None)


@pytest.mark.slow
def test_data_baseline_exposes_correlation_in_a_subset():
    # Keep only the rows where shape = a mod 3: the other factors then determine shape, and a code that holds
    # them "predicts" shape without any leakage. The data baseline shows that level.
    grid = full_product((3, 6, 8, 8))
    subset = grid[grid[:, 0] == grid[:, 1] % 3]
    result = blocks.specified_unspecified_metrics(sampling.codes_representation(split_code(subset)),
                                                  sampling.FactorSampler(subset), 2, [0], fast=True, progress=None)
    entry = result["leakage"]["z->factor_0"]
    assert entry["data_baseline"]["gbt"]["accuracy"] > 0.99 and entry["gbt"]["accuracy"] > 0.95
    clean = blocks.specified_unspecified_metrics(sampling.codes_representation(split_code(grid)),
                                                 sampling.FactorSampler(grid), 2, [0], fast=True, progress=None)
    assert clean["leakage"]["z->factor_0"]["data_baseline"]["gbt"]["normalised"] < 0.1
