"""Calibration tests of evaluation/metrics.py: scores known by construction (docs/evaluation.md Sec. 4).

Fixture as in disentanglement_lib's metric tests: 10 factors with values 1..10 used directly as the code. Unlike
the library's infinite dummy data, the fixture is a finite dataset (3,000 random rows, a subset of the 10^10
product), so the subset sampler is exercised too. DCI fits one gradient-boosted classifier per factor and class,
so its heavier cases run on 5 factors with 5 values (the bands are the same; a duplicated code then has 10 dims
and the even-split completeness is 1 - ln2/ln10, the library's own target).
"""
import numpy as np
import pytest

from evaluation import metrics, sampling

SMALL = {  # sizes for the tests: the study defaults (10,000 points) would take minutes
    "beta_vae": {"num_train": 500, "num_eval": 500, "batch_size": 16},
    "factor_vae": {"num_variance_estimate": 1000, "num_train": 1000, "num_eval": 1000, "batch_size": 16},
    "mig": {"num_train": 2000},
    "sap": {"num_train": 2000, "num_test": 1000},
    "modularity_explicitness": {"num_train": 2000, "num_test": 1000},
    "dci": {"num_train": 300, "num_test": 200},
}


def make_factors(num_rows, num_factors, num_values, seed):
    return np.random.RandomState(seed).randint(1, num_values + 1, size=(num_rows, num_factors))


def ground_truth(factors):
    return sampling.codes_representation(factors.astype(np.float64))


def zero_code(factors):
    return lambda rows: np.zeros((len(rows), factors.shape[1]))


def duplicated(factors):
    return sampling.codes_representation(np.hstack([factors, factors]).astype(np.float64))


def permuted(factors, seed=5):
    """Each sample's factor vector in a fresh random order: every dim carries every factor a bit (library test)."""
    random_state = np.random.RandomState(seed)
    return lambda rows: np.stack([random_state.permutation(row) for row in factors[rows].astype(np.float64)])


def rotated(factors, seed=1):
    """Standardised factors times a random orthogonal matrix: all information kept, every dim mixes all factors."""
    rotation, _ = np.linalg.qr(np.random.RandomState(seed).randn(factors.shape[1], factors.shape[1]))
    standard = (factors - factors.mean(axis=0)) / factors.std(axis=0)
    return sampling.codes_representation(standard @ rotation)


def headline_scores(represent, sampler):
    """The cheap metrics at test sizes (DCI separately, on the small fixture)."""
    modularity_explicitness = metrics.modularity_explicitness(represent, sampler, **SMALL["modularity_explicitness"])
    return {
        "beta_vae": metrics.beta_vae_score(represent, sampler, **SMALL["beta_vae"])["eval_accuracy"],
        "factor_vae": metrics.factor_vae_score(represent, sampler, **SMALL["factor_vae"])["eval_accuracy"],
        "mig": metrics.mig(represent, sampler, **SMALL["mig"])["discrete_mig"],
        "sap_continuous": metrics.sap(represent, sampler, continuous_factors=True, **SMALL["sap"])["SAP_score"],
        "sap_discrete": metrics.sap(represent, sampler, **SMALL["sap"])["SAP_score"],
        "modularity": modularity_explicitness["modularity_score"],
        "explicitness": modularity_explicitness["explicitness_score_test"],
    }


@pytest.fixture(scope="module")
def factors():
    return make_factors(3000, 10, 10, seed=0)


@pytest.fixture(scope="module")
def sampler(factors):
    return sampling.FactorSampler(factors)


@pytest.fixture(scope="module")
def small_factors():
    return make_factors(1500, 5, 5, seed=1)


@pytest.fixture(scope="module")
def small_sampler(small_factors):
    return sampling.FactorSampler(small_factors)


@pytest.fixture(scope="module")
def truth_scores(factors, sampler):
    return headline_scores(ground_truth(factors), sampler)


# ---------------------------------------------------------------------------------------------------
# Sampling on a subset of the factor product
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def subset_factors():
    """A 4 x 3 x 5 product with 40% of the combinations removed and factor 1 depending on factor 0."""
    random_state = np.random.RandomState(2)
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(3), np.arange(5), indexing="ij"), -1).reshape(-1, 3)
    keep = random_state.rand(len(grid)) > 0.4
    keep &= ~((grid[:, 0] == 0) & (grid[:, 1] == 2))  # like Sprites hair and sex: value 2 never occurs with 0
    rows = np.repeat(grid[keep], random_state.randint(1, 4, keep.sum()), axis=0)  # uneven group sizes
    return rows[random_state.permutation(len(rows))]


