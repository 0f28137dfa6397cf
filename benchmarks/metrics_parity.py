"""Parity and speed of evaluation/metrics.py against disentanglement_lib's own metric code.

    PYTHONPATH=DIR_WITH_GIN python benchmarks/metrics_parity.py --reference SRC --make-arrays DIR
    PYTHONPATH=DIR_WITH_GIN python benchmarks/metrics_parity.py --reference SRC --codes DIR/*.npz [--json OUT]
    PYTHONPATH=DIR_WITH_GIN python benchmarks/metrics_parity.py --reference SRC --dsprites-like

SRC is the folder that holds the unpacked `disentanglement_lib` package (from its PyPI wheel or sdist; this
repository never copies it). The reference needs gin-config (`pip install --target DIR_WITH_GIN gin-config`) on
top of this project's NumPy, SciPy and scikit-learn; this script shims the rest at import time, leaving the
reference's files untouched:
  * `import gin.tf` (the reference imports gin's TensorFlow module for nothing but `gin.configurable`): an
    empty module, so TensorFlow is never loaded;
  * `gin.configurable(..., blacklist=...)`: gin-config 0.5 renamed the keyword to `denylist`, so the wrapper
    passes it on under the new name;
  * the reference's data sets: `FullProductData` below, a `GroundTruthData` whose observations are the row
    indices of the given (codes, factors) arrays, and whose representation function looks the codes up.

Both implementations run every metric at the study sizes of Locatello et al. 2019 (`unsupervised_study_v1`:
10,000 / 5,000 points, batch 64 for BetaVAE and FactorVAE, 20 bins, FactorVAE prune threshold 0.05) with one
RandomState(seed) per metric, metric by metric and alternately (ours, then the reference), so both see the same
machine load. The draws differ (the reference draws factor vectors and looks their rows up, ours draws rows;
the distributions agree on a full product), so the scores agree up to sampling noise. Tolerances: 0.02 on
every score, 0.04 for the FactorVAE score, 0.03 for modularity; the unsupervised scores are shown without a
tolerance (the Gaussian total correlation is not bounded by 1).

--make-arrays writes three test arrays over the full product of five factors with sizes (3, 6, 10, 8, 16)
(23,040 rows), each a deterministic function of a seed, never tuned to an answer: (a) `truth_noisy`, the
standardised factors plus noise and five pure-noise dims; (b) `linear_mix`, a random linear mixing of the
standardised factors into 10 dims plus noise; (c) `nonlinear`, a tanh of a random mixing plus products of
factor pairs, 10 dims. --dsprites-like times a dSprites-sized case (factor sizes 3, 6, 40, 32, 32, the full
737,280-row product, a random 10-dim linear code), and ours also on a random 64,000-row subset.
"""
import argparse
import json
import os
import pathlib
import sys
import time
import types

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from evaluation import metrics, sampling  # noqa: E402

SIZES = (3, 6, 10, 8, 16)
DSPRITES_SIZES = (3, 6, 40, 32, 32)

# The headline scores compared, as (our metric, our key, reference key, tolerance); None: informational.
ROWS = [
    ("beta_vae", "eval_accuracy", "eval_accuracy", 0.02),
    ("factor_vae", "eval_accuracy", "eval_accuracy", 0.04),
    ("mig", "discrete_mig", "discrete_mig", 0.02),
    ("dci", "disentanglement", "disentanglement", 0.02),
    ("dci", "completeness", "completeness", 0.02),
    ("dci", "informativeness_test", "informativeness_test", 0.02),
    ("sap", "SAP_score", "SAP_score", 0.02),
    ("modularity_explicitness", "modularity_score", "modularity_score", 0.03),
    ("modularity_explicitness", "explicitness_score_test", "explicitness_score_test", 0.02),
    ("unsupervised", "gaussian_total_correlation", "gaussian_total_correlation", None),
    ("unsupervised", "gaussian_wasserstein_correlation_norm", "gaussian_wasserstein_correlation_norm", None),
    ("unsupervised", "mutual_info_score", "mutual_info_score", None),
]


# ---------------------------------------------------------------------------------------------------------------
# Test arrays
# ---------------------------------------------------------------------------------------------------------------

def full_product(sizes):
    """Every factor combination once, in C order (the last factor varies fastest), as an (N, K) int array."""
    grids = np.meshgrid(*[np.arange(n) for n in sizes], indexing="ij")
    return np.stack(grids, axis=-1).reshape(-1, len(sizes)).astype(np.int64)


