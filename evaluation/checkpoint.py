"""`eval_latents.py --ckpt`: the evaluation of a trained model, step by step.

`evaluate_checkpoint(config)` reads as the table of contents of the evaluation:
  1. load the model and the data it was trained on; check the size flags against the data and say which flags
     do not apply to this model or data;
  2. encode the evaluation rows, and build the probed codes and z's per-dimension statistics (probes.py);
  3. probes on every code and the raw-pixel ceiling (docs/evaluation.md Sec. 1; probes.py);
  4. the disentanglement_lib suite on the mean code where the data has ground-truth factors (Sec. 4; metrics.py);
  5. for specified/unspecified models on such data: the suite per block, block-DCI, leakage and the
     ground-truth swap error (Sec. 5; blocks.py);
  6. for specified/unspecified models: the predictor networks s -> z and z -> s (Sec. 3; blocks.py);
  7. codes.npz and metrics.json, then the figures (figures.py, each on its own) and report.md (report.py).
`--probes-only` stops after step 3 and writes codes.npz, metrics.json and report.md (no figures).
Everything is written into a staging folder that replaces the output folder only when complete
(evaluation/output.py). `config` is an eval_latents.EvalConfig.
"""
import contextlib
import dataclasses
import pathlib
import sys
import time

import numpy as np

import common
import data
from evaluation import blocks, figures, metrics, output, probes, report, sampling

# What --quick caps: a smoke test of every step, not numbers to report.
QUICK = {"probe_epochs": 3, "patience": 2, "tsne_points": 500, "sprites_frames_per_identity": 8}


@contextlib.contextmanager
def timed(timings, step):
    """Record the wall time of the block under timings[step]."""
    tick = time.time()
    yield
    timings[step] = time.time() - tick


def notice(message, notices=None):
    """One line on stderr about a setting that was ignored, capped or tidied up (kept in `notices` if given)."""
    print(f"notice: {message}", file=sys.stderr, flush=True)
    if notices is not None:
        notices.append(message)


def refuse(message):
    """Exit with status 2, as argparse does for a bad flag: the flag's value does not fit the data."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def changed_flags(config):
    """The config fields whose value differs from the default: the flags the user gave explicitly."""
    return {field.name for field in dataclasses.fields(config)
            if field.default is not dataclasses.MISSING and getattr(config, field.name) != field.default}


def flag_text(name, value):
    """How a field and its value read on the command line: --swap-pairs 100, --no-predictors."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {value}"


def evaluate_checkpoint(config):
    """Evaluate the model of config.ckpt; write report.md, metrics.json, codes.npz and the figures into config.out
    (default <run folder>/eval) and return the results that metrics.json holds.

    The folder is replaced whole once everything is written (evaluation/output.py); a failure before that leaves
    the previous evaluation as it was. A figure that fails is reported and the rest is written; then the process
    exits with status 1 and a message naming it.
    """
    changed = changed_flags(config)  # before --quick lowers some of them
    capped = {}
    if config.quick:
        for name, cap in QUICK.items():
            if getattr(config, name) > cap and name in changed:
                capped[name] = (getattr(config, name), cap)
            setattr(config, name, min(getattr(config, name), cap))
    started = time.time()
    model, info = load_model(config.ckpt)
    folder = "eval_probes" if config.probes_only else "eval"  # a probes-only read never replaces a full evaluation
    if config.out:
        out = pathlib.Path(config.out)
    elif info["run_dir"] is not None:
        out = pathlib.Path(info["run_dir"]) / folder
    else:  # an exported checkpoint (pretrained/): its folder is not a run folder to write into
        out = pathlib.Path("runs") / f"{folder}_{pathlib.Path(info['path']).stem}"
    out = out.resolve()

    def log(message):
        print(f"[{time.time() - started:6.0f} s] {message}", flush=True)

    try:
        with output.staged_folder(out, report=lambda line: print(line, file=sys.stderr, flush=True)) as folder:
            results = evaluate_into(folder, model, info, config, changed, capped, started, log)
    except output.OutputFolderError as error:
        sys.exit(f"error: {error}")
    except OSError as error:  # a full disk, a folder that cannot be written
        kept = (f"The previous evaluation in {out} is untouched." if (out / "metrics.json").is_file() else
                f"Nothing was written to {out}.")
        sys.exit(f"error: {common.describe_error(error, 'the evaluation')} {kept}")
    log(f"report written to {out / 'report.md'}")
    failed = results["figures"]["failed"]
    if failed:
        reasons = "; ".join(f"{name} ({reason})" for name, reason in failed.items())
        sys.exit(f"error: {'figure' if len(failed) == 1 else 'figures'} failed: {reasons}; the numbers are in "
                 f"{out / 'metrics.json'}" + ("" if "report.md" in failed else " and report.md lists the failure"))
    return results


