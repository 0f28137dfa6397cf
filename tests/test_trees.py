"""evaluation/trees.py's GradientBoostedTrees against scikit-learn's GradientBoostingClassifier itself.

DCI's values are sklearn's only if the trees are: these tests fit both on the same data and compare every
split, importance and prediction bit for bit, on continuous codes with repeated rows (DCI draws its points
with replacement, so repeats are the usual case) for two, three and many classes.
"""
import numpy as np
import pytest
from sklearn import ensemble

from evaluation import metrics, sampling, trees


def linear_code(num_rows, factor_sizes, code_dims, seed, repeats=True):
    """A noisy random linear code of random factors; with `repeats`, rows drawn with replacement from a pool."""
    random_state = np.random.RandomState(seed)
    pool = num_rows // 2 if repeats else num_rows
    factors = np.stack([random_state.randint(size, size=pool) for size in factor_sizes], axis=1)
    codes = (factors / np.array(factor_sizes)) @ random_state.randn(len(factor_sizes), code_dims)
    codes += 0.1 * random_state.randn(pool, code_dims)
    rows = random_state.randint(pool, size=num_rows) if repeats else np.arange(num_rows)
    return codes[rows], factors[rows]


def internal_nodes(feature, threshold, left):
    inner = left != -1
    return np.where(inner)[0], feature[inner], threshold[inner]


@pytest.mark.parametrize("num_classes, seed", [(2, 0), (3, 1), (12, 2)])
def test_same_trees_importances_and_predictions_as_sklearn(num_classes, seed):
    codes, factors = linear_code(1200, (num_classes, 4, 5), 6, seed)
    test_codes, _ = linear_code(500, (num_classes, 4, 5), 6, seed + 100)
    labels = factors[:, 0]
    ours = trees.GradientBoostedTrees(random_state=seed, n_estimators=30).fit(codes, labels)
    theirs = ensemble.GradientBoostingClassifier(random_state=seed, n_estimators=30).fit(codes, labels)

    for our_stage, their_stage in zip(ours.trees_, theirs.estimators_):
        for our_tree, their_estimator in zip(our_stage, their_stage):
            tree = their_estimator.tree_
            assert np.array_equal(tree.children_left, our_tree["left"])
            assert np.array_equal(tree.children_right, our_tree["right"])
            inner = tree.children_left != -1
            assert np.array_equal(tree.feature[inner], our_tree["feature"][inner])
            assert np.array_equal(tree.threshold[inner], our_tree["threshold"][inner])
            assert np.array_equal(tree.value[~inner, 0, 0], our_tree["value"][~inner])
    assert np.array_equal(ours.feature_importances_, theirs.feature_importances_)
    for x in (codes, test_codes):
        assert np.array_equal(ours.decision_function(x), theirs.decision_function(x).reshape(len(x), -1))
        assert np.array_equal(ours.predict(x), theirs.predict(x))


def test_repeated_rows_exercise_the_backward_sums():
    """With many repeats the criterion sums some candidates from the end; the importances still match."""
    codes, factors = linear_code(900, (3, 6), 4, seed=5)
    codes = np.repeat(codes[:300], 3, axis=0)  # every row three times: long runs of tied values
    labels = np.repeat(factors[:300, 1], 3)
    ours = trees.GradientBoostedTrees(random_state=3, n_estimators=20).fit(codes, labels)
    theirs = ensemble.GradientBoostingClassifier(random_state=3, n_estimators=20).fit(codes, labels)
    assert np.array_equal(ours.feature_importances_, theirs.feature_importances_)
    assert np.array_equal(ours.predict(codes), theirs.predict(codes))


def test_partition_matches_sklearns_two_pointer_loop():
    def two_pointer(samples, goes_left):  # DensePartitioner.partition_samples_final, written as a loop
        samples, side = list(samples), dict(zip(samples, goes_left))
        start, end = 0, len(samples)
        while start < end:
            if side[samples[start]]:
                start += 1
            else:
                end -= 1
                samples[start], samples[end] = samples[end], samples[start]
        return samples

    random_state = np.random.RandomState(0)
    for _ in range(500):
        size = random_state.randint(1, 40)
        samples = random_state.permutation(100)[:size]
        goes_left = random_state.rand(size) < random_state.rand()
        expected = two_pointer(samples, goes_left)
        left, right = trees._partition(samples, goes_left)
        assert list(left) + list(right) == expected


def test_bad_labels_and_features_are_rejected():
    with pytest.raises(ValueError, match="1 class"):
        trees.GradientBoostedTrees().fit(np.random.randn(10, 2), np.zeros(10))
    with pytest.raises(ValueError, match="finite"):
        trees.GradientBoostedTrees().fit(np.full((10, 2), np.nan), np.arange(10) % 2)


def test_dci_matches_dci_with_sklearns_trees():
    codes, factors = linear_code(800, (3, 5, 4), 5, seed=9)
    sampler = sampling.FactorSampler(factors)
    represent = sampling.codes_representation(codes)
    ours = metrics.dci(represent, sampler, seed=1, num_train=400, num_test=200, n_jobs=1)
    theirs = metrics.dci(represent, sampler, seed=1, num_train=400, num_test=200, n_jobs=1, sklearn_trees=True)
    assert ours == theirs