def test_sampler_index_lists(subset_factors):
    sampler = sampling.FactorSampler(subset_factors)
    for k in range(3):
        everything = np.concatenate(sampler.rows[k])
        assert np.array_equal(np.sort(everything), np.arange(len(subset_factors)))  # a partition of the rows
        for value, rows in enumerate(sampler.rows[k]):
            assert np.all(subset_factors[rows, k] == value)
            assert np.all(np.diff(rows) > 0)
    assert sampler.min_group_size() == min(len(r) for per in sampler.rows for r in per if len(r))


def test_sampler_never_leaves_the_data_and_fixes_the_factor(subset_factors):
    sampler = sampling.FactorSampler(subset_factors)
    present = {tuple(row) for row in subset_factors}
    random_state = np.random.RandomState(0)
    anchors = sampler.sample(5000, random_state)
    for k in range(3):
        partners = sampler.draw_matching(anchors, k, random_state)
        assert np.array_equal(subset_factors[partners, k], subset_factors[anchors, k])
        assert {tuple(row) for row in subset_factors[partners]} <= present
        batch = sampler.sample_fixed(k, 64, random_state)
        assert len(np.unique(subset_factors[batch, k])) == 1
        assert {tuple(row) for row in subset_factors[batch]} <= present
    # Per-point factors (the BetaVAE case): each partner agrees with its anchor on that point's factor.
    chosen = random_state.randint(3, size=len(anchors))
    partners = sampler.draw_matching(anchors, chosen, random_state)
    assert np.array_equal(subset_factors[partners, chosen], subset_factors[anchors, chosen])
    # The dependence in the data is kept: with factor 0 fixed to 0, factor 1 is never 2.
    zero_rows = np.flatnonzero(subset_factors[:, 0] == 0)
    partners = sampler.draw_matching(np.repeat(zero_rows[:1], 2000), 0, random_state)
    assert not np.any(subset_factors[partners, 1] == 2)


def test_sampler_draws_the_conditional_distribution(subset_factors):
    """Partners with factor k fixed are uniform over rows[k][v], so their other factors follow the data."""
    sampler = sampling.FactorSampler(subset_factors)
    random_state = np.random.RandomState(3)
    group = sampler.rows[2][1]
    partners = sampler.draw_matching(np.repeat(group[:1], 20000), 2, random_state)
    drawn = np.bincount(np.searchsorted(group, partners), minlength=len(group)) / 20000
    assert np.all(np.isin(partners, group))
    np.testing.assert_allclose(drawn, 1.0 / len(group), atol=0.02)


def test_factor_vae_batches_fix_one_factor(subset_factors):
    """End to end: every batch of a FactorVAE vote shares one factor's value and consists of existing rows."""
    sampler = sampling.FactorSampler(subset_factors)
    requested = []

    def spy(rows):
        requested.append(np.array(rows))
        return subset_factors[rows].astype(np.float64)

    metrics.factor_vae_score(spy, sampler, num_variance_estimate=200, num_train=50, num_eval=30, batch_size=8)
    batches = np.concatenate(requested[1:]).reshape(-1, 8)  # the first call is the variance estimate
    assert len(batches) == 80
    shares = np.array([[len(np.unique(subset_factors[b, k])) == 1 for k in range(3)] for b in batches])
    assert shares.any(axis=1).all()


def test_sampler_rejects_bad_factors():
    with pytest.raises(ValueError, match="single value"):
        sampling.FactorSampler(np.array([[0, 1], [0, 2]]))
    with pytest.raises(ValueError, match=">= 0"):
        sampling.FactorSampler(np.array([[-1, 1], [0, 2]]))
    with pytest.raises(ValueError, match="integer"):
        sampling.FactorSampler(np.array([[0.5, 1], [0.0, 2]]))
    with pytest.raises(ValueError, match="len\\(rows\\), D"):
        metrics.mig(lambda rows: np.zeros(len(rows)), sampling.FactorSampler(np.array([[0, 1], [1, 0]])), num_train=10)


