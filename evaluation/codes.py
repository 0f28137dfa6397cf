"""Scoring given codes: the metric suite on an (N, D) code array and an (N, K) factor array (`eval_latents.py --codes`).

    python eval_latents.py --codes FILE.npz [--out FILE.json] [--fast] [--seed N]
    results = score_codes(codes, factors, seed=0)        # the same on arrays in memory

The .npz holds `codes` (N, D) float and `factors` (N, K) integer class indices (optionally `factor_names`), one
row per dataset item; those rows are the dataset the metrics draw from, so any subset of a factor product works
(evaluation/sampling.py). The arrays are checked first, and every problem is a CodesError whose message names
the fix. The results JSON records the preset, every metric's settings and method, the seed, the factors and the
package versions (docs/evaluation.md Sec. 6).
"""
import dataclasses
import pathlib
import sys
import time
import zipfile

import numpy as np

from evaluation import metrics, sampling

# The classifiers and estimators behind the settings, recorded with every result (docs/evaluation.md Sec. 6).
METHODS = {
    "representation": "given codes, one row per dataset item (for a model: the encoder mean)",
    "sampling": "uniform draws of dataset rows; 'factor k fixed' draws from the rows that share its value",
    "beta_vae": "sklearn LogisticRegression() with current defaults",
    "factor_vae": "majority vote over argmin of local/global variance (ddof 1), active dims std >= threshold",
    "mig": "histogram_discretize with num_bins equal-width bins, sklearn mutual_info_score (nats)",
    "dci": "sklearn GradientBoostingClassifier() defaults (grown by evaluation/trees.py, the same trees), one per "
           "factor, seeded per factor from the metric seed",
    "sap": "sklearn LinearSVC(C=0.01, class_weight='balanced') per code dim and factor (discrete factors)",
    "modularity_explicitness": "modularity on the binned MI matrix; explicitness: LogisticRegression() on "
                               "standardised codes, one-vs-rest ROC-AUC macro-averaged over classes",
    "unsupervised": "Gaussian total/Wasserstein correlation of the code covariance (ddof 1), mean pairwise binned MI",
}


# How many rows the suite needs. The binned metrics (MIG, modularity, the unsupervised MI) cut each code dim into
# num_bins = 20 equal-width bins: with fewer rows than bins nearly every row gets a bin of its own, so every dim
# has the same mutual information with every factor, whatever it encodes. Below MIN_ROWS the scores mean
# nothing, so they are refused.
# Every metric draws its train and test points uniformly WITH replacement from the rows, 500 to 10,000 of them:
# below FEW_ROWS (the fast preset's smallest train draw) the held-out points are mostly rows also drawn for
# training, so held-out accuracies (DCI informativeness, SAP, explicitness, the BetaVAE/FactorVAE scores) read
# as training accuracies. Such scores are written with a warning, in the JSON's "warnings" as well.
MIN_ROWS = 20
FEW_ROWS = 1000


# The eval_latents.EvalConfig fields that --codes uses; the others set the evaluation of a model.
CODES_FLAGS = ("codes", "out", "seed", "fast")


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
    sampler = sampling.FactorSampler(factors)
    distinct_rows = len(np.unique(factors, axis=0))
    return {"names": list(names) if names is not None else [f"factor_{k}" for k in range(factors.shape[1])],
            "sizes": sizes, "num_rows": int(len(factors)), "min_group_size": sampler.min_group_size(),
            "distinct_combinations": int(distinct_rows),
            "full_product": bool(distinct_rows == int(np.prod(sizes, dtype=np.float64)))}