def standardise(factors):
    return (factors - factors.mean(axis=0)) / factors.std(axis=0)


def make_arrays(seed=0):
    """The three test arrays (name -> codes) over the full product of SIZES, and its factor matrix."""
    factors = full_product(SIZES)
    standard = standardise(factors.astype(np.float64))
    n, k = standard.shape
    random_state = np.random.RandomState(seed)
    arrays = {}
    # (a) Each factor in its own dim with noise of a fifth of its spread, and five dims of pure noise.
    arrays["truth_noisy"] = np.hstack([standard + 0.2 * random_state.randn(n, k), random_state.randn(n, 5)])
    # (b) A random linear mixing into 10 dims (unit-variance columns on average) plus a little noise.
    mixing = random_state.randn(k, 10) / np.sqrt(k)
    arrays["linear_mix"] = standard @ mixing + 0.1 * random_state.randn(n, 10)
    # (c) A saturating random mixing plus a product of two factors per dim: information kept, entangled.
    weights, bias = random_state.randn(k, 10), 0.5 * random_state.randn(10)
    first = random_state.randint(k, size=10)
    second = (first + 1 + random_state.randint(k - 1, size=10)) % k  # a different factor than `first`
    arrays["nonlinear"] = (np.tanh(standard @ weights + bias) + 0.5 * standard[:, first] * standard[:, second]
                           + 0.1 * random_state.randn(n, 10))
    return arrays, factors


def dsprites_like(seed=0):
    """A random 10-dim linear code over the full product of dSprites' factor sizes (737,280 rows)."""
    factors = full_product(DSPRITES_SIZES)
    random_state = np.random.RandomState(seed)
    standard = standardise(factors.astype(np.float64))
    codes = standard @ (random_state.randn(len(DSPRITES_SIZES), 10) / np.sqrt(len(DSPRITES_SIZES)))
    return (codes + 0.1 * random_state.randn(*codes.shape)).astype(np.float32), factors


# ---------------------------------------------------------------------------------------------------------------
# The reference library, loaded from its unpacked source with the shims of the module docstring
# ---------------------------------------------------------------------------------------------------------------

def load_reference(source):
    """Import disentanglement_lib's metric modules from `source`; return them and the GroundTruthData base."""
    source = pathlib.Path(source).resolve()
    if not (source / "disentanglement_lib" / "evaluation" / "metrics" / "dci.py").is_file():
        sys.exit(f"error: {source} does not hold disentanglement_lib/evaluation/metrics/dci.py; pass the folder "
                 "that contains the unpacked disentanglement_lib package (e.g. unzip its PyPI wheel)")
    try:
        import gin
    except ImportError:
        sys.exit("error: the reference needs gin-config: pip install --target DIR gin-config and put DIR on "
                 "PYTHONPATH (this project's own environment does not need it)")
    original = gin.configurable

    def configurable(name_or_fn=None, module=None, allowlist=None, denylist=None, whitelist=None, blacklist=None):
        """gin.configurable that still accepts the keywords whitelist / blacklist of gin-config < 0.4."""
        return original(name_or_fn, module=module, allowlist=allowlist or whitelist, denylist=denylist or blacklist)

    gin.configurable = configurable
    sys.modules["gin.tf"] = gin.tf = types.ModuleType("gin.tf")
    sys.path.insert(0, str(source))
    from disentanglement_lib.data.ground_truth import ground_truth_data
    from disentanglement_lib.evaluation.metrics import (
        beta_vae,
        dci,
        factor_vae,
        mig,
        modularity_explicitness,
        sap_score,
        unsupervised_metrics,
    )
    # The study's gin bindings for what the metric functions do not take as arguments.
    gin.parse_config(["discretizer.discretizer_fn = @histogram_discretizer", "discretizer.num_bins = 20",
                      "prune_dims.threshold = 0.05"])
    study = metrics.STUDY_SETTINGS
    functions = {
        "beta_vae": lambda data, represent, rs: beta_vae.compute_beta_vae_sklearn(
            data, represent, rs, **study["beta_vae"]),
        "factor_vae": lambda data, represent, rs: factor_vae.compute_factor_vae(
            data, represent, rs, batch_size=study["factor_vae"]["batch_size"],
            num_train=study["factor_vae"]["num_train"], num_eval=study["factor_vae"]["num_eval"],
            num_variance_estimate=study["factor_vae"]["num_variance_estimate"]),
        "mig": lambda data, represent, rs: mig.compute_mig(data, represent, rs, num_train=study["mig"]["num_train"]),
        "dci": lambda data, represent, rs: dci.compute_dci(data, represent, rs, **study["dci"]),
        "sap": lambda data, represent, rs: sap_score.compute_sap(data, represent, rs, **study["sap"]),
        "modularity_explicitness": lambda data, represent, rs: modularity_explicitness.compute_modularity_explicitness(
            data, represent, rs, num_train=study["modularity_explicitness"]["num_train"],
            num_test=study["modularity_explicitness"]["num_test"]),
        "unsupervised": lambda data, represent, rs: unsupervised_metrics.unsupervised_metrics(
            data, represent, rs, num_train=study["unsupervised"]["num_train"]),
    }
    return functions, ground_truth_data.GroundTruthData