# ---------------------------------------------------------------------------------------------------
# Calibration (docs/evaluation.md Sec. 4, "Calibration")
# ---------------------------------------------------------------------------------------------------

def test_ground_truth_scores_high(truth_scores):
    for name in ("beta_vae", "factor_vae", "mig", "sap_continuous", "modularity", "explicitness"):
        assert 0.9 <= truth_scores[name] <= 1.0, (name, truth_scores[name])
    # The discrete SAP (the study's setting) cannot reach 1 on 10-valued factors: a linear one-vs-rest
    # classifier on one dim picks out few classes, and the runner-up dim still scores chance (0.1).
    assert 0.1 <= truth_scores["sap_discrete"] <= 0.3


def test_ground_truth_dci(factors, sampler):
    scores = metrics.dci(ground_truth(factors), sampler, **SMALL["dci"])
    assert 0.9 <= scores["disentanglement"] <= 1.0
    assert 0.9 <= scores["completeness"] <= 1.0
    assert scores["informativeness_test"] >= 0.9


def test_zero_code_scores_low(factors, sampler, small_factors, small_sampler):
    scores = headline_scores(zero_code(factors), sampler)
    for name in ("mig", "factor_vae", "sap_continuous", "sap_discrete"):
        assert scores[name] <= 0.2, (name, scores[name])
    assert scores["modularity"] == 0.0
    assert scores["explicitness"] == pytest.approx(0.5)  # constant probabilities: chance ROC-AUC
    factor_vae = metrics.factor_vae_score(zero_code(factors), sampler, **SMALL["factor_vae"])
    assert factor_vae["num_active_dims"] == 0 and factor_vae["eval_accuracy"] == 0.0
    dci = metrics.dci(zero_code(small_factors), small_sampler, **SMALL["dci"])
    assert dci["disentanglement"] == pytest.approx(0.0, abs=1e-7)
    assert dci["completeness"] == pytest.approx(0.0, abs=1e-7)


def test_permuted_factors_dci_low(small_factors, small_sampler):
    scores = metrics.dci(permuted(small_factors), small_sampler, **SMALL["dci"])
    assert scores["disentanglement"] <= 0.2
    assert scores["completeness"] <= 0.2


def test_duplicated_code(factors, sampler, small_factors, small_sampler):
    scores = headline_scores(duplicated(factors), sampler)
    assert scores["mig"] <= 0.1  # the two copies have the same MI: no gap
    assert scores["sap_continuous"] <= 0.2 and scores["sap_discrete"] <= 0.2
    assert 0.9 <= scores["modularity"] <= 1.0  # each copy still carries one factor
    dci = metrics.dci(duplicated(small_factors), small_sampler, **SMALL["dci"])
    assert 0.9 <= dci["disentanglement"] <= 1.0
    assert 0.6 <= dci["completeness"] <= 0.8  # 1 - ln2/ln10 = 0.70 for an even split over the two copies


def test_rotated_factors_score_lower(factors, sampler, truth_scores, small_factors, small_sampler):
    scores = headline_scores(rotated(factors), sampler)
    for name in ("beta_vae", "factor_vae", "mig", "sap_continuous", "modularity"):
        assert scores[name] < truth_scores[name] - 0.1, (name, scores[name], truth_scores[name])
    dci = metrics.dci(rotated(small_factors), small_sampler, **SMALL["dci"])
    assert dci["disentanglement"] < 0.5 and dci["completeness"] < 0.5
    assert dci["informativeness_train"] >= 0.9  # the information is all there, only spread over dims


# ---------------------------------------------------------------------------------------------------
# Values known by hand
# ---------------------------------------------------------------------------------------------------

