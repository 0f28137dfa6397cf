"""The disentanglement_lib metric suite in NumPy and scikit-learn, for data that may be a subset of the factor product.

Definitions follow Locatello et al. 2019, "Challenging Common Assumptions in the Unsupervised Learning of
Disentangled Representations" (ICML), and its library google-research/disentanglement_lib, with the study
defaults of `unsupervised_study_v1` (../shared/docs/evaluation.md, Sec. 4):

    metric                     paper                          reported keys (library names)
    beta_vae_score             Higgins et al. 2017 (ICLR)     train_accuracy, eval_accuracy
    factor_vae_score           Kim & Mnih 2018 (ICML)         train_accuracy, eval_accuracy, num_active_dims
    mig                        Chen et al. 2018 (NeurIPS)     discrete_mig
    dci                        Eastwood & Williams 2018       disentanglement, completeness, informativeness_*
    sap                        Kumar et al. 2018 (ICLR)       SAP_score
    modularity_explicitness    Ridgeway & Mozer 2018          modularity_score, explicitness_score_*
    unsupervised               Locatello et al. 2019          gaussian_total_correlation, ..., mutual_info_score

Usage:
    sampler = FactorSampler(dataset_factors)                   # (N, K) integer factor matrix
    represent = lambda rows: encode(model, images[rows])       # or codes_representation(codes)
    results = all_metrics(represent, sampler, seed=0)          # fast=True: the in-training preset
    results = score_codes(codes, factors, seed=0)              # given (N, D) codes and (N, K) factors
    python eval_latents.py --codes FILE.npz [--out FILE.json] [--fast] [--seed N]   # score_codes_file

Conventions. A representation is a callable `represent(rows) -> codes` that maps integer row indices into the
dataset to a (len(rows), D) array (the encoder mean for a model). Codes are (points, dims) and factors are
(points, factors), the transpose of the library's layout. Each metric function takes a `seed` and draws
everything from one `numpy.random.RandomState(seed)`, as disentanglement_lib does per metric; array-level
functions (`*_from_codes`) compute the same scores on codes that are already sampled.

Subsets of the factor product (evaluation.md, "Subsets of the factorial product"): points are always whole
dataset rows drawn uniformly, never factors drawn independently, and "fix factor k" draws rows from
`rows[k][v]`. On a full product this gives the library's distribution; on a subset the non-fixed factors follow
the data's conditional distribution given factor k = v.

Known differences from the 2019 numbers (all intended, see the docstrings): current sklearn defaults (lbfgs
multinomial LogisticRegression where 2019 sklearn used liblinear one-vs-rest; LinearSVC dual="auto"); seeded
GBT trees in DCI (grown by boosted_trees.py, which reproduces sklearn's GradientBoostingClassifier tree for
tree); the true active-dimension count in the FactorVAE score; guards where the library divides by zero.
Scores depend on the sklearn version, so record it with every result.

Parity: benchmarks/metrics_parity.py runs disentanglement_lib's own metric functions (on the same NumPy,
SciPy and scikit-learn, loaded from its unpacked source) beside these at the study sizes. On three 10-dim
codes over a 3 x 6 x 10 x 8 x 16 product every headline score agreed within 0.01 (largest difference 0.0094,
the FactorVAE score on a linear mixing): what remains is sampling noise, since the two draw different points
from the same distribution. The current-sklearn defaults above apply to both sides alike there.
"""
import time

import numpy as np
import scipy.linalg
import scipy.stats
from sklearn import ensemble, linear_model, metrics, svm
from sklearn.utils import parallel

import boosted_trees

# Rows per call of `represent`: large enough to keep an encoder busy, small enough that the images of one call
# (16,384 dSprites images are 268 MB as float32) and the interventional metrics' codes stay in memory.
ENCODE_CHUNK_ROWS = 16384

# Study defaults (unsupervised_study_v1) and the fast in-training preset (evaluation.md, Sec. 4). The keys are
# the keyword arguments of the metric functions below.
STUDY_SETTINGS = {
    "beta_vae": {"num_train": 10000, "num_eval": 5000, "batch_size": 64},
    "factor_vae": {"num_variance_estimate": 10000, "num_train": 10000, "num_eval": 5000, "batch_size": 64,
                   "prune_threshold": 0.05},
    "mig": {"num_train": 10000, "num_bins": 20},
    "dci": {"num_train": 10000, "num_test": 5000},
    "sap": {"num_train": 10000, "num_test": 5000, "continuous_factors": False},
    "modularity_explicitness": {"num_train": 10000, "num_test": 5000, "num_bins": 20},
    "unsupervised": {"num_train": 10000, "num_bins": 20},
}
FAST_SETTINGS = {
    "beta_vae": {"num_train": 1000, "num_eval": 500, "batch_size": 64},  # ours
    "factor_vae": {"num_variance_estimate": 1000, "num_train": 700, "num_eval": 350, "batch_size": 64,
                   "prune_threshold": 0.05},  # these from the disent library's fast settings
    "mig": {"num_train": 2000, "num_bins": 20},
    "dci": {"num_train": 1000, "num_test": 500},
    "sap": {"num_train": 2000, "num_test": 1000, "continuous_factors": False},
    "modularity_explicitness": {"num_train": 2000, "num_test": 1000, "num_bins": 20},
    "unsupervised": {"num_train": 2000, "num_bins": 20},
}


# ---------------------------------------------------------------------------------------------------------------
# Sampling dataset rows, also on subsets of the factor product
# ---------------------------------------------------------------------------------------------------------------

