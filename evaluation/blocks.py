"""Specified/unspecified models beyond probes (docs/evaluation.md Sec. 3 and 5): the blocks s and z of the code.

For a code [s, z] whose first `s_dims` columns are the specified block s (what pairs of the same class share) and
whose other columns are the unspecified block z:
  * `specified_unspecified_metrics` (Sec. 5.1-5.2): the metric suite per block (s against the specified factors,
    z against the others), block-DCI, and leakage against chance with the level that the block's own true factors
    reach;
  * `ground_truth_swap_error` (Sec. 5.4): Dec(z_b, s_a) against the real image with a's specified and b's other
    factors, with the reconstruction floor;
  * `predictor_networks` (Sec. 3): an MLP predicting each block from the other, and the regeneration error of
    decoding with the predicted block.
The first works on any codes and factors; the other two need the model's decoder.
"""
import time

import keras
import numpy as np
from sklearn import ensemble, linear_model

from evaluation import metrics, probes, sampling

# ---------------------------------------------------------------------------------------------------------------
# Metrics per block, block-DCI and leakage against chance (Sec. 5.1-5.2)
# ---------------------------------------------------------------------------------------------------------------

# Metrics that need at least two factors: the interventional classifiers have a single class to predict
# (score 1 whatever the code), DCI disentanglement is an entropy in base K = 1 and modularity divides by K - 1.
NEEDS_TWO_FACTORS = ("beta_vae", "factor_vae", "modularity", "dci/disentanglement")
LEAKAGE_SETTINGS = {"study": {"num_train": 10000, "num_test": 5000}, "fast": {"num_train": 2000, "num_test": 1000}}


def format_score(value):
    """A score with three decimals, or n/a for an undefined one (None)."""
    return "n/a" if value is None else f"{value:.3f}"


def block_suite(represent, sampler, seed=0, fast=False, progress=print):
    """The metric suite of one code block against its own factors (docs/evaluation.md Sec. 5.1).

    With two or more factors this is `metrics.all_metrics`. With one factor (dSprites' s block against shape) the
    metrics listed in NEEDS_TWO_FACTORS are undefined and reported as None; MIG, SAP, DCI completeness and
    informativeness, and explicitness are computed as usual.
    """
    if sampler.num_factors >= 2:
        return metrics.all_metrics(represent, sampler, seed=seed, fast=fast, progress=progress)
    with np.errstate(divide="ignore", invalid="ignore"):  # the undefined parts divide by zero; set to None below
        results = metrics.all_metrics(represent, sampler, seed=seed, fast=fast, progress=progress,
                                      names=("mig", "dci", "sap", "modularity_explicitness"))
    results["undefined"] = {name: "needs two or more factors" for name in NEEDS_TWO_FACTORS}
    results["dci"]["disentanglement"] = None
    results["modularity_explicitness"]["modularity_score"] = None
    for name in NEEDS_TWO_FACTORS:
        results["disentanglement"][name] = None
    return results


def block_importance_share(importance, code_blocks, factor_blocks):
    """Block-DCI: for each factor, the share of its DCI importance (its column of R) in its intended block.

    `importance` is the (D, K) matrix of `metrics.dci_importance` on the whole code, `code_blocks` maps a block name to
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
    """How well a block predicts a factor that it should not hold (docs/evaluation.md Sec. 5.2).

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
    mutual_info = metrics.discrete_mutual_info(metrics.histogram_discretize(train_codes, num_bins),
                                               train_target[:, None])[:, 0]
    entropy = metrics.discrete_entropy(train_target[:, None])[0]
    out["mi_ratio"] = float(mutual_info.max() / entropy) if entropy > 0 else None
    return out


def specified_unspecified_metrics(represent, sampler, s_dims, specified, factor_names=None, seed=0, fast=False,
                                  importance=None, progress=print):
    """Block metrics, block-DCI and leakage for a code [s, z] whose first `s_dims` columns are the specified block.

    `specified` lists the factor indices that s should carry (dSprites: shape); z should carry the others.
    1. block suites: s against the specified factors, z against the others (`block_suite`);
    2. block-DCI (`block_importance_share`) from `importance`, the (D, K) DCI matrix on the whole code (for
       example all_metrics(...)["dci"]["importance_matrix"]); computed here at the preset's DCI size if None;
    3. leakage (`block_leakage`): z -> each specified factor, s -> each other factor.
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

    for block in ("s", "z"):
        start = time.perf_counter()
        if progress is not None:
            progress(f"[blocks] {block} block ({len(columns[block])} dims) against "
                     f"{', '.join(names[k] for k in factor_sets[block])}")
        results[f"{block}_block"] = block_suite(_block_view(represent, columns[block]),
                                                sampling.FactorSampler(sampler.factors[:, factor_sets[block]]),
                                                seed=seed, fast=fast, progress=progress)
        results["seconds"][f"{block}_block"] = time.perf_counter() - start

    start = time.perf_counter()
    if importance is None:
        settings = (metrics.FAST_SETTINGS if fast else metrics.STUDY_SETTINGS)["dci"]
        importance = metrics.dci(represent, sampler, seed=seed, **settings)["importance_matrix"]
    intended = ["s" if k in specified else "z" for k in range(num_factors)]
    share = block_importance_share(importance, columns, intended)
    results["block_dci"] = {"per_factor": dict(zip(names, share["per_factor"])), "mean": share["mean"],
                            "intended_block": dict(zip(names, intended))}
    results["seconds"]["block_dci"] = time.perf_counter() - start

    start = time.perf_counter()
    results["leakage"] = block_leakage(represent, sampler, columns, factor_sets, names, seed, fast, progress)
    results["leakage_settings"] = LEAKAGE_SETTINGS["fast" if fast else "study"]
    results["seconds"]["leakage"] = time.perf_counter() - start
    return results


def _block_view(represent, columns):
    """The representation restricted to one block's code columns."""
    def view(rows):
        return np.asarray(represent(rows))[..., columns]
    return view