def test_dci_importance_matrices():
    diagonal = np.diag(5.0 * np.ones(5))
    assert metrics.dci_disentanglement(diagonal) == pytest.approx(1.0)
    assert metrics.dci_completeness(diagonal) == pytest.approx(1.0)
    one_code_two_factors = np.hstack([diagonal, diagonal])  # 5 codes x 10 factors
    assert metrics.dci_disentanglement(one_code_two_factors) == pytest.approx(1 - np.log(2) / np.log(10))
    assert metrics.dci_completeness(one_code_two_factors) == pytest.approx(1.0)
    two_codes_per_factor = np.vstack([diagonal, diagonal])  # 10 codes x 5 factors
    assert metrics.dci_disentanglement(two_codes_per_factor) == pytest.approx(1.0)
    assert metrics.dci_completeness(two_codes_per_factor) == pytest.approx(1 - np.log(2) / np.log(10))
    zero = np.zeros((10, 10))
    assert metrics.dci_disentanglement(zero) == pytest.approx(0.0, abs=1e-7)
    assert metrics.dci_completeness(zero) == pytest.approx(0.0, abs=1e-7)
    # Codes that carry nothing get no weight (library test "diagonal_empty_codes").
    assert metrics.dci_disentanglement(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])) == pytest.approx(1.0)


def test_mig_by_hand():
    """Factors a, b independent fair bits; code 0 = a, code 1 = a AND b.

    I(c0; a) = ln 2, I(c0; b) = 0; I(c1; a) = I(c1; b) = H(1/4) - (1/2) ln 2 =: m. Per factor:
    a: (ln 2 - m) / ln 2, b: (m - 0) / ln 2, so the MIG is exactly 1/2 whatever m is.
    """
    a, b = np.array([0, 0, 1, 1] * 25), np.array([0, 1, 0, 1] * 25)
    codes = np.stack([a, a & b], axis=1).astype(np.float64)
    m = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25)) - 0.5 * np.log(2)
    result = metrics.mig_from_codes(codes, np.stack([a, b], axis=1))
    np.testing.assert_allclose(result["discrete_mig_per_factor"], [1 - m / np.log(2), m / np.log(2)])
    assert result["discrete_mig"] == pytest.approx(0.5)


def test_mutual_information_matches_a_contingency_table():
    """Parity of the sklearn-based MI matrix and entropies with a plug-in estimate computed from counts."""
    random_state = np.random.RandomState(8)
    factors = random_state.randint(0, 4, size=(1000, 2))
    codes = np.stack([factors[:, 0] + random_state.randint(0, 2, 1000), random_state.randint(0, 3, 1000)], 1)

    def plug_in(u, v):
        joint = np.zeros((u.max() + 1, v.max() + 1))
        np.add.at(joint, (u, v), 1.0 / len(u))
        outer = joint.sum(axis=1, keepdims=True) * joint.sum(axis=0, keepdims=True)
        present = joint > 0
        return np.sum(joint[present] * np.log(joint[present] / outer[present]))

    expected = [[plug_in(codes[:, d], factors[:, k]) for k in range(2)] for d in range(2)]
    np.testing.assert_allclose(metrics.discrete_mutual_info(codes, factors), expected, atol=1e-12)
    np.testing.assert_allclose(metrics.discrete_entropy(factors), [plug_in(f, f) for f in factors.T], atol=1e-12)


def test_histogram_bins_like_the_library():
    # Edges 0, 1, 2, 3, 4; digitising against all but the last puts the maximum in bin 4, not in a bin 5.
    binned = metrics.histogram_discretize(np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [3.5]]), num_bins=4)
    assert binned[:, 0].tolist() == [1, 2, 3, 4, 4, 4]


def test_factor_vae_by_definition():
    # Codes [f0, f1, constant]: the constant dim is pruned (std < 0.05), fixing f_k zeroes dim k's variance,
    # so every vote is correct; the library would report 3 active dims.
    factors = make_factors(3000, 2, 10, seed=4)
    codes = np.hstack([factors, np.full((3000, 1), 7.0)])
    scores = metrics.factor_vae_score(sampling.codes_representation(codes), sampling.FactorSampler(factors),
                                      **SMALL["factor_vae"])
    assert scores["train_accuracy"] == 1.0 and scores["eval_accuracy"] == 1.0
    assert scores["num_active_dims"] == 2 and scores["num_active_dims_library"] == 3
    # Three factors, codes [f0, f1]: votes with f0 or f1 fixed are always right; votes with f2 fixed land on a
    # dim that the classifier gives to f0 or f1, so they are always wrong. The score is the share of votes
    # that fix f0 or f1: 2/3 up to binomial noise (sd 0.015 for 1,000 votes).
    factors = make_factors(3000, 3, 10, seed=5)
    scores = metrics.factor_vae_score(sampling.codes_representation(factors[:, :2].astype(float)),
                                      sampling.FactorSampler(factors), **SMALL["factor_vae"])
    assert scores["eval_accuracy"] == pytest.approx(2 / 3, abs=0.05)
    assert scores["train_accuracy"] == pytest.approx(2 / 3, abs=0.05)