def evaluate_into(out, model, info, config, changed, capped, started, log):
    """Steps 1-7 of the module docstring (the model already loaded), writing into the folder `out`; returns the
    results that metrics.json holds, with results["figures"]["failed"] naming the outputs that failed."""
    timings = {}
    trained = info["config"]
    dataset = load_data(trained["dataset"], config.data_dir, trained.get("data_dir"),
                        info.get("record_path") or pathlib.Path(info["run_dir"]) / "config.json")
    notices = check_sizes(config, dataset, changed, capped)
    has_s = "s" in probes.encode(model, dataset, dataset.rows("test")[:1])
    notices += flag_notices(config, dataset, has_s, changed)
    rng = np.random.default_rng(config.seed)
    rows = probes.evaluation_rows(dataset, config, rng)
    all_rows = np.concatenate([rows[s] for s in ("train", "val", "test") if s in rows])
    log(f"encoding {len(all_rows)} images of {dataset.name}")
    with timed(timings, "encode"):
        codes = probes.encode(model, dataset, all_rows)
    representations, sampled_z, dimensions, only = probes.representations(codes, dataset, config)
    if hasattr(model, "encode_groups") and "s" in codes:  # the ML-VAE: the class code with label-free evidence
        log(f"encoding {len(all_rows)} images again as groups of {probes.EVIDENCE_VIEWS} shifted views")
        with timed(timings, "evidence"):
            mean, logvar = probes.evidence_codes(model, dataset, all_rows, seed=config.seed + 5)
        noise = np.random.default_rng(config.seed + 6).standard_normal(mean.shape)
        representations["s_evidence"] = {"mean": mean, "sampled": (mean + np.exp(0.5 * logvar) * noise).astype(
            np.float32)}
    labels = {name: np.asarray(column)[all_rows] for name, column in dataset.label_columns().items()}
    tasks = probes.probe_tasks(dataset, rows, rng)
    with timed(timings, "probes"):
        probe_results, probe_details = probes.run_probes(representations, labels, tasks, config, log, only)
    with timed(timings, "pixel_ceiling"):
        pixels = probes.pixel_ceiling(dataset, all_rows, labels, tasks, config, log)
    probe_results.update(pixels["probes"]), probe_details.update(pixels["details"])
    representations["pixels"] = {"mean": None}

    results = {"schema": 1, "checkpoint": str(config.ckpt), "model": info["script"], "dataset": dataset.name,
               "config": trained, "eval_config": dataclasses.asdict(config), "eval_seed": config.seed,
               "training_seed": trained.get("seed"), "versions": common.package_versions(), "date": None,
               "rows": {k: len(v) for k, v in rows.items()}, "probes": probe_results, "probe_details": probe_details,
               "chance": probes.chance_levels(labels, tasks), "z_dimensions": dimensions,
               "representations": {k: list(v) for k, v in representations.items()}, "notices": notices,
               "timings": timings}
    if info["run_dir"] is not None:  # which epoch a read taken during training saw
        results["trained_epochs"] = logged_epochs(pathlib.Path(info["run_dir"]) / "log.csv")
    full = None  # the mean code in dataset row order, where the data has factors and every row is encoded
    if dataset.factor_names and len(all_rows) == len(dataset.images) and not config.probes_only:
        full = dataset_order_code(codes, all_rows)
        with timed(timings, "disentanglement"):
            suite = disentanglement_suite(full, "s" in codes, dataset, config, log)
        results["disentanglement"], results["disentanglement_details"] = suite["disentanglement"], suite
    swap_figure = predictor_images = None
    if "disentanglement" in results and "s" in codes:
        swap_figure = block_metrics(model, full, codes["s"].shape[1], dataset, rows["test"], results, config,
                                    timings, log)
    if "s" in codes and config.predictors and not config.probes_only:
        with timed(timings, "predictors"):
            results["predictors"], predictor_images = blocks.predictor_networks(
                model, codes["s"], codes["z_mean"], tasks[dataset.specified_targets()[0]], config,
                np.random.default_rng(config.seed + 4), log)

    # The numbers first: a figure that fails must not take them along.
    save_codes(out / "codes.npz", codes, sampled_z, dataset, rows)
    results["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    common.write_json(out / "metrics.json", results)
    figure_entries, failed = [], {}
    if not config.probes_only:
        with timed(timings, "figures"):
            log_csv = (pathlib.Path(info["run_dir"]) / "log.csv" if info["run_dir"] is not None
                       else common.log_beside(info["path"]))  # an exported checkpoint's log lies beside it
            figure_entries, failed = figures.write_figures(
                model, dataset, rows["test"], representations, labels, dimensions, config, out, log_csv,
                swap_figure, predictor_images, log=log)
    results["figures"] = {"written": [file for _, file in figure_entries], "failed": failed}
    timings["total"] = time.time() - started
    try:
        report.write_report(out, info, results, figure_entries)
    except Exception as error:  # the numbers are written; a report that fails is named like a failed figure
        failed["report.md"] = figures.one_line(error)
        log(f"report.md failed: {failed['report.md']}")
        (out / "report.md").unlink(missing_ok=True)
    common.write_json(out / "metrics.json", results)
    return results


def check_sizes(config, dataset, changed, capped):
    """Check the size flags against the data before any work; returns the notices given.

    `--sprites-frames-per-identity` beyond the frames of the smallest train or validation identity cannot be
    drawn: refused (exit 2). `--tsne-points` beyond the test set is capped at it (the plot shows every test
    code), with a notice where the value was given explicitly; metrics.json records the value used.
    """
    notices = []
    for name, (asked, cap) in capped.items():
        if name != "sprites_frames_per_identity" or dataset.split_label() is not None:
            notice(f"{flag_text(name, asked)} is capped at {cap} by --quick (a smoke test); drop --quick for the "
                   "setting you gave", notices)
    group = dataset.split_label()
    if group is not None:
        fewest = min(int(np.unique(dataset.labels[group][dataset.rows(split)], return_counts=True)[1].min())
                     for split in ("train", "val"))
        if config.sprites_frames_per_identity > fewest:
            refuse(f"--sprites-frames-per-identity {config.sprites_frames_per_identity} is more than the "
                   f"{fewest} frames of the smallest train or validation {group} of {dataset.name}: pass at most "
                   f"{fewest}.")
    test_rows = len(dataset.rows("test"))
    if config.tsne_points > test_rows:
        if "tsne_points" in changed and not config.probes_only:  # else flag_notices says it is ignored
            notice(f"--tsne-points {config.tsne_points} is more than the {test_rows} test rows of {dataset.name}; "
                   f"the t-SNE plots show all {test_rows}", notices)
        config.tsne_points = test_rows
    return notices


def flag_notices(config, dataset, has_s, changed):
    """A notice for each flag given explicitly that this model or data ignores, saying why; returns them."""
    no_s = "the model has no specified code s"
    no_factors = f"{dataset.name} has no ground-truth factors"
    ignored = {
        "predictors": None if has_s else f"{no_s}, and the predictor networks map s -> z and z -> s",
        "swap_pairs": (None if has_s and dataset.factor_names else
                       f"{no_s if not has_s else no_factors}, and the ground-truth swap error needs both"),
        "sprites_frames_per_identity": (None if dataset.split_label() is not None else
                                        f"{dataset.name} has no identity split (the flag is for Sprites)"),
        "fast": (None if dataset.factor_names else
                 f"{no_factors}, so the disentanglement suite whose preset it picks does not run"),
    }
    if config.probes_only:  # these belong to the steps that --probes-only skips
        for name in ("predictors", "swap_pairs", "fast", "tsne_points"):
            ignored[name] = "--probes-only runs the probes alone"
    notices = []
    for name, why in ignored.items():
        if why is not None and name in changed:
            notice(f"{flag_text(name, getattr(config, name))} is ignored: {why}", notices)
    return notices


def logged_epochs(log_csv):
    """The epochs a run's log.csv records (its rows below the header), or None where it cannot be read."""
    try:
        with open(log_csv) as handle:
            return max(sum(1 for line in handle if line.strip()) - 1, 0)
    except OSError:
        return None


def load_model(path):
    """The model and its run record (common.load_checkpoint), or exit with the problem and the fix."""
    try:
        model, info = common.load_checkpoint(path)
    except common.CheckpointError as error:
        sys.exit(f"error: {error}")
    if not (hasattr(model, "encode") and hasattr(model, "decode")):
        sys.exit(f"error: {path} holds a {type(model).__name__}, which lacks the encode/decode interface "
                 f"that eval_latents.py needs (see its docstring).")
    return model, info


def load_data(name, data_dir=None, stored=None, record=None):
    """The dataset the model was trained on, or exit saying which data directory is missing and how to fix it.

    The data directory is --data-dir (`data_dir`), else the one the run's config.json (`record`) names
    (`stored`), else data.py's default. Runs before the training scripts stored absolute paths hold a path
    relative to wherever training was started, which the current directory need not be: that is said as such,
    rather than blaming a --data-dir the user never passed.
    """
    from_record = stored if not data_dir else None
    if from_record:
        path = pathlib.Path(from_record).expanduser()
        if not path.is_dir():
            where = "does not exist" if path.is_absolute() else (
                f"does not exist from the current directory ({pathlib.Path.cwd()}; a relative path there is "
                "relative to the folder training was started in)")
            sys.exit(f"error: the run's config.json ({record}) names the data directory {from_record}, which "
                     f"{where}. Pass --data-dir DIR, the folder that holds {name}/.")
    try:
        return data.load_dataset(name, data_dir or from_record or None)
    except data.DataError as error:
        if from_record:
            sys.exit(f"error: {error} (The data directory {from_record} is the one the run's config.json, "
                     f"{record}, names.)")
        sys.exit(f"error: {error}")


def dataset_order_code(codes, all_rows):
    """The mean code ([s, z_mean] for the specified/unspecified models, else z_mean) in dataset row order."""
    mean_code = np.concatenate([codes["s"], codes["z_mean"]], 1) if "s" in codes else codes["z_mean"]
    full = np.empty_like(mean_code)
    full[all_rows] = mean_code
    return full


def disentanglement_suite(full, has_s, dataset, config, log):
    """The disentanglement_lib suite (docs/evaluation.md Sec. 4) on the mean code over the dataset's factors.

    Every row of the dataset is encoded, so the interventional metrics look their draws up instead of
    re-encoding ~2.9M images. `--quick` or `--fast` use the fast preset.
    """
    preset = config.quick or config.fast
    representation = "[s, z_mean]" if has_s else "z_mean"
    log(f"disentanglement metrics ({'fast preset' if preset else 'study sizes'}) on the {representation} code over "
        f"{', '.join(dataset.factor_names)}")
    suite = metrics.all_metrics(sampling.codes_representation(full),
                                sampling.FactorSampler(dataset.labels["factors"]), seed=config.seed,
                                fast=preset, progress=log)
    suite["representation"] = representation
    suite["factor_names"], suite["factor_sizes"] = list(dataset.factor_names), list(dataset.factor_sizes)
    return suite


def block_metrics(model, full, s_dims, dataset, test_rows, results, config, timings, log):
    """Specified/unspecified models on data with factors (docs/evaluation.md Sec. 5): the suite per block, block-DCI
    and leakage into results["blocks"], the ground-truth swap error into results["ground_truth_swap"]; returns the
    swap figure."""
    specified = [list(dataset.factor_names).index(target) for target in dataset.specified_targets()]
    with timed(timings, "blocks_and_leakage"):
        results["blocks"] = blocks.specified_unspecified_metrics(
            sampling.codes_representation(full), sampling.FactorSampler(dataset.labels["factors"]),
            s_dims, specified, dataset.factor_names, seed=config.seed, fast=config.quick or config.fast,
            importance=results["disentanglement_details"]["dci"]["importance_matrix"], progress=log)
    with timed(timings, "ground_truth_swap"):
        swap, figure = blocks.ground_truth_swap_error(model, dataset, full[:, :s_dims], full[:, s_dims:], specified,
                                                      test_rows, np.random.default_rng(config.seed + 3),
                                                      config.swap_pairs)
    log(f"ground-truth swap error over {swap['pairs_scored']} test pairs (coverage {swap['coverage']:.2f}): BCE "
        f"{swap['swap']['bce']:.1f} nats (floor {swap['floor']['bce']:.1f}), IoU {swap['swap']['iou']:.3f} (floor "
        f"{swap['floor']['iou']:.3f})")
    results["ground_truth_swap"] = swap
    return figure


def save_codes(path, codes, sampled_z, dataset, rows):
    """codes.npz: keys <name>_<split> (codes, the sampled z, the dataset's labels and rows), so that any other tool
    can re-score the same codes."""
    arrays, start = {}, 0
    for split in ("train", "val", "test"):
        if split not in rows:
            continue
        part = slice(start, start + len(rows[split]))
        start += len(rows[split])
        for key, values in codes.items():
            arrays[f"{key}_{split}"] = values[part]
        arrays[f"z_sampled_{split}"] = sampled_z[part].astype(np.float32)
        for key in dataset.saved_labels():
            arrays[f"{key}_{split}"] = dataset.labels[key][rows[split]]
        arrays[f"row_{split}"] = rows[split]
    np.savez_compressed(path, **arrays)