class FactorSampler:
    """Draws dataset rows uniformly, or rows that share one factor's value, by index lists.

    `rows[k][v]` lists (in increasing order) the rows whose factor k equals v; it is empty for values that do
    not occur. Mixed-radix index arithmetic would be wrong on a subset of the factor product, so the sampler
    never builds factor vectors: every draw is an existing row, and a draw "with factor k fixed to v" is a
    uniform draw (with replacement) from `rows[k][v]`.
    """

    def __init__(self, factors):
        factors = np.asarray(factors)
        if factors.ndim != 2 or len(factors) == 0:
            raise ValueError(f"factors must be a non-empty (N, K) array, got shape {factors.shape}")
        if not np.issubdtype(factors.dtype, np.integer):
            if not np.all(np.isfinite(factors)) or not np.all(factors == np.round(factors)):
                raise ValueError("factors must be integer class indices; map continuous factors to their "
                                 "value indices first (e.g. with np.unique(..., return_inverse=True))")
        factors = factors.astype(np.int64)
        if factors.min() < 0:
            raise ValueError(f"factor values must be >= 0, got minimum {factors.min()}")
        constant = [k for k in range(factors.shape[1]) if np.all(factors[:, k] == factors[0, k])]
        if constant:
            raise ValueError(f"factors {constant} take a single value in the data; drop them (their entropy is 0, "
                             "so MIG divides by zero, and fixing them fixes nothing)")
        self.factors = factors
        self.num_factors = factors.shape[1]
        # Per factor: the rows sorted by value (stable, so each group stays in increasing row order), and where
        # each value's group starts and how long it is. `rows[k][v]` are views into these arrays, and the
        # vectorised draws below index them directly.
        width = int(factors.max()) + 1
        self._order = np.stack([np.argsort(column, kind="stable") for column in factors.T])
        self._count = np.stack([np.bincount(column, minlength=width) for column in factors.T])
        self._start = np.concatenate([np.zeros((self.num_factors, 1), np.int64),
                                      np.cumsum(self._count, axis=1)[:, :-1]], axis=1)
        self.rows = [[self._order[k, self._start[k, v]:self._start[k, v] + self._count[k, v]]
                      for v in range(int(factors[:, k].max()) + 1)] for k in range(self.num_factors)]

    def __len__(self):
        return len(self.factors)

    def min_group_size(self):
        """Size of the smallest non-empty `rows[k][v]`: how thin the conditional draws get (record it)."""
        return int(self._count[self._count > 0].min())

    def sample(self, size, random_state):
        """Rows drawn uniformly (with replacement) from the dataset; `size` may be an int or a shape."""
        return random_state.randint(len(self.factors), size=size)

    def draw_matching(self, rows, factor, random_state):
        """For each row r, a row drawn uniformly from `rows[factor][factors[r, factor]]` (r itself included).

        `factor` is an int or an integer array broadcast against `rows`. This is the BetaVAE partner of r and,
        for a batch of copies of one anchor row, a FactorVAE batch with the factor fixed.
        """
        rows = np.asarray(rows)
        factor = np.broadcast_to(np.asarray(factor), rows.shape)
        value = self.factors[rows, factor]
        position = self._start[factor, value] + random_state.randint(0, self._count[factor, value])
        return self._order[factor, position]

    def sample_fixed(self, factor, size, random_state):
        """`size` rows sharing the value of `factor` taken from one uniformly drawn row (a FactorVAE batch)."""
        anchor = self.sample(1, random_state)
        return self.draw_matching(np.repeat(anchor, size), factor, random_state)


def codes_representation(codes):
    """A `represent(rows)` callable that looks rows up in a precomputed (N, D) code array (dataset order)."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be an (N, D) array in dataset row order, got shape {codes.shape}")

    def represent(rows):
        return codes[rows]
    return represent


def _encode(represent, rows):
    """Codes of `rows` (any shape) as float64, shape rows.shape + (D,), calling `represent` in chunks."""
    rows = np.asarray(rows)
    flat = rows.reshape(-1)
    parts = []
    for start in range(0, len(flat), ENCODE_CHUNK_ROWS):
        chunk = flat[start:start + ENCODE_CHUNK_ROWS]
        codes = np.asarray(represent(chunk), dtype=np.float64)
        if codes.ndim != 2 or len(codes) != len(chunk):
            raise ValueError(f"represent(rows) must return a (len(rows), D) array; got shape {codes.shape} "
                             f"for {len(chunk)} rows")
        parts.append(codes)
    codes = np.concatenate(parts)
    return codes.reshape(rows.shape + codes.shape[1:])


def _random_state(seed):
    """One RandomState per metric call, as disentanglement_lib's evaluate does (an existing one is used as is)."""
    return seed if isinstance(seed, np.random.RandomState) else np.random.RandomState(seed)


def sample_codes_and_factors(represent, sampler, num_points, random_state):
    """i.i.d. (codes, factors) of `num_points` uniformly drawn rows: the input of the observational metrics.

    The library draws in batches of 16 (factors, then images); drawing all rows at once only changes which
    points a given seed picks, not their distribution.
    """
    rows = sampler.sample(num_points, random_state)
    return _encode(represent, rows), sampler.factors[rows]


# ---------------------------------------------------------------------------------------------------------------
# Binning and discrete mutual information (MIG, modularity, unsupervised)
# ---------------------------------------------------------------------------------------------------------------

def histogram_discretize(codes, num_bins=20):
    """Bin each code dimension into `num_bins` equal-width bins over its own range.

    As in disentanglement_lib: the edges are np.histogram's and values are digitised against all edges but
    the last, so the labels run from 1 to num_bins (the maximum falls in the last bin).
    """
    codes = np.asarray(codes)
    binned = np.empty(codes.shape, dtype=np.int64)
    for d in range(codes.shape[1]):
        edges = np.histogram(codes[:, d], num_bins)[1]
        binned[:, d] = np.digitize(codes[:, d], edges[:-1])
    return binned


def discrete_mutual_info(binned_codes, factors):
    """(D, K) matrix of mutual information (nats) between each binned code dim and each factor (sklearn)."""
    return np.array([[metrics.mutual_info_score(factors[:, k], binned_codes[:, d])
                      for k in range(factors.shape[1])] for d in range(binned_codes.shape[1])])


def discrete_entropy(factors):
    """Entropy (nats) of each factor, computed as its mutual information with itself (as the library does)."""
    return np.array([metrics.mutual_info_score(factors[:, k], factors[:, k]) for k in range(factors.shape[1])])


# ---------------------------------------------------------------------------------------------------------------
# Interventional metrics: BetaVAE score and FactorVAE score
# ---------------------------------------------------------------------------------------------------------------