def test_modularity_by_hand():
    diagonal = np.diag(5.0 * np.ones(5))
    assert metrics.modularity_from_mutual_info(diagonal) == pytest.approx(1.0)
    assert metrics.modularity_from_mutual_info(np.hstack([diagonal, diagonal])) == pytest.approx(1 - 1 / 9)
    assert metrics.modularity_from_mutual_info(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])) == pytest.approx(2 / 3)
    assert metrics.modularity_from_mutual_info(np.zeros((4, 3))) == 0.0


def test_unsupervised_against_closed_forms():
    random_state = np.random.RandomState(6)
    x, y, z = random_state.randn(3, 5000)
    codes = np.stack([x, 0.6 * x + 0.8 * y, 2.0 * z], axis=1)
    scores = metrics.unsupervised_from_codes(codes)
    covariance = np.cov(codes, rowvar=False)
    correlation = np.corrcoef(codes, rowvar=False)
    # Total correlation of a Gaussian = -1/2 log det(correlation matrix).
    assert scores["gaussian_total_correlation"] == pytest.approx(-0.5 * np.log(np.linalg.det(correlation)))
    # diag(S) S is similar to the symmetric D^1/2 S D^1/2, so tr sqrtm = sum of square roots of its eigenvalues.
    root_diagonal = np.sqrt(np.diag(covariance))
    eigenvalues = np.linalg.eigvalsh(root_diagonal[:, None] * covariance * root_diagonal[None, :])
    expected = 2 * np.trace(covariance) - 2 * np.sum(np.sqrt(eigenvalues))
    assert scores["gaussian_wasserstein_correlation"] == pytest.approx(expected, rel=1e-6)
    assert scores["gaussian_wasserstein_correlation_norm"] == pytest.approx(expected / np.trace(covariance))
    independent = metrics.unsupervised_from_codes(random_state.randn(5000, 3))
    assert independent["gaussian_total_correlation"] < 0.01 and independent["mutual_info_score"] < 0.1
    assert scores["mutual_info_score"] > independent["mutual_info_score"]


# ---------------------------------------------------------------------------------------------------
# DCI in parallel, and the whole suite
# ---------------------------------------------------------------------------------------------------

def test_dci_parallel_equals_serial(small_factors):
    sampler = sampling.FactorSampler(small_factors[:, :3])
    represent = duplicated(small_factors[:, :3])  # ties between the copies: the case where seeding matters
    serial = metrics.dci(represent, sampler, num_train=200, num_test=100, n_jobs=1)
    threads = metrics.dci(represent, sampler, num_train=200, num_test=100, n_jobs=2, backend="threading")
    processes = metrics.dci(represent, sampler, num_train=200, num_test=100, n_jobs=2, backend="loky")
    assert serial == threads == processes


def test_all_metrics_runs_every_metric():
    factors = make_factors(400, 2, 3, seed=7)
    lines = []
    results = metrics.all_metrics(ground_truth(factors), sampling.FactorSampler(factors), seed=0, fast=True,
                             progress=lines.append)
    assert len(lines) == len(metrics.METRICS) and all(line.startswith("[metrics] ") for line in lines)
    assert set(results["seconds"]) == set(metrics.METRICS)
    assert set(results["disentanglement"]) == {"beta_vae", "factor_vae", "mig", "sap", "modularity",
                                               "explicitness", "dci/disentanglement", "dci/completeness",
                                               "dci/informativeness"}
    assert results["settings"]["dci"] == {"num_train": 1000, "num_test": 500}
    assert results["disentanglement"]["dci/disentanglement"] > 0.9
    assert results["factor_vae"]["num_active_dims"] == 2
    again = metrics.all_metrics(ground_truth(factors), sampling.FactorSampler(factors), seed=0, fast=True,
                                progress=None)
    assert again["disentanglement"] == results["disentanglement"]  # one seed, one answer