def full_product_data(base, factors):
    """A reference GroundTruthData over a full factor product whose observations are row indices."""
    sizes = factors.max(axis=0) + 1
    lookup = np.full(sizes, -1, dtype=np.int64)
    lookup[tuple(factors.T)] = np.arange(len(factors))
    if np.any(lookup < 0) or len(factors) != lookup.size:
        sys.exit("error: the reference looks up any factor combination, so the factors must be the full product "
                 "of values 0..n_k-1, each combination once")

    class FullProductData(base):
        """Factors drawn independently and uniformly per factor (as the library's state spaces do)."""

        @property
        def num_factors(self):
            return len(sizes)

        @property
        def factors_num_values(self):
            return [int(n) for n in sizes]

        @property
        def observation_shape(self):
            return []

        def sample_factors(self, num, random_state):
            drawn = np.zeros((num, len(sizes)), dtype=np.int64)
            for k, n in enumerate(sizes):
                drawn[:, k] = random_state.randint(n, size=num)
            return drawn

        def sample_observations_from_factors(self, factors, random_state):
            return lookup[tuple(np.asarray(factors).T)]

    return FullProductData()


# ---------------------------------------------------------------------------------------------------------------
# Side-by-side runs
# ---------------------------------------------------------------------------------------------------------------

def cpu_seconds():
    """CPU time of this process and of its live child processes (joblib's loky workers stay alive between
    calls, so the rusage of reaped children would miss them); the children are read from /proc (Linux)."""
    total = time.process_time()
    children = pathlib.Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    if children.exists():
        for pid in children.read_text().split():
            try:
                fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # the worker exited meanwhile
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return total


def compare(codes, factors, reference, seed=0, log=print):
    """Every metric, ours then the reference's, alternately; per metric both results and wall times."""
    functions, base = reference
    data = full_product_data(base, factors) if functions else None
    represent = sampling.codes_representation(codes)
    sampler = sampling.FactorSampler(factors)
    out = {}
    for name, metric in metrics.METRICS.items():
        start, start_cpu = time.perf_counter(), cpu_seconds()
        ours = metric(represent, sampler, seed=seed, **metrics.STUDY_SETTINGS[name])
        ours_seconds, ours_cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
        theirs, theirs_seconds, theirs_cpu = None, None, None
        if functions:
            start, start_cpu = time.perf_counter(), cpu_seconds()
            theirs = functions[name](data, lambda rows: codes[rows], np.random.RandomState(seed))
            theirs_seconds, theirs_cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
        # Wall time, and the CPU time of this process's threads and of its worker processes (DCI's loky
        # workers), which is less sensitive to other load.
        out[name] = {"ours": ours, "reference": theirs, "ours_seconds": ours_seconds,
                     "reference_seconds": theirs_seconds, "ours_cpu_seconds": ours_cpu,
                     "reference_cpu_seconds": theirs_cpu}
        log(f"  {name}: ours {ours_seconds:.1f} s (cpu {ours_cpu:.1f} s)"
            + (f", reference {theirs_seconds:.1f} s (cpu {theirs_cpu:.1f} s)" if functions else ""))
    return out


