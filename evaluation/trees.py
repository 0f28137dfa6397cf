"""scikit-learn's GradientBoostingClassifier(), rebuilt to grow the same trees faster, for DCI's importance matrix.

DCI (Eastwood & Williams 2018; disentanglement_lib `dci.py`) fits `GradientBoostingClassifier()` with its
defaults (log loss, 100 stages, learning rate 0.1, regression trees of depth 3 on the loss gradient, every
feature considered at every node) once per factor, on 10,000 codes, and reads `feature_importances_` and the
train and test accuracy. Those three are all this module computes, and it computes them with the same
algorithm, split by split, as scikit-learn 1.9 (`sklearn/ensemble/_gb.py`, `sklearn/tree/_splitter.pyx`,
`_criterion.pyx`, `_tree.pyx`):

* stage 0 is the log of the class priors (`DummyClassifier(strategy="prior")`, clipped, through the loss' link);
  each stage fits one tree per class (one in all for two classes) to the negative gradient of the half
  multinomial (binomial) log loss, by sklearn's own loss objects;
* a node is split at the best of all (feature, position) candidates of the squared-error criterion, scored by
  the proxy sum_left^2 / n_left + sum_right^2 / n_right; positions between sorted values closer than
  FEATURE_THRESHOLD (1e-7, float32) are not candidates; the threshold is the mean of the two values;
* exact ties are broken as sklearn breaks them: features are visited in the order of the splitter's
  Fisher-Yates draw from its xorshift generator (`rand_r_state`, seeded per tree from the model's RandomState,
  carried across the nodes in depth-first order together with the constant-feature bookkeeping), and a
  candidate replaces the best only when strictly better;
* leaves get one Newton step, (K - 1) / K * mean(residual) / mean(p (1 - p)), over their samples in index order;
* feature importance is sklearn's weighted impurity decrease, averaged over the trees with a split and
  normalised to sum 1.

The only difference is where the time goes. sklearn re-sorts every feature at every node of every tree (one
tree per class and stage); here each feature is sorted once per data set, and a node hands its children their
sorted orders by a stable partition, so one tree costs a few vectorised passes over the (features x samples)
index array. benchmarks/boosted_trees_speed.py times the two on the same data.

Floating point follows sklearn too, because near-ties between candidates (two features that isolate the same
samples, say) are decided by the last bits: sums are accumulated one sample at a time in sklearn's order (a
cumulative sum along each feature's sorted order; node totals in the order that sklearn's in-place partition
leaves the samples, `_partition`; from the end where sklearn's criterion walks back, `_walk_back_where_shorter`).
The trees, importances and predictions are then bit-identical to sklearn's whenever the order of the samples is
determined, i.e. unless a feature has tied values that are not repeats of one row (integer factors used as a
code): sklearn's introsort orders such ties arbitrarily, and the sums follow. tests/test_trees.py
checks every split, threshold, leaf value, importance and prediction against sklearn itself.
"""
import numpy as np
from sklearn import utils as sklearn_utils
from sklearn._loss import loss as sklearn_loss

# sklearn/tree/_partitioner.pxd: sorted values closer than this (compared in float32) count as one value.
FEATURE_THRESHOLD = np.float32(1e-7)
# sklearn/tree/_tree.pyx: a node whose impurity is at most this is pure, hence a leaf.
EPSILON = np.finfo(np.float64).eps
# sklearn/utils/_random.pxd: the splitter's seed is drawn from [0, RAND_R_MAX).
RAND_R_MAX = 2147483647


def _sequential_sum(values):
    """The sum accumulated left to right, as sklearn's criterion accumulates it (not NumPy's pairwise sum)."""
    return float(np.cumsum(values)[-1]) if len(values) else 0.0


def _candidates(sorted_values):
    """Where a split may fall in each sorted row: between values more than FEATURE_THRESHOLD apart (float32)."""
    return sorted_values[:, 1:] > sorted_values[:, :-1] + FEATURE_THRESHOLD