def score_codes(codes, factors, seed=0, fast=False, progress=print):
    """The whole metric suite on given codes: `codes` (N, D) float, `factors` (N, K) integer, one row per item.

    The rows define the dataset that the metrics sample from (`sampling.FactorSampler`): the observational metrics draw
    rows uniformly, and the interventional ones (BetaVAE, FactorVAE scores) draw rows sharing a factor's value,
    so on a subset of the factor product the other factors follow the data's conditional distribution.
    `fast=True` is the in-training preset (metrics.FAST_SETTINGS); the default uses the study sizes of Locatello et al.
    2019. Returns the dict of `metrics.all_metrics` (flat headline scores under "disentanglement", per-metric seconds,
    settings and every metric's raw output) and "warnings": why the scores are weak, for fewer than FEW_ROWS rows
    or a factor value held by one row. Raises CodesError for arrays that cannot be scored, fewer than MIN_ROWS
    rows included.
    """
    codes, factors = check_codes_and_factors(codes, factors)
    try:
        sampler = sampling.FactorSampler(factors)
    except ValueError as error:
        raise CodesError(str(error)) from None
    if len(codes) < MIN_ROWS:
        raise CodesError(f"{len(codes)} rows are too few to score: the suite needs at least {MIN_ROWS} rows (its "
                         "binned metrics cut each code dim into 20 bins, and with fewer rows than bins the binned "
                         "mutual information tells the rows apart instead of measuring the code); pass the codes of "
                         "more dataset items")
    results = metrics.all_metrics(sampling.codes_representation(codes), sampler, seed=seed, fast=fast,
                                  progress=progress)
    results["warnings"] = few_rows_warnings(len(codes), sampler.min_group_size())
    return results


def few_rows_warnings(num_rows, min_group_size):
    """Why scores of this many rows (and this smallest group of rows sharing a factor value) are weak, if they are."""
    warnings = []
    if num_rows < FEW_ROWS:
        warnings.append(f"only {num_rows} rows (fewer than {FEW_ROWS}): the metrics draw their train and test points "
                        "with replacement from these rows, so held-out scores mostly re-test training rows; treat "
                        "the numbers as a smoke test, not as results")
    if min_group_size < 2:
        warnings.append("a factor value occurs in one row only: the BetaVAE and FactorVAE draws that fix it always "
                        "get that same row, which inflates both scores")
    return warnings


def default_scores_path(codes_path):
    """FILE.metrics.json beside FILE.npz."""
    codes_path = pathlib.Path(codes_path)
    return codes_path.with_name(codes_path.stem + ".metrics.json")


def load_codes_file(path):
    """(codes, factors, factor_names or None) from an .npz with arrays `codes`, `factors` [, `factor_names`]."""
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
    representation, package versions, date and timings, each metric's raw output under "metrics", and the
    "warnings" of `score_codes` (also printed to stderr). Raises CodesError (message names the problem and the
    fix) for a file that cannot be scored.
    """
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
    for warning in results["warnings"]:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    finished = time.perf_counter()
    raw = {name: results[name] for name in metrics.METRICS}
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
        "warnings": results["warnings"],
        "versions": common.package_versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "timings": {"load": loaded - started, "metrics": finished - loaded, "total": finished - started},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    common.write_json(out, report)
    if progress is not None:
        progress(f"[metrics] written to {out} ({finished - started:.1f} s)")
    return report


def score_given_codes(config):
    """`eval_latents.py --codes FILE`: score the file and write its JSON, or exit with the problem and the fix."""
    if config.ckpt:
        sys.exit("error: --ckpt and --codes exclude each other: pass a model (--ckpt) or an .npz of codes and "
                 "factors (--codes), not both.")
    model_flags = [field.name for field in dataclasses.fields(config) if field.name not in CODES_FLAGS
                   and field.default is not dataclasses.MISSING and getattr(config, field.name) != field.default]
    if model_flags:
        flags = ", ".join("--" + ("no-" if getattr(config, name) is False else "") + name.replace("_", "-")
                          for name in model_flags)
        print(f"notice: {flags} {'is' if len(model_flags) == 1 else 'are'} ignored with --codes: "
              f"{'it sets' if len(model_flags) == 1 else 'they set'} the evaluation of a model (--ckpt)",
              file=sys.stderr, flush=True)
    try:
        return score_codes_file(config.codes, config.out or None, config.fast, config.seed)
    except CodesError as error:
        sys.exit(f"error: {error}")
    except OSError as error:  # the results JSON could not be written (it is written atomically: none is half)
        import common

        sys.exit(f"error: {common.describe_error(error, 'writing the results JSON')}")