def table(results):
    """Markdown table: metric, ours, reference, |difference|, tolerance, and both timings per metric."""
    lines = ["| metric | ours | reference | abs diff | tolerance | ok | ours s | reference s |",
             "|---|---|---|---|---|---|---|---|"]
    shown, failures = set(), []
    for metric, ours_key, ref_key, tolerance in ROWS:
        entry = results[metric]
        ours = float(entry["ours"][ours_key])
        ref = float(entry["reference"][ref_key]) if entry["reference"] is not None else float("nan")
        difference = abs(ours - ref)
        ok = "" if tolerance is None or np.isnan(ref) else ("yes" if difference <= tolerance else "**NO**")
        if ok == "**NO**":
            failures.append(f"{metric}/{ours_key}")
        timing = ("", "")
        if metric not in shown:
            shown.add(metric)
            timing = (f"{entry['ours_seconds']:.1f}",
                      f"{entry['reference_seconds']:.1f}" if entry["reference_seconds"] is not None else "")
        lines.append(f"| {metric}/{ours_key} | {ours:.4f} | {ref:.4f} | {difference:.4f} | "
                     f"{'' if tolerance is None else tolerance} | {ok} | {timing[0]} | {timing[1]} |")
    ours_total = sum(entry["ours_seconds"] for entry in results.values())
    ref_total = sum(entry["reference_seconds"] or 0.0 for entry in results.values())
    lines.append(f"| total | | | | | | {ours_total:.1f} | {ref_total:.1f} |")
    if all("ours_cpu_seconds" in entry for entry in results.values()):
        ours_cpu = sum(entry["ours_cpu_seconds"] for entry in results.values())
        ref_cpu = sum(entry["reference_cpu_seconds"] or 0.0 for entry in results.values())
        dci = results["dci"]
        lines.append(f"| total CPU time (DCI alone: ours {dci['ours_cpu_seconds']:.1f}, reference "
                     f"{dci['reference_cpu_seconds'] or 0.0:.1f}) | | | | | | {ours_cpu:.1f} | {ref_cpu:.1f} |")
    return "\n".join(lines), failures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", help="folder holding the unpacked disentanglement_lib package")
    parser.add_argument("--make-arrays", metavar="DIR", help="write the three test arrays as DIR/<name>.npz")
    parser.add_argument("--codes", nargs="*", default=[], help=".npz files with codes (N, D), factors (N, K)")
    parser.add_argument("--dsprites-like", action="store_true", help="time the dSprites-sized case")
    parser.add_argument("--ours-only", action="store_true", help="skip the reference (timing of ours alone)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write every result and timing to this JSON file")
    args = parser.parse_args(argv)

    if args.make_arrays:
        folder = pathlib.Path(args.make_arrays)
        folder.mkdir(parents=True, exist_ok=True)
        arrays, factors = make_arrays(args.seed)
        for name, codes in arrays.items():
            np.savez(folder / f"{name}.npz", codes=codes.astype(np.float32), factors=factors,
                     factor_names=np.array([f"f{k}_{n}" for k, n in enumerate(SIZES)]))
            print(f"wrote {folder / name}.npz: codes {codes.shape}, factors {factors.shape}")
    if not args.codes and not args.dsprites_like:
        return
    reference = ({}, None) if args.ours_only else load_reference(args.reference or sys.exit(
        "error: pass --reference SRC (or --ours-only)"))
    cases = [(pathlib.Path(path).stem, lambda path=path: load(path)) for path in args.codes]
    if args.dsprites_like:
        cases.append(("dsprites_like_full_product", lambda: dsprites_like(args.seed)))
    report = {}
    for name, get in cases:
        codes, factors = get()
        print(f"## {name}: {codes.shape[0]} rows, {codes.shape[1]} code dims, factor sizes "
              f"{[int(n) for n in factors.max(axis=0) + 1]}", flush=True)
        results = compare(codes, factors, reference, args.seed)
        text, failures = table(results)
        print(text + ("\n" + f"outside tolerance: {', '.join(failures)}" if failures else "") + "\n", flush=True)
        report[name] = results
        if name.startswith("dsprites_like"):
            # Ours on a random 64,000-row subset (the reference needs the full product).
            rows = np.sort(np.random.RandomState(args.seed).choice(len(codes), 64000, replace=False))
            print("## dsprites_like_subset_64000 (ours only)", flush=True)
            subset = compare(codes[rows], factors[rows], ({}, None), args.seed)
            report["dsprites_like_subset_64000"] = subset
            print(table(subset)[0] + "\n", flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=1, default=float))


def load(path):
    with np.load(path) as archive:
        return archive["codes"], archive["factors"].astype(np.int64)


if __name__ == "__main__":
    main()