def _walk_back_where_shorter(left_sums, sorted_targets, is_candidate, node_sum):
    """Redo the left sums where sklearn's criterion.update sums from the end instead (in place).

    update(p) moves from the previous candidate p' to p by adding the samples in between, unless p - p' exceeds
    the m - p samples after p: then it restarts from the node total and subtracts those, and later candidates
    add on from there. That needs a candidate p > m / 2 with no candidate in [2p - m, p - 1], i.e. a run of at
    least m - p tied values (repeated rows), so only the last `longest run` positions are checked.
    """
    size = is_candidate.shape[1] + 1
    longest = int(np.max((size - 1) - np.count_nonzero(is_candidate, axis=1)))
    first = max(size // 2 + 1, size - longest)  # the first position p that could walk back
    if longest == 0 or first >= size:
        return
    low = 2 * first - size - 1  # candidates are counted from position low + 1 on
    counts = np.zeros((is_candidate.shape[0], size - low), dtype=np.int32)
    np.cumsum(is_candidate[:, low:], axis=1, out=counts[:, 1:])
    # Candidates in [2p - m, p - 1] for p = first, ..., m - 1.
    in_window = counts[:, first - 1 - low:size - 1 - low] - counts[:, 0:2 * (size - first):2]
    walks_back = is_candidate[:, first - 1:] & (in_window == 0)
    for row in np.flatnonzero(walks_back.any(axis=1)):
        starts = (first + np.flatnonzero(walks_back[row])).tolist() + [size]
        for start, next_start in zip(starts[:-1], starts[1:]):
            # From the total, subtract the samples from the end down to `start`; then add forward again.
            base = np.cumsum(np.concatenate([[node_sum], -sorted_targets[row, start:][::-1]]))[-1]
            forward = np.cumsum(np.concatenate([[base], sorted_targets[row, start:next_start - 1]]))
            left_sums[row, start - 1:next_start - 1] = forward


def _partition(samples, goes_left):
    """sklearn's DensePartitioner.partition_samples_final: the in-place two-pointer partition, vectorised.

    The pointer from the front keeps left samples in place; each right one it meets is swapped with the last
    unexamined sample, which is examined next, and the right ones fill the node from the end in the order
    they were examined. So the k-th right sample of the front part (the first n_left places) trades places
    with the k-th left sample counted from the back; the samples examined from the back between two such
    trades follow their front partner into the right part; and the untouched right samples at the end of
    the scan are rotated by one as the pointers close in. Returns the left and right samples in their final
    order (tests/test_trees.py checks this against the loop itself).
    """
    num_left = int(np.count_nonzero(goes_left))
    front_rights = np.flatnonzero(~goes_left[:num_left])
    back = samples[num_left:][::-1]  # the back part, from the end
    back_lefts = np.flatnonzero(goes_left[num_left:][::-1])
    left_samples = samples[:num_left].copy()
    left_samples[front_rights] = back[back_lefts]
    examined = back.copy()
    if len(front_rights):
        examined[back_lefts[:-1]] = samples[front_rights[1:]]
        body = np.concatenate([samples[front_rights[:1]], examined[:back_lefts[-1]]])
        tail = examined[back_lefts[-1] + 1:]
    else:
        body, tail = examined[:0], examined
    if len(tail) > 1:
        tail = np.concatenate([tail[-1:], tail[:-1]])
    return left_samples, np.concatenate([body, tail])[::-1]


class _XorShift:
    """sklearn's `our_rand_r` (32-bit xorshift, utils/_random.pxd) and `rand_int` (tree/_utils.pyx)."""

    def __init__(self, seed):
        self.state = int(seed)

    def rand_int(self, low, high):
        state = self.state or 1  # a zero seed is replaced by DEFAULT_SEED = 1
        state ^= (state << 13) & 0xFFFFFFFF
        state ^= state >> 17
        state ^= (state << 5) & 0xFFFFFFFF
        self.state = state
        return low + (state % (RAND_R_MAX + 1)) % (high - low)


class _FeatureDraw:
    """The splitter's feature order: `node_split_best`'s Fisher-Yates loop with its constant-feature invariants.

    sklearn draws the features of a node one by one without replacement and skips the ones already known (from
    an ancestor) or found (here) to be constant; the `features` and `constant_features` arrays and the generator
    persist across the nodes of a tree, in the order the tree is built (depth first, left child first).
    """

    def __init__(self, num_features, seed):
        self.features = list(range(num_features))
        self.constant_features = [0] * num_features
        self.rng = _XorShift(seed)

    def visit_order(self, is_constant, num_known_constants):
        """The non-constant features in the order sklearn evaluates them, the last feature it sorts the node's
        samples by, and the node's count of constant features."""
        features, rng = self.features, self.rng
        f_i = len(features)
        found = drawn = 0
        total_constants = num_known_constants
        order = []
        last_sorted = None
        # max_features = n_features, so the second clause of sklearn's loop condition never binds.
        while f_i > total_constants:
            f_j = rng.rand_int(drawn, f_i - found)
            if f_j < num_known_constants:
                features[drawn], features[f_j] = features[f_j], features[drawn]
                drawn += 1
                continue
            f_j += found
            last_sorted = features[f_j]  # sorted by the splitter, constant or not
            if is_constant[features[f_j]]:
                features[f_j], features[total_constants] = features[total_constants], features[f_j]
                found += 1
                total_constants += 1
                continue
            f_i -= 1
            features[f_i], features[f_j] = features[f_j], features[f_i]
            order.append(features[f_i])
        features[:num_known_constants] = self.constant_features[:num_known_constants]
        self.constant_features[num_known_constants:total_constants] = features[num_known_constants:total_constants]
        return order, last_sorted, total_constants


class GradientBoostedTrees:
    """`sklearn.ensemble.GradientBoostingClassifier(random_state=seed)` with its defaults, fitted on dense data.

    fit(x, y) takes (N, D) features and (N,) class labels; afterwards `feature_importances_`, `classes_`,
    `predict(x)` and `decision_function(x)` behave as sklearn's. Only the defaults are supported (they are what
    DCI uses): 100 stages, learning rate 0.1, depth 3, no subsampling, all features at every node.
    """

    def __init__(self, random_state=None, n_estimators=100, learning_rate=0.1, max_depth=3):
        self.random_state = random_state
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth

    # -- fitting ----------------------------------------------------------------------------------------------

    def fit(self, x, y):
        x = np.ascontiguousarray(x, dtype=np.float32)  # sklearn fits and predicts on float32 features
        if x.ndim != 2 or not np.all(np.isfinite(x)):
            raise ValueError(f"x must be a finite 2-d array, got shape {x.shape}")
        self.classes_, y_encoded = np.unique(np.asarray(y).ravel(), return_inverse=True)
        num_classes = len(self.classes_)
        if num_classes < 2:
            raise ValueError(f"y contains {num_classes} class; gradient boosting needs at least 2")
        if len(y_encoded) != len(x):
            raise ValueError(f"x has {len(x)} rows but y has {len(y_encoded)}")
        num_samples, num_features = x.shape
        self.n_features_in_ = num_features
        if num_classes == 2:
            self._loss = sklearn_loss.HalfBinomialLoss()
            trees_per_stage = 1
        else:
            self._loss = sklearn_loss.HalfMultinomialLoss(n_classes=num_classes)
            trees_per_stage = num_classes
        y_float = y_encoded.astype(np.float64)

        # Stage 0: the class priors through the loss' link (sklearn's _init_raw_predictions).
        priors = np.bincount(y_encoded, minlength=num_classes) / num_samples
        if num_classes == 2:
            priors = priors[1:]
        eps = np.finfo(np.float64).eps
        self._init_raw = self._loss.link.link(np.clip(priors, eps, 1 - eps, dtype=np.float64)[None, :])
        self._init_raw = self._init_raw.reshape(1, trees_per_stage)
        raw = np.repeat(self._init_raw, num_samples, axis=0)

        # Each feature is sorted once; every tree's root starts from these orders, and its children from
        # stable partitions of them.
        xt = np.ascontiguousarray(x.T)
        root_order = np.argsort(xt, axis=1, kind="stable")
        root_values = np.take_along_axis(xt, root_order, axis=1)
        self._root = (root_order, root_values, _candidates(root_values))
        self._scratch = np.zeros(num_samples, dtype=bool)
        random_state = sklearn_utils.check_random_state(self.random_state)  # None: NumPy's global RandomState

        self.trees_ = []
        importances = []
        for _ in range(self.n_estimators):
            neg_gradient = -self._loss.gradient(y_true=y_float, raw_prediction=raw.squeeze(1) if
                                                trees_per_stage == 1 else raw)
            neg_gradient = neg_gradient.reshape(num_samples, trees_per_stage)
            stage = []
            for k in range(trees_per_stage):
                target = np.ascontiguousarray(neg_gradient[:, k])
                tree = self._grow_tree(target, random_state.randint(0, RAND_R_MAX))
                indicator = y_float if trees_per_stage == 1 else (y_encoded == k).astype(np.float64)
                self._newton_leaf_values(tree, indicator, target, num_classes)
                raw[:, k] += self.learning_rate * tree["value"][tree["leaf_of_sample"]]
                del tree["leaf_of_sample"]
                if tree["num_splits"]:
                    importances.append(tree["importance"])
                stage.append(tree)
            self.trees_.append(stage)
        if importances:
            mean_importance = np.mean(importances, axis=0, dtype=np.float64)
            self.feature_importances_ = mean_importance / np.sum(mean_importance)
        else:
            self.feature_importances_ = np.zeros(num_features)
        del self._root, self._scratch
        return self

    def _grow_tree(self, target, seed):
        """One regression tree on `target`, grown as sklearn's DepthFirstTreeBuilder + BestSplitter would."""
        root_order, root_values, root_candidates = self._root
        num_samples, num_features = root_order.shape[1], root_order.shape[0]
        draw = _FeatureDraw(num_features, seed)
        # Node arrays in sklearn's node numbering (creation order); -1 marks a leaf's children.
        feature, threshold, left, right = [], [], [], []
        importance = np.zeros(num_features)
        leaf_of_sample = np.empty(num_samples, dtype=np.intp)
        num_splits = 0

        # Stack records: the node's sample indices sorted by each feature (D, m), their feature values (D, m)
        # and split candidates (D, m - 1) or None, the node's samples in sklearn's order, depth, parent id,
        # is_left, impurity (None: compute it), and the number of constant features known from its ancestors.
        stack = [((root_order, root_values, root_candidates), np.arange(num_samples), 0, -1, False, None, 0)]
        while stack:
            sorted_node, samples, depth, parent, is_left, impurity, known_constants = stack.pop()
            size = len(samples)
            node_id = len(feature)
            feature.append(-1)
            threshold.append(-2.0)
            left.append(-1)
            right.append(-1)
            if parent >= 0:
                (left if is_left else right)[parent] = node_id
            if depth >= self.max_depth or size < 2:
                leaf_of_sample[samples] = node_id
                continue
            # The criterion's node sums, accumulated one sample at a time in the node's order (criterion.init).
            node_targets = target[samples]
            node_sum = _sequential_sum(node_targets)
            node_sq_sum = _sequential_sum(node_targets * node_targets)
            if impurity is None:  # the root; a child gets its impurity from its parent's split
                impurity = node_sq_sum / size - (node_sum / size) ** 2
            split = None
            if impurity > EPSILON:
                split = self._best_split(sorted_node, target, node_sum, node_sq_sum, impurity,
                                         known_constants, draw, num_samples)
            if split is None:
                leaf_of_sample[samples] = node_id
                continue
            (best_feature, split_threshold, left_samples, right_samples, impurity_left, impurity_right,
             constants) = split
            feature[node_id] = best_feature
            threshold[node_id] = split_threshold
            num_splits += 1
            left_size, right_size = len(left_samples), len(right_samples)
            importance[best_feature] += (size * impurity - left_size * impurity_left
                                         - right_size * impurity_right)

            # Children inherit the sorted orders by a stable partition of every row.
            if depth + 1 < self.max_depth:
                order, values, _ = sorted_node
                scratch = self._scratch
                scratch[left_samples] = True
                goes_left = scratch[order]
                scratch[left_samples] = False
                goes_right = ~goes_left
                left_node = (order[goes_left].reshape(num_features, left_size),
                             values[goes_left].reshape(num_features, left_size), None)
                right_node = (order[goes_right].reshape(num_features, right_size),
                              values[goes_right].reshape(num_features, right_size), None)
            else:  # the children are leaves: their sample lists are all they need
                left_node = right_node = None
            stack.append((right_node, right_samples, depth + 1, node_id, False, impurity_right, constants))
            stack.append((left_node, left_samples, depth + 1, node_id, True, impurity_left, constants))

        return {"feature": np.array(feature), "threshold": np.array(threshold),
                "left": np.array(left), "right": np.array(right), "value": np.zeros(len(feature)),
                "importance": importance / num_samples, "num_splits": num_splits,
                "leaf_of_sample": leaf_of_sample}

    def _best_split(self, sorted_node, target, node_sum, node_sq_sum, impurity, known_constants, draw,
                    num_samples):
        """sklearn's node_split_best on a node given as its per-feature sorted samples, values and candidates.

        Returns None when no candidate exists or the split does not decrease the impurity, otherwise
        (feature, threshold, left and right samples in sklearn's order, left and right impurity, the
        constant-feature count for the children).
        """
        order, values, is_candidate = sorted_node
        size = order.shape[1]
        is_constant = values[:, -1] <= values[:, 0] + FEATURE_THRESHOLD
        visit, last_sorted, constants = draw.visit_order(is_constant, known_constants)
        if not visit:
            return None
        if is_candidate is None:
            is_candidate = _candidates(values)
        # Candidate p (1 <= p < m) puts the first p sorted samples on the left; the criterion adds them one at a
        # time (criterion.update), i.e. a cumulative sum, and takes the right sum as total - left. The proxy is
        # computed for every feature (constant ones have no candidates) with sklearn's operations in its order.
        sorted_targets = target[order]
        left_sums = np.cumsum(sorted_targets[:, :-1], axis=1)
        _walk_back_where_shorter(left_sums, sorted_targets, is_candidate, node_sum)
        right_sums = node_sum - left_sums
        left_sizes = np.arange(1, size, dtype=np.float64)
        proxy = left_sums * left_sums
        proxy /= left_sizes
        right_sums *= right_sums
        right_sums /= size - left_sizes
        proxy += right_sums
        # The proxy is >= 0, so zeroing the positions that are not candidates leaves each row's maximum where it
        # was, unless that maximum is 0 (no candidate, or a candidate with zero sums): those rows are redone
        # with -inf.
        np.multiply(proxy, is_candidate, out=proxy)
        best_per_feature = np.argmax(proxy, axis=1)  # the first of equal maxima, as sklearn's strict ">"
        best_proxy = proxy[np.arange(len(proxy)), best_per_feature]
        for row in np.flatnonzero(best_proxy == 0.0):
            proxy[row, ~is_candidate[row]] = -np.inf
            best_per_feature[row] = np.argmax(proxy[row])
            best_proxy[row] = proxy[row, best_per_feature[row]]
        best_proxy = best_proxy[visit]
        which = int(np.argmax(best_proxy))  # the first visited of equal maxima
        if best_proxy[which] == -np.inf:
            return None
        best_feature = visit[which]
        position = int(best_per_feature[best_feature]) + 1
        low, high = float(values[best_feature, position - 1]), float(values[best_feature, position])
        split_threshold = low / 2.0 + high / 2.0
        if split_threshold == high or np.isinf(split_threshold):
            split_threshold = low

        # partition_samples_final reorders the samples, which are sorted by the last feature sorted, and the
        # criterion then sums the children in that order (criterion.update, children_impurity).
        scratch = self._scratch
        scratch[order[best_feature, :position]] = True
        sorted_samples = order[last_sorted]
        left_samples, right_samples = _partition(sorted_samples, scratch[sorted_samples])
        scratch[left_samples] = False
        left_targets, right_targets = target[left_samples], target[right_samples]
        right_size = size - position
        if position <= right_size:
            left_sum = _sequential_sum(left_targets)
        else:  # criterion.update walks back from the end when that is shorter
            left_sum = _sequential_sum(np.concatenate([[node_sum], -right_targets[::-1]]))
        right_sum = node_sum - left_sum
        sq_left = _sequential_sum(left_targets * left_targets)
        sq_right = node_sq_sum - sq_left
        impurity_left = sq_left / position - (left_sum / position) ** 2
        impurity_right = sq_right / right_size - (right_sum / right_size) ** 2
        improvement = (size / num_samples) * (impurity - right_size / size * impurity_right
                                             - position / size * impurity_left)
        if improvement + EPSILON < 0.0:  # min_impurity_decrease = 0
            return None
        return (best_feature, split_threshold, left_samples, right_samples, impurity_left, impurity_right,
                constants)

    def _newton_leaf_values(self, tree, indicator, neg_gradient, num_classes):
        """sklearn's _update_terminal_regions for the log loss: one Newton step per leaf."""
        leaf_of_sample = tree["leaf_of_sample"]
        factor = (num_classes - 1) / num_classes if num_classes > 2 else 1.0
        for leaf in np.flatnonzero(tree["left"] == -1):
            members = np.flatnonzero(leaf_of_sample == leaf)  # index order, as sklearn averages them
            residual = neg_gradient[members]
            probability = indicator[members] - residual
            numerator = np.mean(residual) * factor
            denominator = np.mean(probability * (1 - probability))
            tree["value"][leaf] = 0.0 if abs(denominator) < 1e-150 else float(numerator) / float(denominator)

    # -- prediction -------------------------------------------------------------------------------------------

    def _apply(self, tree, x):
        """The leaf of every row of x (float32), routed by x <= threshold as sklearn's trees route."""
        node = np.zeros(len(x), dtype=np.intp)
        for node_id in range(len(tree["feature"])):
            if tree["left"][node_id] == -1:
                continue
            here = np.flatnonzero(node == node_id)
            goes_left = x[here, tree["feature"][node_id]] <= tree["threshold"][node_id]
            node[here] = np.where(goes_left, tree["left"][node_id], tree["right"][node_id])
        return node

    def decision_function(self, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        raw = np.repeat(self._init_raw, len(x), axis=0)
        for stage in self.trees_:
            for k, tree in enumerate(stage):
                raw[:, k] += self.learning_rate * tree["value"][self._apply(tree, x)]
        return raw

    def predict(self, x):
        raw = self.decision_function(x)
        if raw.shape[1] == 1:
            return self.classes_[(raw[:, 0] >= 0).astype(int)]
        return self.classes_[np.argmax(raw, axis=1)]