def block_leakage(represent, sampler, columns, factor_sets, names, seed=0, fast=False, progress=print):
    """Leakage (`leakage_from_codes`) of z into each specified factor and of s into each other factor.

    On num_train / num_test distinct rows, test disjoint from train (LEAKAGE_SETTINGS), each entry with a
    `data_baseline`: the same classifiers given the true factors that the block should hold, which on a subset of
    the factor product can predict the target by correlation alone (with the full product they are at chance).
    `columns` and `factor_sets` map each block ("s", "z") to its code columns and to its own factor indices.
    """
    sizes = LEAKAGE_SETTINGS["fast" if fast else "study"]
    # Distinct rows, the test rows disjoint from the training ones: each row's code is unique, so a classifier
    # could otherwise recognise a test row it was trained on and read its factor off by memory, not leakage.
    # (Fewer rows than num_train + num_test: all of them, split in the same proportion.)
    random_state = sampling.random_state(seed)
    wanted = sizes["num_train"] + sizes["num_test"]
    rows = random_state.choice(len(sampler), min(wanted, len(sampler)), replace=False)
    cut = int(round(len(rows) * sizes["num_train"] / wanted))
    train_codes = sampling.represent_rows(represent, rows[:cut])
    test_codes = sampling.represent_rows(represent, rows[cut:])
    train_factors, test_factors = sampler.factors[rows[:cut]], sampler.factors[rows[cut:]]
    leakage = {}
    for block, targets in (("z", factor_sets["s"]), ("s", factor_sets["z"])):
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
    return leakage


# ---------------------------------------------------------------------------------------------------------------
# Ground-truth swap error (Sec. 5.4)
# ---------------------------------------------------------------------------------------------------------------

def decode_batched(model, z, s=None, batch_size=512):
    """decode(z[, s]) in batches, as a float32 NumPy array."""
    parts = []
    for start in range(0, len(z), batch_size):
        part = slice(start, start + batch_size)
        parts.append(np.asarray(model.decode(z[part]) if s is None else model.decode(z[part], s[part]), np.float32))
    return np.concatenate(parts)


def image_errors(predicted, target):
    """Per-image BCE (nats, summed over pixels), MSE (mean over pixels) and IoU of the 0.5-thresholded images."""
    predicted = np.clip(predicted.reshape(len(predicted), -1).astype(np.float64), 1e-7, 1 - 1e-7)
    target = target.reshape(len(target), -1).astype(np.float64)
    bce = -np.sum(target * np.log(predicted) + (1 - target) * np.log1p(-predicted), axis=1)
    mse = np.mean(np.square(predicted - target), axis=1)
    on_predicted, on_target = predicted > 0.5, target > 0.5
    union = np.sum(on_predicted | on_target, axis=1)
    iou = np.where(union > 0, np.sum(on_predicted & on_target, axis=1) / np.maximum(union, 1), 1.0)
    return {"bce": bce, "mse": mse, "iou": iou}


