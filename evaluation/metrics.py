"""The disentanglement_lib metric suite in NumPy and scikit-learn, for data that may be a subset of the factor product.

Definitions follow Locatello et al. 2019, "Challenging Common Assumptions in the Unsupervised Learning of
Disentangled Representations" (ICML), and its library google-research/disentanglement_lib, with the study
defaults of `unsupervised_study_v1` (docs/evaluation.md Sec. 4):

    metric                     paper                          reported keys (library names)
    beta_vae_score             Higgins et al. 2017 (ICLR)     train_accuracy, eval_accuracy
    factor_vae_score           Kim & Mnih 2018 (ICML)         train_accuracy, eval_accuracy, num_active_dims
    mig                        Chen et al. 2018 (NeurIPS)     discrete_mig
    dci                        Eastwood & Williams 2018       disentanglement, completeness, informativeness_*
    sap                        Kumar et al. 2018 (ICLR)       SAP_score
    modularity_explicitness    Ridgeway & Mozer 2018          modularity_score, explicitness_score_*
    unsupervised               Locatello et al. 2019          gaussian_total_correlation, ..., mutual_info_score

Usage:
    sampler = sampling.FactorSampler(dataset_factors)          # (N, K) integer factor matrix
    represent = lambda rows: encode(model, images[rows])       # or sampling.codes_representation(codes)
    results = all_metrics(represent, sampler, seed=0)          # fast=True: the in-training preset
    results = codes.score_codes(codes, factors, seed=0)        # given (N, D) codes and (N, K) factors
    python eval_latents.py --codes FILE.npz [--out FILE.json] [--fast] [--seed N]   # codes.score_codes_file

Conventions. The data reaches a metric as a representation `represent(rows) -> codes` and a
`sampling.FactorSampler` (see evaluation/sampling.py, which also handles subsets of the factor product). Each
metric function takes a `seed` and draws everything from one `numpy.random.RandomState(seed)`, as
disentanglement_lib does per metric; array-level functions (`*_from_codes`) compute the same scores on codes that
are already sampled.

Known differences from the 2019 numbers (all intended, see the docstrings): current sklearn defaults (lbfgs
multinomial LogisticRegression where 2019 sklearn used liblinear one-vs-rest; LinearSVC dual="auto"); seeded
GBT trees in DCI (grown by evaluation/trees.py, which reproduces sklearn's GradientBoostingClassifier tree for
tree); the true active-dimension count in the FactorVAE score; guards where the library divides by zero.
Scores depend on the sklearn version, so record it with every result.

Parity: benchmarks/metrics_parity.py runs disentanglement_lib's own metric functions (on the same NumPy,
SciPy and scikit-learn, loaded from its unpacked source) beside these at the study sizes. The two draw different
points from the same distribution, so they can agree only up to sampling noise; the current-sklearn defaults
above apply to both sides alike there.
"""
import time

import numpy as np
import scipy.linalg
import scipy.stats
from sklearn import ensemble, linear_model, metrics, svm
from sklearn.utils import parallel

from evaluation import sampling, trees

# Study defaults (unsupervised_study_v1) and the fast in-training preset (docs/evaluation.md Sec. 4). The keys are
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
    points_per_chunk = max(1, sampling.ENCODE_CHUNK_ROWS // (2 * batch_size))
    features = []
    for start in range(0, num_points, points_per_chunk):
        part = slice(start, start + points_per_chunk)
        difference = sampling.represent_rows(represent, first[part]) - sampling.represent_rows(represent, second[part])
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
    random_state = sampling.random_state(seed)
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
    votes_per_chunk = max(1, sampling.ENCODE_CHUNK_ROWS // batch_size)
    for start in range(0, num_votes, votes_per_chunk):
        part = slice(start, start + votes_per_chunk)
        local_variances = np.var(sampling.represent_rows(represent, batches[part]), axis=1, ddof=1)
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
    random_state = sampling.random_state(seed)
    variance_rows = sampler.sample(num_variance_estimate, random_state)
    global_variances = np.var(sampling.represent_rows(represent, variance_rows), axis=0, ddof=1)
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
    codes, factors = sampling.sample_codes_and_factors(represent, sampler, num_train, sampling.random_state(seed))
    return mig_from_codes(codes, factors, num_bins)


# ---------------------------------------------------------------------------------------------------------------
# DCI
# ---------------------------------------------------------------------------------------------------------------

def _fit_factor_gbt(train_codes, train_factor, test_codes, test_factor, tree_seed, sklearn_trees=False):
    """One factor's GradientBoostingClassifier (sklearn defaults): |importances|, train and test accuracy.

    By default the model is `trees.GradientBoostedTrees`, which grows the same trees as sklearn's
    GradientBoostingClassifier (same splits, tie-breaking, random feature order and floating-point sums:
    bit-identical importances and predictions unless the codes have tied values that are not repeated rows, see
    its docstring), only faster (benchmarks/boosted_trees_speed.py times both). `sklearn_trees=True` fits
    sklearn's own class instead.
    """
    if sklearn_trees:
        model = ensemble.GradientBoostingClassifier(random_state=tree_seed)
    else:
        model = trees.GradientBoostedTrees(random_state=tree_seed)
    model.fit(train_codes, train_factor)
    return (np.abs(model.feature_importances_),
            float(np.mean(model.predict(train_codes) == train_factor)),
            float(np.mean(model.predict(test_codes) == test_factor)))


def dci_importance(train_codes, train_factors, test_codes, test_factors, tree_seeds=None, n_jobs=2,
                   backend=None, sklearn_trees=False):
    """(D, K) importance matrix of gradient-boosted trees, and the train and test accuracy per factor.

    The K classifiers are independent, so they are fitted in parallel by `n_jobs` workers: processes (joblib's
    loky) for `trees.GradientBoostedTrees`, whose many short NumPy calls would contend for the GIL in threads,
    and threads for sklearn's trees, whose builder runs without the GIL. `backend` overrides the choice. Factors
    with more classes (more trees) are dispatched first, which balances the workers on dSprites-like factor sizes.

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
    random_state = sampling.random_state(seed)
    train_codes, train_factors = sampling.sample_codes_and_factors(represent, sampler, num_train, random_state)
    test_codes, test_factors = sampling.sample_codes_and_factors(represent, sampler, num_test, random_state)
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
    So ground-truth factors with many values score far below 1 here; the library's own tests, which expect
    0.9-1 for them, use continuous_factors=True.
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
    random_state = sampling.random_state(seed)
    train_codes, train_factors = sampling.sample_codes_and_factors(represent, sampler, num_train, random_state)
    test_codes, test_factors = sampling.sample_codes_and_factors(represent, sampler, num_test, random_state)
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
    random_state = sampling.random_state(seed)
    train_codes, train_factors = sampling.sample_codes_and_factors(represent, sampler, num_train, random_state)
    test_codes, test_factors = sampling.sample_codes_and_factors(represent, sampler, num_test, random_state)
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
    codes, _ = sampling.sample_codes_and_factors(represent, sampler, num_train, sampling.random_state(seed))
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

# The headline number of each metric (the reported key of docs/evaluation.md Sec. 4), under the flat names of our
# results files.
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