def _beta_vae_points(represent, sampler, num_points, batch_size, random_state):
    """Features and labels of the BetaVAE classifier, computed in chunks of points to bound memory."""
    labels = random_state.randint(sampler.num_factors, size=num_points)
    first = sampler.sample((num_points, batch_size), random_state)
    second = sampler.draw_matching(first, labels[:, None], random_state)
    points_per_chunk = max(1, ENCODE_CHUNK_ROWS // (2 * batch_size))
    features = []
    for start in range(0, num_points, points_per_chunk):
        part = slice(start, start + points_per_chunk)
        difference = _encode(represent, first[part]) - _encode(represent, second[part])
        features.append(np.mean(np.abs(difference), axis=1))
    return np.concatenate(features), labels


def beta_vae_score(represent, sampler, seed=0, num_train=10000, num_eval=5000, batch_size=64):
    """BetaVAE score (Higgins et al. 2017, "beta-VAE: Learning basic visual concepts ...", Sec. 3).

    Per point: a factor k drawn uniformly; `batch_size` pairs of rows that agree on factor k (the second row of
    each pair drawn from the rows sharing the first one's value of k); the feature is the mean over pairs of
    |r(x1) - r(x2)| per code dim and the label is k. A LogisticRegression with sklearn defaults is trained on
    `num_train` points and its accuracy on `num_eval` new points is the score (the library's sklearn variant,
    beta_vae.compute_beta_vae_sklearn).

    Note: the library passes its RandomState to LogisticRegression; the default lbfgs solver ignores it, so we
    leave it out. Today's default is multinomial lbfgs; the sklearn of 2019 used liblinear one-vs-rest.
    """
    random_state = _random_state(seed)
    train_x, train_y = _beta_vae_points(represent, sampler, num_train, batch_size, random_state)
    model = linear_model.LogisticRegression()
    model.fit(train_x, train_y)
    eval_x, eval_y = _beta_vae_points(represent, sampler, num_eval, batch_size, random_state)
    return {"train_accuracy": float(np.mean(model.predict(train_x) == train_y)),
            "eval_accuracy": float(np.mean(model.predict(eval_x) == eval_y))}


def _factor_vae_votes(represent, sampler, num_votes, batch_size, random_state, global_variances, active):
    """(K, D) vote counts: votes[k, d] = how often dim d had the smallest normalised variance with k fixed."""
    factor_index = random_state.randint(sampler.num_factors, size=num_votes)
    anchors = sampler.sample(num_votes, random_state)
    batches = sampler.draw_matching(np.repeat(anchors[:, None], batch_size, axis=1), factor_index[:, None],
                                    random_state)
    active_dims = np.flatnonzero(active)
    votes = np.zeros((sampler.num_factors, len(global_variances)), dtype=np.int64)
    votes_per_chunk = max(1, ENCODE_CHUNK_ROWS // batch_size)
    for start in range(0, num_votes, votes_per_chunk):
        part = slice(start, start + votes_per_chunk)
        local_variances = np.var(_encode(represent, batches[part]), axis=1, ddof=1)
        # The argmin runs over the active dims only and is mapped back to the full dim index. The library keeps
        # the index into the active subset instead; that relabels the columns and leaves the score unchanged.
        argmin = active_dims[np.argmin(local_variances[:, active] / global_variances[active], axis=1)]
        np.add.at(votes, (factor_index[part], argmin), 1)
    return votes


def factor_vae_score(represent, sampler, seed=0, num_variance_estimate=10000, num_train=10000, num_eval=5000,
                     batch_size=64, prune_threshold=0.05):
    """FactorVAE score (Kim & Mnih 2018, "Disentangling by Factorising", Sec. 4).

    Global variance (ddof 1) of each code dim over `num_variance_estimate` uniformly drawn rows; dims with
    std >= `prune_threshold` are active (the study uses 0.05; the library's code default is 0). Per vote: a
    factor k drawn uniformly, `batch_size` rows sharing factor k's value (taken from one random row), the local
    variance (ddof 1) of each active dim divided by its global variance, and one vote for (k, argmin dim). The
    majority-vote classifier maps each dim to its most-voted factor in the `num_train` training votes; the score
    is the share of the `num_eval` evaluation votes it classifies correctly. No active dim: all scores are 0.

    `num_active_dims` is the true number of active dims; `num_active_dims_library` is what disentanglement_lib
    reports (the length of its boolean mask, i.e. all dims).
    """
    random_state = _random_state(seed)
    variance_rows = sampler.sample(num_variance_estimate, random_state)
    global_variances = np.var(_encode(represent, variance_rows), axis=0, ddof=1)
    active = np.sqrt(global_variances) >= prune_threshold
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0, "num_active_dims_library": 0}
    train_votes = _factor_vae_votes(represent, sampler, num_train, batch_size, random_state, global_variances,
                                    active)
    classifier = np.argmax(train_votes, axis=0)  # the factor each dim votes for most often
    dims = np.arange(train_votes.shape[1])
    eval_votes = _factor_vae_votes(represent, sampler, num_eval, batch_size, random_state, global_variances,
                                   active)
    return {"train_accuracy": float(train_votes[classifier, dims].sum() / train_votes.sum()),
            "eval_accuracy": float(eval_votes[classifier, dims].sum() / eval_votes.sum()),
            "num_active_dims": int(active.sum()),
            "num_active_dims_library": int(len(active))}


# ---------------------------------------------------------------------------------------------------------------
# MIG
# ---------------------------------------------------------------------------------------------------------------

def mig_from_codes(codes, factors, num_bins=20):
    """Mutual Information Gap (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs", Sec. 5).

    Each code dim is binned into `num_bins` equal-width bins; I(code_d; factor_k) and H(factor_k) are plug-in
    estimates in nats (sklearn mutual_info_score). Per factor: (largest MI - second largest MI) / H(factor);
    the score is the mean over factors (disentanglement_lib's discrete MIG). With a single code dim the second
    MI is taken as 0 (the library would fail).
    """
    mutual_info = discrete_mutual_info(histogram_discretize(codes, num_bins), factors)
    entropy = discrete_entropy(factors)
    top = np.sort(mutual_info, axis=0)[::-1]
    second = top[1] if len(top) > 1 else np.zeros_like(top[0])
    per_factor = (top[0] - second) / entropy
    return {"discrete_mig": float(np.mean(per_factor)), "discrete_mig_per_factor": per_factor.tolist()}


def mig(represent, sampler, seed=0, num_train=10000, num_bins=20):
    """MIG on `num_train` uniformly drawn rows; see `mig_from_codes`."""
    codes, factors = sample_codes_and_factors(represent, sampler, num_train, _random_state(seed))
    return mig_from_codes(codes, factors, num_bins)


# ---------------------------------------------------------------------------------------------------------------
# DCI
# ---------------------------------------------------------------------------------------------------------------

def _fit_factor_gbt(train_codes, train_factor, test_codes, test_factor, tree_seed, sklearn_trees=False):
    """One factor's GradientBoostingClassifier (sklearn defaults): |importances|, train and test accuracy.

    By default the model is `boosted_trees.GradientBoostedTrees`, which grows the same trees as sklearn's
    GradientBoostingClassifier (same splits, tie-breaking, random feature order and floating-point sums:
    bit-identical importances and predictions unless the codes have tied values that are not repeated rows, see
    its docstring) about 3x faster per tree (benchmarks/boosted_trees_speed.py).
    `sklearn_trees=True` fits sklearn's own class instead.
    """
    if sklearn_trees:
        model = ensemble.GradientBoostingClassifier(random_state=tree_seed)
    else:
        model = boosted_trees.GradientBoostedTrees(random_state=tree_seed)
    model.fit(train_codes, train_factor)
    return (np.abs(model.feature_importances_),
            float(np.mean(model.predict(train_codes) == train_factor)),
            float(np.mean(model.predict(test_codes) == test_factor)))


def dci_importance(train_codes, train_factors, test_codes, test_factors, tree_seeds=None, n_jobs=2,
                   backend=None, sklearn_trees=False):
    """(D, K) importance matrix of gradient-boosted trees, and the train and test accuracy per factor.

    The K classifiers are independent, so they are fitted in parallel by `n_jobs` workers: processes (joblib's
    loky) for `boosted_trees`, whose many short NumPy calls would contend for the GIL in threads (32.2 s in
    threads, 24.4 s in two processes for the study-size DCI on linear_mix), threads for sklearn's trees, whose
    builder runs without the GIL. `backend` overrides the choice. Factors with more classes (more trees) are
    dispatched first, which balances the workers on dSprites-like factor sizes.

    The trees visit features in a random order, which breaks ties between equally good splits (for a
    duplicated code it decides which copy gets the importance). The library leaves random_state=None, i.e.
    numpy's global RNG: its values then change from run to run, and parallel workers would draw from it in a
    racy order. `tree_seeds` (one int per factor) makes every factor's fit reproducible and the parallel
    result identical to the serial one; it is the same algorithm with a seeded stream.
    """
    num_factors = train_factors.shape[1]
    if tree_seeds is None:
        tree_seeds = [None] * num_factors
    largest_first = sorted(range(num_factors), key=lambda k: -len(np.unique(train_factors[:, k])))
    if backend is None:
        backend = "threading" if sklearn_trees or n_jobs == 1 else "loky"
    fits = parallel.Parallel(n_jobs=n_jobs, backend=backend)(
        parallel.delayed(_fit_factor_gbt)(train_codes, train_factors[:, k], test_codes, test_factors[:, k],
                                          tree_seeds[k], sklearn_trees)
        for k in largest_first)
    fits = dict(zip(largest_first, fits))
    importance = np.stack([fits[k][0] for k in range(num_factors)], axis=1)
    train_accuracy = np.array([fits[k][1] for k in range(num_factors)])
    test_accuracy = np.array([fits[k][2] for k in range(num_factors)])
    return importance, train_accuracy, test_accuracy


def dci_disentanglement(importance):
    """D of Eastwood & Williams 2018: sum_i rho_i (1 - H_K(P_i.)), rho_i = row share of total importance.

    P_i. is row i of the (codes x factors) importance matrix normalised to sum 1 and H_K the entropy in base K,
    computed with +1e-11 on every entry as in the library. An all-zero matrix gets uniform weights (score 0).
    """
    importance = np.asarray(importance, dtype=np.float64)
    per_code = 1.0 - scipy.stats.entropy(importance.T + 1e-11, base=importance.shape[1])
    weights = np.ones_like(importance) if importance.sum() == 0.0 else importance
    return float(np.sum(per_code * weights.sum(axis=1) / weights.sum()))


def dci_completeness(importance):
    """C of Eastwood & Williams 2018: the same as D on the columns (factors), entropy in base D (codes)."""
    importance = np.asarray(importance, dtype=np.float64)
    per_factor = 1.0 - scipy.stats.entropy(importance + 1e-11, base=importance.shape[0])
    weights = np.ones_like(importance) if importance.sum() == 0.0 else importance
    return float(np.sum(per_factor * weights.sum(axis=0) / weights.sum()))


def dci_from_codes(train_codes, train_factors, test_codes, test_factors, tree_seeds=None, n_jobs=2,
                   backend=None, sklearn_trees=False):
    """DCI (Eastwood & Williams 2018, "A Framework for the Quantitative Evaluation of Disentangled Representations").

    One GradientBoostingClassifier per factor on the codes; R = |feature_importances_| (codes x factors) gives
    disentanglement D and completeness C (see `dci_disentanglement`, `dci_completeness`). Informativeness is
    the mean classification accuracy over factors (the library names these variables *_err, but they are
    accuracies), on the training and on the test points.
    """
    importance, train_accuracy, test_accuracy = dci_importance(
        train_codes, train_factors, test_codes, test_factors, tree_seeds, n_jobs, backend, sklearn_trees)
    return {"disentanglement": dci_disentanglement(importance),
            "completeness": dci_completeness(importance),
            "informativeness_train": float(np.mean(train_accuracy)),
            "informativeness_test": float(np.mean(test_accuracy)),
            "informativeness_test_per_factor": test_accuracy.tolist(),
            "importance_matrix": importance.tolist()}


def dci(represent, sampler, seed=0, num_train=10000, num_test=5000, n_jobs=2, backend=None,
        seed_trees=True, sklearn_trees=False):
    """DCI on `num_train` / `num_test` uniformly drawn rows; see `dci_from_codes`.

    With `seed_trees` (default) one seed per factor is drawn from the metric's RandomState after the points, so
    the result is reproducible and does not depend on `n_jobs`. `seed_trees=False` is the library's
    random_state=None: the trees draw from numpy's global RNG, so wherever splits tie (duplicated or
    near-identical code dims) the importances, and D and C, vary from run to run.
    """
    random_state = _random_state(seed)
    train_codes, train_factors = sample_codes_and_factors(represent, sampler, num_train, random_state)
    test_codes, test_factors = sample_codes_and_factors(represent, sampler, num_test, random_state)
    tree_seeds = random_state.randint(2**31 - 1, size=sampler.num_factors).tolist() if seed_trees else None
    return dci_from_codes(train_codes, train_factors, test_codes, test_factors, tree_seeds, n_jobs, backend,
                          sklearn_trees)


# ---------------------------------------------------------------------------------------------------------------
# SAP
# ---------------------------------------------------------------------------------------------------------------

def sap_from_codes(train_codes, train_factors, test_codes, test_factors, continuous_factors=False):
    """SAP score (Kumar et al. 2018, "Variational Inference of Disentangled Latent Concepts ...", Sec. 3).

    Score matrix S[d, k]: for discrete factors (the study's setting) the test accuracy of
    LinearSVC(C=0.01, class_weight="balanced") trained on code dim d alone to predict factor k; for continuous
    factors the squared correlation of code d and factor k on the training points (0 if the code's variance is
    <= 1e-12). SAP = mean over factors of (largest - second largest score over dims).

    The discrete variant cannot reach 1: a single dim gives a linear one-vs-rest classifier on a line, which
    separates at most the outer classes of a many-valued factor, and the runner-up dim still scores chance.
    Ground-truth factors with 10 values score about 0.2 here, and 0.9-1 only with continuous_factors=True
    (the setting of the library's own tests).
    """
    num_codes, num_factors = train_codes.shape[1], train_factors.shape[1]
    scores = np.zeros((num_codes, num_factors))
    for d in range(num_codes):
        for k in range(num_factors):
            if continuous_factors:
                covariance = np.cov(train_codes[:, d], train_factors[:, k], ddof=1)
                if covariance[0, 0] > 1e-12:
                    scores[d, k] = covariance[0, 1] ** 2 / (covariance[0, 0] * covariance[1, 1])
            else:
                classifier = svm.LinearSVC(C=0.01, class_weight="balanced")
                classifier.fit(train_codes[:, d:d + 1], train_factors[:, k])
                scores[d, k] = np.mean(classifier.predict(test_codes[:, d:d + 1]) == test_factors[:, k])
    ordered = np.sort(scores, axis=0)
    second = ordered[-2] if num_codes > 1 else np.zeros(num_factors)
    return {"SAP_score": float(np.mean(ordered[-1] - second)), "score_matrix": scores.tolist()}


def sap(represent, sampler, seed=0, num_train=10000, num_test=5000, continuous_factors=False):
    """SAP on `num_train` / `num_test` uniformly drawn rows; see `sap_from_codes`."""
    random_state = _random_state(seed)
    train_codes, train_factors = sample_codes_and_factors(represent, sampler, num_train, random_state)
    test_codes, test_factors = sample_codes_and_factors(represent, sampler, num_test, random_state)
    return sap_from_codes(train_codes, train_factors, test_codes, test_factors, continuous_factors)


# ---------------------------------------------------------------------------------------------------------------
# Modularity and explicitness
# ---------------------------------------------------------------------------------------------------------------

def modularity_from_mutual_info(mutual_info):
    """Modularity (Ridgeway & Mozer 2018, "Learning Deep Disentangled Embeddings With the F-Statistic Loss", Sec. 3).

    Per code d with theta = max_k MI[d, k]: delta = (sum_k MI[d, k]^2 - theta^2) / (theta^2 (K - 1)) and
    modularity 1 - delta; a code with theta = 0 (no information about any factor) scores 0. Mean over codes.
    """
    squared = np.square(np.asarray(mutual_info, dtype=np.float64))
    top = squared.max(axis=1)
    informative = top > 0.0
    per_code = np.zeros(len(squared))
    # Only codes with theta > 0 are divided by theta^2; the library divides everywhere and then overwrites.
    per_code[informative] = 1.0 - ((squared[informative].sum(axis=1) - top[informative])
                                   / (top[informative] * (squared.shape[1] - 1.0)))
    return float(np.mean(per_code))


def _explicitness_per_factor(train_codes, train_factor, test_codes, test_factor):
    """Train and test ROC-AUC (one-vs-rest, macro over classes) of LogisticRegression() for one factor."""
    classifier = linear_model.LogisticRegression().fit(train_codes, train_factor)
    aucs = []
    for codes, factor in ((train_codes, train_factor), (test_codes, test_factor)):
        # The library binarises the labels with MultiLabelBinarizer, which needs the test points to contain
        # exactly the training classes. Here the indicator columns follow the classifier's classes, and classes
        # that are all-positive or all-negative in this split are left out (their AUC is undefined).
        indicator = factor[:, None] == classifier.classes_[None, :]
        defined = indicator.any(axis=0) & ~indicator.all(axis=0)
        probabilities = classifier.predict_proba(codes)
        aucs.append(metrics.roc_auc_score(indicator[:, defined].astype(int), probabilities[:, defined]))
    return aucs


def modularity_explicitness_from_codes(train_codes, train_factors, test_codes, test_factors, num_bins=20):
    """Modularity and explicitness (Ridgeway & Mozer 2018, Sec. 3).

    Modularity: on the `num_bins`-binned training codes' MI matrix (see `modularity_from_mutual_info`).
    Explicitness: codes standardised with the training mean and std (ddof 0); per factor a LogisticRegression
    with sklearn defaults; ROC-AUC of its class probabilities, one-vs-rest averaged over classes; the score is
    the mean over factors, on the training and on the test points. A constant code dim is standardised with
    std 1 instead of 0 (the library would divide by zero and the classifier would fail on NaN).
    """
    mutual_info = discrete_mutual_info(histogram_discretize(train_codes, num_bins), train_factors)
    mean = train_codes.mean(axis=0)
    std = train_codes.std(axis=0)
    std = np.where(std > 0.0, std, 1.0)
    train_standard, test_standard = (train_codes - mean) / std, (test_codes - mean) / std
    explicitness = np.array([_explicitness_per_factor(train_standard, train_factors[:, k],
                                                      test_standard, test_factors[:, k])
                             for k in range(train_factors.shape[1])])
    return {"modularity_score": modularity_from_mutual_info(mutual_info),
            "explicitness_score_train": float(np.mean(explicitness[:, 0])),
            "explicitness_score_test": float(np.mean(explicitness[:, 1])),
            "explicitness_score_test_per_factor": explicitness[:, 1].tolist()}


def modularity_explicitness(represent, sampler, seed=0, num_train=10000, num_test=5000, num_bins=20):
    """Modularity and explicitness on `num_train` / `num_test` uniformly drawn rows."""
    random_state = _random_state(seed)
    train_codes, train_factors = sample_codes_and_factors(represent, sampler, num_train, random_state)
    test_codes, test_factors = sample_codes_and_factors(represent, sampler, num_test, random_state)
    return modularity_explicitness_from_codes(train_codes, train_factors, test_codes, test_factors, num_bins)


# ---------------------------------------------------------------------------------------------------------------
# Unsupervised scores
# ---------------------------------------------------------------------------------------------------------------

def gaussian_total_correlation(covariance):
    """KL(N(0, S) || N(0, diag S)) = 1/2 (sum_j log S_jj - log det S): the total correlation of a Gaussian."""
    return float(0.5 * (np.sum(np.log(np.diag(covariance))) - np.linalg.slogdet(covariance)[1]))


def gaussian_wasserstein_correlation(covariance):
    """Squared 2-Wasserstein distance between N(0, S) and N(0, diag S): 2 tr S - 2 tr sqrtm(diag(S) S).

    sqrtm can return a complex matrix with rounding-level imaginary parts; the real part of the trace is kept.
    """
    root = scipy.linalg.sqrtm(np.diag(covariance)[:, None] * covariance)
    return float(2.0 * np.trace(covariance) - 2.0 * np.real(np.trace(root)))


def unsupervised_from_codes(codes, num_bins=20):
    """Unsupervised scores of Locatello et al. 2019 (Sec. 4 and Appendix; disentanglement_lib unsupervised_metrics).

    S = covariance (ddof 1) of the codes: Gaussian total correlation, Gaussian Wasserstein correlation, and the
    latter divided by tr S; and the mean pairwise mutual information between `num_bins`-binned code dims (the
    mean over off-diagonal entries of the MI matrix; NaN for a single dim).
    """
    covariance = np.atleast_2d(np.cov(codes, rowvar=False))
    wasserstein = gaussian_wasserstein_correlation(covariance)
    binned = histogram_discretize(codes, num_bins)
    mutual_info = discrete_mutual_info(binned, binned)
    np.fill_diagonal(mutual_info, 0.0)
    num_codes = codes.shape[1]
    pairs = num_codes ** 2 - num_codes
    return {"gaussian_total_correlation": gaussian_total_correlation(covariance),
            "gaussian_wasserstein_correlation": wasserstein,
            "gaussian_wasserstein_correlation_norm": float(wasserstein / np.trace(covariance)),
            "mutual_info_score": float(mutual_info.sum() / pairs) if pairs else float("nan")}


def unsupervised(represent, sampler, seed=0, num_train=10000, num_bins=20):
    """Unsupervised scores on `num_train` uniformly drawn rows; see `unsupervised_from_codes`."""
    codes, _ = sample_codes_and_factors(represent, sampler, num_train, _random_state(seed))
    return unsupervised_from_codes(codes, num_bins)


# ---------------------------------------------------------------------------------------------------------------
# The whole suite
# ---------------------------------------------------------------------------------------------------------------

METRICS = {
    "beta_vae": beta_vae_score,
    "factor_vae": factor_vae_score,
    "mig": mig,
    "dci": dci,
    "sap": sap,
    "modularity_explicitness": modularity_explicitness,
    "unsupervised": unsupervised,
}

# The headline number of each metric (evaluation.md's reported key), under the flat names of our results files.
HEADLINE = {
    "beta_vae": ("beta_vae", "eval_accuracy"),
    "factor_vae": ("factor_vae", "eval_accuracy"),
    "mig": ("mig", "discrete_mig"),
    "sap": ("sap", "SAP_score"),
    "modularity": ("modularity_explicitness", "modularity_score"),
    "explicitness": ("modularity_explicitness", "explicitness_score_test"),
    "dci/disentanglement": ("dci", "disentanglement"),
    "dci/completeness": ("dci", "completeness"),
    "dci/informativeness": ("dci", "informativeness_test"),
}


def all_metrics(represent, factor_sampler, seed=0, fast=False, progress=print, names=None):
    """Run every metric (each with a fresh RandomState(seed)) and collect the results.

    `names` restricts the run to some of METRICS (default all); the headline scores of the others are None.

    `fast=True` uses FAST_SETTINGS (for in-training checks; never mix its numbers with full-size ones), else
    STUDY_SETTINGS. `progress` gets one line per metric with its wall time (None: silent). Returns
    {"disentanglement": flat headline scores, "seconds": wall time per metric, "settings": the keyword
    arguments used, "preset", "seed", "num_rows", "min_group_size", and each metric's raw dict by name}.
    """
    settings = FAST_SETTINGS if fast else STUDY_SETTINGS
    results = {"preset": "fast" if fast else "study", "seed": seed, "num_rows": len(factor_sampler),
               "min_group_size": factor_sampler.min_group_size(), "settings": settings, "seconds": {}}
    for name in names or METRICS:
        start = time.perf_counter()
        results[name] = METRICS[name](represent, factor_sampler, seed=seed, **settings[name])
        results["seconds"][name] = time.perf_counter() - start
        if progress is not None:
            shown = ", ".join(f"{key} {value:.3f}" for key, value in results[name].items()
                              if isinstance(value, float) and np.isfinite(value))
            progress(f"[metrics] {name}: {results['seconds'][name]:.1f} s  {shown}")
    results["disentanglement"] = {flat: results[metric][key] if metric in results else None
                                  for flat, (metric, key) in HEADLINE.items()}
    return results


# ---------------------------------------------------------------------------------------------------------------
# Specified / unspecified codes (evaluation.md Sec. 5.1-5.2): metrics per block, leakage against chance
# ---------------------------------------------------------------------------------------------------------------

# Metrics that need at least two factors: the interventional classifiers have a single class to predict
# (score 1 whatever the code), DCI disentanglement is an entropy in base K = 1 and modularity divides by K - 1.
NEEDS_TWO_FACTORS = ("beta_vae", "factor_vae", "modularity", "dci/disentanglement")
LEAKAGE_SETTINGS = {"study": {"num_train": 10000, "num_test": 5000}, "fast": {"num_train": 2000, "num_test": 1000}}


def format_score(value):
    """A score with three decimals, or n/a for an undefined one (None)."""
    return "n/a" if value is None else f"{value:.3f}"


def block_suite(represent, sampler, seed=0, fast=False, progress=print):
    """The metric suite of one code block against its own factors (evaluation.md Sec. 5.1).

    With two or more factors this is `all_metrics`. With one factor (dSprites' s block against shape) the
    metrics listed in NEEDS_TWO_FACTORS are undefined and reported as None; MIG, SAP, DCI completeness and
    informativeness, and explicitness are computed as usual.
    """
    if sampler.num_factors >= 2:
        return all_metrics(represent, sampler, seed=seed, fast=fast, progress=progress)
    with np.errstate(divide="ignore", invalid="ignore"):  # the undefined parts divide by zero; set to None below
        results = all_metrics(represent, sampler, seed=seed, fast=fast, progress=progress,
                              names=("mig", "dci", "sap", "modularity_explicitness"))
    results["undefined"] = {name: "needs two or more factors" for name in NEEDS_TWO_FACTORS}
    results["dci"]["disentanglement"] = None
    results["modularity_explicitness"]["modularity_score"] = None
    for name in NEEDS_TWO_FACTORS:
        results["disentanglement"][name] = None
    return results


def block_importance_share(importance, code_blocks, factor_blocks):
    """Block-DCI: for each factor, the share of its DCI importance (its column of R) in its intended block.

    `importance` is the (D, K) matrix of `dci_importance` on the whole code, `code_blocks` maps a block name to
    its code columns and `factor_blocks` names each factor's intended block. 1 means that only the intended
    block predicts the factor; a factor that no code dim predicts (an all-zero column) gets None.
    """
    importance = np.abs(np.asarray(importance, dtype=np.float64))
    shares = []
    for k, block in enumerate(factor_blocks):
        total = importance[:, k].sum()
        shares.append(float(importance[code_blocks[block], k].sum() / total) if total > 0 else None)
    defined = [share for share in shares if share is not None]
    return {"per_factor": shares, "mean": float(np.mean(defined)) if defined else None}


def leakage_from_codes(train_codes, train_target, test_codes, test_target, seed=0, num_bins=20):
    """How well a block predicts a factor that it should not hold (evaluation.md Sec. 5.2).

    Two classifiers on codes standardised with the training mean and std: LogisticRegression (sklearn defaults,
    max_iter 1000) and gradient-boosted trees (HistGradientBoostingClassifier with its defaults and a fixed seed:
    a leakage check, not a library metric, so the fast histogram trees are used rather than DCI's exact ones).
    chance = the test share of the most frequent test class; normalised = (accuracy - chance) / (1 - chance),
    kept raw (it can be negative). The classifier-free score is max over code dims of the 20-bin MI between the
    dim and the factor divided by the factor's entropy (0: no dim informs, 1: one dim determines it).
    """
    train_target, test_target = np.asarray(train_target), np.asarray(test_target)
    mean, std = train_codes.mean(axis=0), train_codes.std(axis=0)
    std = np.where(std > 0.0, std, 1.0)
    train_x, test_x = (train_codes - mean) / std, (test_codes - mean) / std
    chance = float(np.bincount(test_target).max() / len(test_target))
    classifiers = {"lr": linear_model.LogisticRegression(max_iter=1000),
                   "gbt": ensemble.HistGradientBoostingClassifier(random_state=seed)}
    out = {"chance": chance}
    for name, classifier in classifiers.items():
        accuracy = float(np.mean(classifier.fit(train_x, train_target).predict(test_x) == test_target))
        out[name] = {"accuracy": accuracy, "normalised": (accuracy - chance) / (1.0 - chance)}
    mutual_info = discrete_mutual_info(histogram_discretize(train_codes, num_bins), train_target[:, None])[:, 0]
    entropy = discrete_entropy(train_target[:, None])[0]
    out["mi_ratio"] = float(mutual_info.max() / entropy) if entropy > 0 else None
    return out


def specified_unspecified_metrics(represent, sampler, s_dims, specified, factor_names=None, seed=0, fast=False,
                                  importance=None, progress=print):
    """Block metrics, block-DCI and leakage for a code [s, z] whose first `s_dims` columns are the specified block.

    `specified` lists the factor indices that s should carry (dSprites: shape); z should carry the others.
    1. block suites: s against the specified factors, z against the others (`block_suite`);
    2. block-DCI (`block_importance_share`) from `importance`, the (D, K) DCI matrix on the whole code (for
       example all_metrics(...)["dci"]["importance_matrix"]); computed here at the preset's DCI size if None;
    3. leakage (`leakage_from_codes`): z -> each specified factor, s -> each other factor, on num_train /
       num_test distinct rows, test disjoint from train (10,000 / 5,000; fast preset 2,000 / 1,000), each with a
       `data_baseline`:
       the same classifiers given the true factors that the block should hold, which on a subset of the factor
       product can predict the target by correlation alone (with the full product they are at chance).
    """
    num_factors = sampler.num_factors
    names = list(factor_names) if factor_names is not None else [f"factor_{k}" for k in range(num_factors)]
    specified = sorted(int(k) for k in specified)
    others = [k for k in range(num_factors) if k not in specified]
    if not specified or not others:
        raise ValueError(f"specified factors {specified} must be a non-empty proper subset of the {num_factors} "
                         "factors, so that both blocks have factors of their own")
    probe = np.asarray(represent(np.arange(1)))
    if not 0 < s_dims < probe.shape[1]:
        raise ValueError(f"s_dims = {s_dims} must leave both blocks non-empty in a {probe.shape[1]}-dim code")
    columns = {"s": np.arange(s_dims), "z": np.arange(s_dims, probe.shape[1])}
    factor_sets = {"s": specified, "z": others}
    results = {"blocks": {block: {"code_dims": [int(columns[block][0]), int(columns[block][-1]) + 1],
                                  "factors": [names[k] for k in factor_sets[block]]} for block in columns},
               "seconds": {}}

    def block_view(block):
        def view(rows):
            return np.asarray(represent(rows))[..., columns[block]]
        return view

    for block in ("s", "z"):
        start = time.perf_counter()
        if progress is not None:
            progress(f"[blocks] {block} block ({len(columns[block])} dims) against "
                     f"{', '.join(names[k] for k in factor_sets[block])}")
        suite = block_suite(block_view(block), FactorSampler(sampler.factors[:, factor_sets[block]]), seed=seed,
                            fast=fast, progress=progress)
        results[f"{block}_block"] = suite
        results["seconds"][f"{block}_block"] = time.perf_counter() - start

    start = time.perf_counter()
    if importance is None:
        settings = (FAST_SETTINGS if fast else STUDY_SETTINGS)["dci"]
        importance = dci(represent, sampler, seed=seed, **settings)["importance_matrix"]
    intended = ["s" if k in specified else "z" for k in range(num_factors)]
    share = block_importance_share(importance, columns, intended)
    results["block_dci"] = {"per_factor": dict(zip(names, share["per_factor"])), "mean": share["mean"],
                            "intended_block": dict(zip(names, intended))}
    results["seconds"]["block_dci"] = time.perf_counter() - start

    start = time.perf_counter()
    sizes = LEAKAGE_SETTINGS["fast" if fast else "study"]
    # Distinct rows, the test rows disjoint from the training ones: each row's code is unique, so a classifier
    # could otherwise recognise a test row it was trained on and read its factor off by memory, not leakage.
    # (Fewer rows than num_train + num_test: all of them, split in the same proportion.)
    random_state = _random_state(seed)
    wanted = sizes["num_train"] + sizes["num_test"]
    rows = random_state.choice(len(sampler), min(wanted, len(sampler)), replace=False)
    cut = int(round(len(rows) * sizes["num_train"] / wanted))
    train_codes, test_codes = _encode(represent, rows[:cut]), _encode(represent, rows[cut:])
    train_factors, test_factors = sampler.factors[rows[:cut]], sampler.factors[rows[cut:]]
    leakage = {}
    for block, targets in (("z", specified), ("s", others)):
        for k in targets:
            entry = leakage_from_codes(train_codes[:, columns[block]], train_factors[:, k],
                                       test_codes[:, columns[block]], test_factors[:, k], seed=seed)
            # On a subset of the factor product the block's own factors can predict factor k (the data lacks some
            # combinations): the same classifiers on those true factors give the level that is not leakage.
            own = factor_sets[block]
            entry["data_baseline"] = leakage_from_codes(train_factors[:, own].astype(np.float64), train_factors[:, k],
                                                        test_factors[:, own].astype(np.float64), test_factors[:, k],
                                                        seed=seed)
            leakage[f"{block}->{names[k]}"] = entry
            if progress is not None:
                progress(f"[leakage] {block} -> {names[k]}: LR {entry['lr']['accuracy']:.3f}, GBT "
                         f"{entry['gbt']['accuracy']:.3f} (chance {entry['chance']:.3f}; GBT on the block's true "
                         f"factors {entry['data_baseline']['gbt']['accuracy']:.3f}), MI ratio "
                         f"{format_score(entry['mi_ratio'])}")
    results["leakage"] = leakage
    results["leakage_settings"] = sizes
    results["seconds"]["leakage"] = time.perf_counter() - start
    return results


# ---------------------------------------------------------------------------------------------------------------
# Scoring given codes (eval_latents.py --codes)
# ---------------------------------------------------------------------------------------------------------------

# The classifiers and estimators behind the settings, recorded with every result (evaluation.md, Sec. 6).
METHODS = {
    "representation": "given codes, one row per dataset item (for a model: the encoder mean)",
    "sampling": "uniform draws of dataset rows; 'factor k fixed' draws from the rows that share its value",
    "beta_vae": "sklearn LogisticRegression() with current defaults",
    "factor_vae": "majority vote over argmin of local/global variance (ddof 1), active dims std >= threshold",
    "mig": "histogram_discretize with num_bins equal-width bins, sklearn mutual_info_score (nats)",
    "dci": "sklearn GradientBoostingClassifier() defaults (grown by boosted_trees.py, the same trees), one per "
           "factor, seeded per factor from the metric seed",
    "sap": "sklearn LinearSVC(C=0.01, class_weight='balanced') per code dim and factor (discrete factors)",
    "modularity_explicitness": "modularity on the binned MI matrix; explicitness: LogisticRegression() on "
                               "standardised codes, one-vs-rest ROC-AUC macro-averaged over classes",
    "unsupervised": "Gaussian total/Wasserstein correlation of the code covariance (ddof 1), mean pairwise binned MI",
}


class CodesError(ValueError):
    """Codes or factors that cannot be scored; the message names the problem and how to fix it."""


def check_codes_and_factors(codes, factors):
    """Validate (codes, factors) and return them as float64 (N, D) and int64 (N, K) arrays.

    Raises CodesError for a wrong shape, mismatched row counts, non-finite codes, and factors that are not
    non-negative integer class indices.
    """
    codes, factors = np.asarray(codes), np.asarray(factors)
    if codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
        raise CodesError(f"codes must be a non-empty (N, D) array, one row per dataset item; got shape "
                         f"{codes.shape} (reshape a single code dim to (N, 1))")
    if factors.ndim != 2 or factors.shape[1] == 0:
        raise CodesError(f"factors must be an (N, K) array of factor value indices; got shape {factors.shape} "
                         "(reshape a single factor to (N, 1))")
    if len(codes) != len(factors):
        raise CodesError(f"codes has {len(codes)} rows but factors has {len(factors)}; both need one row per "
                         "dataset item, in the same order")
    if not np.issubdtype(codes.dtype, np.number) or np.issubdtype(codes.dtype, np.complexfloating):
        raise CodesError(f"codes must be real numbers, got dtype {codes.dtype}")
    codes = codes.astype(np.float64)
    bad = ~np.isfinite(codes)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise CodesError(f"codes hold {int(bad.sum())} NaN or infinite values in {len(rows)} rows (first: row "
                         f"{rows[0]}); fix the encoder output or drop those rows from codes and factors alike")
    if np.issubdtype(factors.dtype, np.bool_):
        factors = factors.astype(np.int64)
    if not np.issubdtype(factors.dtype, np.number) or np.issubdtype(factors.dtype, np.complexfloating):
        raise CodesError(f"factors must be integer class indices, got dtype {factors.dtype}")
    if not np.issubdtype(factors.dtype, np.integer):
        if not np.all(np.isfinite(factors)) or not np.all(factors == np.round(factors)):
            raise CodesError("factors must be integer class indices, but some values are not whole numbers; map "
                             "each factor's values to indices first, e.g. np.unique(column, return_inverse=True)[1]")
    factors = factors.astype(np.int64)
    if factors.min() < 0:
        raise CodesError(f"factor values must be >= 0 (class indices), got minimum {factors.min()}; map each "
                         "factor's values to indices first, e.g. np.unique(column, return_inverse=True)[1]")
    return codes, factors


def describe_factors(factors, names=None):
    """Factor names, sizes (distinct values), number of rows, smallest group and whether it is a full product."""
    sizes = [int(len(np.unique(column))) for column in factors.T]
    sampler = FactorSampler(factors)
    distinct_rows = len(np.unique(factors, axis=0))
    return {"names": list(names) if names is not None else [f"factor_{k}" for k in range(factors.shape[1])],
            "sizes": sizes, "num_rows": int(len(factors)), "min_group_size": sampler.min_group_size(),
            "distinct_combinations": int(distinct_rows),
            "full_product": bool(distinct_rows == int(np.prod(sizes, dtype=np.float64)))}


def score_codes(codes, factors, seed=0, fast=False, progress=print):
    """The whole metric suite on given codes: `codes` (N, D) float, `factors` (N, K) integer, one row per item.

    The rows define the dataset that the metrics sample from (`FactorSampler`): the observational metrics draw
    rows uniformly, and the interventional ones (BetaVAE, FactorVAE scores) draw rows sharing a factor's value,
    so on a subset of the factor product the other factors follow the data's conditional distribution.
    `fast=True` is the in-training preset (FAST_SETTINGS); the default uses the study sizes of Locatello et al.
    2019. Returns the dict of `all_metrics` (flat headline scores under "disentanglement", per-metric seconds,
    settings and every metric's raw output). Raises CodesError for arrays that cannot be scored.
    """
    codes, factors = check_codes_and_factors(codes, factors)
    try:
        sampler = FactorSampler(factors)
    except ValueError as error:
        raise CodesError(str(error)) from None
    return all_metrics(codes_representation(codes), sampler, seed=seed, fast=fast, progress=progress)


def default_scores_path(codes_path):
    """FILE.metrics.json beside FILE.npz."""
    import pathlib

    codes_path = pathlib.Path(codes_path)
    return codes_path.with_name(codes_path.stem + ".metrics.json")


def load_codes_file(path):
    """(codes, factors, factor_names or None) from an .npz with arrays `codes`, `factors` [, `factor_names`]."""
    import pathlib
    import zipfile

    path = pathlib.Path(path)
    fix = "save one with np.savez(path, codes=codes, factors=factors[, factor_names=names])"
    if not path.is_file():
        raise CodesError(f"codes file {path} not found ({'it is a folder' if path.is_dir() else 'no such file'}); "
                         f"pass an .npz with arrays 'codes' (N, D) and 'factors' (N, K): {fix}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise CodesError(f"cannot read {path} as an .npz file ({error}); {fix}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CodesError(f"{path} holds a single array, not an .npz archive with named arrays; {fix}")
    with archive:
        missing = [key for key in ("codes", "factors") if key not in archive.files]
        if missing:
            raise CodesError(f"{path} lacks the array(s) {', '.join(repr(k) for k in missing)}; it holds "
                             f"{', '.join(repr(k) for k in archive.files) or 'no arrays'}; {fix}")
        try:
            codes, factors = archive["codes"], archive["factors"]
            names = archive["factor_names"].tolist() if "factor_names" in archive.files else None
        except ValueError as error:  # object arrays need pickle, which we do not load
            raise CodesError(f"cannot load the arrays of {path} ({error}); store plain numeric arrays and "
                             "factor_names as a string array") from None
    if names is not None:
        names = [str(name) for name in np.atleast_1d(names)]
        if np.ndim(factors) == 2 and len(names) != np.shape(factors)[1]:
            raise CodesError(f"{path}: factor_names has {len(names)} entries but factors has "
                             f"{np.shape(factors)[1]} columns; give one name per factor column")
    return codes, factors, names


def score_codes_file(path, out=None, fast=False, seed=0, progress=print):
    """Score the codes of an .npz file and write the results JSON; return the results dict.

    The file holds `codes` (N, D) and `factors` (N, K) (optionally `factor_names`, K strings). `out` is the
    JSON path (default FILE.metrics.json beside the file; an existing folder gets that name inside it). The
    JSON has the flat headline scores under "disentanglement", per-metric wall time under "seconds", the
    preset and every metric's settings, the seed, the factors (names, sizes, rows, smallest group), the
    representation, package versions, date and timings, and each metric's raw output under "metrics".
    Raises CodesError (message names the problem and the fix) for a file that cannot be scored.
    """
    import pathlib

    import common  # Imported here: it loads TensorFlow, which the metrics themselves do not need.

    started = time.perf_counter()
    path = pathlib.Path(path)
    codes, factors, names = load_codes_file(path)
    codes, factors = check_codes_and_factors(codes, factors)
    try:
        factor_info = describe_factors(factors, names)
    except ValueError as error:  # FactorSampler's checks, e.g. a factor with a single value
        raise CodesError(f"{path}: {error}") from None
    out = pathlib.Path(out) if out else default_scores_path(path)
    if out.is_dir():
        out = out / default_scores_path(path).name
    loaded = time.perf_counter()
    if progress is not None:
        progress(f"[metrics] {path}: {len(codes)} rows, {codes.shape[1]} code dims, factors "
                 f"{dict(zip(factor_info['names'], factor_info['sizes']))}, preset {'fast' if fast else 'study'}")
    results = score_codes(codes, factors, seed=seed, fast=fast, progress=progress)
    finished = time.perf_counter()
    raw = {name: results[name] for name in METRICS}
    report = {
        "schema": 1,
        "codes_file": str(path),
        "representation": "given codes",
        "code_dims": int(codes.shape[1]),
        "factors": factor_info,
        "config": {"preset": results["preset"], "settings": results["settings"], "methods": METHODS},
        "seed": seed,
        "disentanglement": results["disentanglement"],
        "seconds": results["seconds"],
        "metrics": raw,
        "versions": common.package_versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "timings": {"load": loaded - started, "metrics": finished - loaded, "total": finished - started},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    common.write_json(out, report)
    if progress is not None:
        progress(f"[metrics] written to {out} ({finished - started:.1f} s)")
    return report