def ground_truth_swap_error(model, dataset, s_all, z_all, specified, test_rows, rng, pairs=5000):
    """Ground-truth swap error (docs/evaluation.md Sec. 5.4) on a dataset with factors (dSprites).

    Test pairs (a, b) whose specified factors differ are drawn uniformly; the swap x^ = Dec(z_b, s_a) is compared
    with the real image x* that has a's specified factors and b's other factors, where that image exists in the
    data (`coverage` is the share of pairs for which it does; a subset of the factor product lacks the rest).
    The floor is the same errors for the plain reconstruction of x* from its own mean codes. `s_all`, `z_all`
    are the codes of every dataset row. Returns the summary and the arrays for the figure.
    """
    index = dataset.factor_index("all")
    factors = dataset.labels["factors"]
    a = rng.choice(test_rows, 4 * pairs)
    b = rng.choice(test_rows, 4 * pairs)
    differ = np.any(factors[a][:, specified] != factors[b][:, specified], axis=1)
    a, b = a[differ][:pairs], b[differ][:pairs]
    wanted = factors[b].copy()
    wanted[:, specified] = factors[a][:, specified]
    position = index.lookup(wanted)
    found = position >= 0
    a, b, target = a[found], b[found], index.dataset_rows[position[found]]
    swapped = decode_batched(model, z_all[b], s_all[a])
    rebuilt = decode_batched(model, z_all[target], s_all[target])
    truth = dataset.images[target].astype(np.float32) / 255.0
    swap, floor = image_errors(swapped, truth), image_errors(rebuilt, truth)
    summary = {"pairs_drawn": int(len(found)), "pairs_scored": int(found.sum()), "coverage": float(found.mean()),
               "swap": {k: float(v.mean()) for k, v in swap.items()},
               "floor": {k: float(v.mean()) for k, v in floor.items()},
               "specified": [dataset.factor_names[k] for k in specified]}
    show = slice(0, 8)
    figure = np.stack([dataset.images[a[show]].astype(np.float32) / 255.0,
                       dataset.images[b[show]].astype(np.float32) / 255.0, swapped[show], truth[show], rebuilt[show]])
    return summary, figure


# ---------------------------------------------------------------------------------------------------------------
# Predictor networks and regeneration error (Sec. 3)
# ---------------------------------------------------------------------------------------------------------------

def train_predictor(x, y, split, config, seed):
    """Fit x -> y by MSE (Adam 1e-3, batch 128, early stopping on the validation part); predictions for every row."""
    train, val, _ = split
    mean, std = x[train].mean(0), x[train].std(0) + 1e-8
    x = (x - mean) / std
    keras.utils.set_random_seed(seed)
    net = keras.Sequential(probes.mlp_body() + [keras.layers.Dense(y.shape[1])])  # linear output
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", steps_per_execution=16)
    stop = keras.callbacks.EarlyStopping("val_loss", patience=config.patience, restore_best_weights=True)
    history = net.fit(x[train], y[train], batch_size=128, epochs=config.probe_epochs, verbose=0,
                      validation_data=(x[val], y[val]), callbacks=[stop])
    return np.asarray(net.predict(x, batch_size=4096, verbose=0), np.float32), len(history.history["loss"])


def predictor_networks(model, s, z, split, config, rng, log, max_images=2000):
    """Predictor networks f: s -> z and g: z -> s and their regeneration error (docs/evaluation.md Sec. 3).

    On mean codes with the probes' splits. Code-space R^2 = 1 - sum_j MSE_j / sum_j Var_j over the test codes
    (pooled over dims). Regeneration error on up to `max_images` test images: RE_f = MSE(Dec(z, s), Dec(f(s), s)),
    RE_g = MSE(Dec(z, s), Dec(z, g(z))), against the constant predictor (training mean of the predicted code).
    For a disentangled model neither block predicts the other: R^2 near 0 and RE / RE_baseline near 1.
    `config` gives the probes' probe_epochs, patience and seed (an eval_latents.EvalConfig).
    """
    train, _, test = split
    shown = np.sort(rng.choice(test, min(max_images, len(test)), replace=False))
    reference = decode_batched(model, z[shown], s[shown])
    results, images = {}, {"original": reference}
    for name, source, target in (("s->z", s, z), ("z->s", z, s)):
        started = time.time()
        predicted, epochs = train_predictor(source, target, split, config, config.seed)
        constant = np.broadcast_to(target[train].mean(0), target.shape)
        residual = np.sum(np.square(predicted[test] - target[test]), axis=0)
        total = np.sum(np.square(target[test] - target[test].mean(0)), axis=0)
        if name == "s->z":
            regenerated, baseline = (decode_batched(model, predicted[shown], s[shown]),
                                     decode_batched(model, np.array(constant[shown]), s[shown]))
        else:
            regenerated, baseline = (decode_batched(model, z[shown], predicted[shown]),
                                     decode_batched(model, z[shown], np.array(constant[shown])))
        error = float(np.mean(np.square(regenerated - reference)))
        error_baseline = float(np.mean(np.square(baseline - reference)))
        results[name] = {"r2": float(1.0 - residual.sum() / max(total.sum(), 1e-12)),
                         "regeneration_mse": error, "baseline_mse": error_baseline,
                         "ratio": error / error_baseline if error_baseline > 0 else None, "epochs": epochs,
                         "images": int(len(shown))}
        images[name], images[f"{name} constant"] = regenerated, baseline
        log(f"predictor {name}: R2 {results[name]['r2']:.3f}, regeneration MSE {error:.3e} vs constant "
            f"{error_baseline:.3e} ({epochs} epochs, {time.time() - started:.0f} s)")
    return results, images
