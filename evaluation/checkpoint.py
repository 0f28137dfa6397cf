"""`eval_latents.py --ckpt`: the evaluation of a trained model, step by step.

`evaluate_checkpoint(config)` reads as the table of contents of the evaluation:
  1. load the model and the data it was trained on;
  2. encode the evaluation rows, and build the probed codes and z's per-dimension statistics (probes.py);
  3. probes on every code and the raw-pixel ceiling (docs/evaluation.md Sec. 1; probes.py);
  4. the disentanglement_lib suite on the mean code where the data has ground-truth factors (Sec. 4; metrics.py);
  5. for specified/unspecified models on such data: the suite per block, block-DCI, leakage and the
     ground-truth swap error (Sec. 5; blocks.py);
  6. for specified/unspecified models: the predictor networks s -> z and z -> s (Sec. 3; blocks.py);
  7. codes.npz, the figures (figures.py), metrics.json and report.md (report.py).
`config` is an eval_latents.EvalConfig.
"""
import contextlib
import dataclasses
import pathlib
import sys
import time

import numpy as np

import common
import data
from evaluation import blocks, figures, metrics, probes, report, sampling

# What --quick caps: a smoke test of every step, not numbers to report.
QUICK = {"probe_epochs": 3, "patience": 2, "tsne_points": 500, "sprites_frames_per_identity": 8}


@contextlib.contextmanager
def timed(timings, step):
    """Record the wall time of the block under timings[step]."""
    tick = time.time()
    yield
    timings[step] = time.time() - tick


def evaluate_checkpoint(config):
    """Evaluate the model of config.ckpt; write report.md, metrics.json, codes.npz and the figures into config.out
    (default <run folder>/eval) and return the results that metrics.json holds."""
    if config.quick:
        for name, cap in QUICK.items():
            setattr(config, name, min(getattr(config, name), cap))
    started, timings = time.time(), {}
    model, info = load_model(config.ckpt)
    trained = info["config"]
    out = pathlib.Path(config.out) if config.out else pathlib.Path(info["run_dir"]) / "eval"
    out.mkdir(parents=True, exist_ok=True)

    def log(message):
        print(f"[{time.time() - started:6.0f} s] {message}", flush=True)

    dataset = load_data(trained["dataset"], config.data_dir or trained.get("data_dir") or None)
    rng = np.random.default_rng(config.seed)
    rows = probes.evaluation_rows(dataset, config, rng)
    all_rows = np.concatenate([rows[s] for s in ("train", "val", "test") if s in rows])
    log(f"encoding {len(all_rows)} images of {dataset.name}")
    with timed(timings, "encode"):
        codes = probes.encode(model, dataset, all_rows)
    representations, sampled_z, dimensions, only = probes.representations(codes, dataset, config)
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
               "representations": {k: list(v) for k, v in representations.items()}, "timings": timings}
    full = None  # the mean code in dataset row order, where the data has factors and every row is encoded
    if dataset.factor_names and len(all_rows) == len(dataset.images):
        full = dataset_order_code(codes, all_rows)
        with timed(timings, "disentanglement"):
            suite = disentanglement_suite(full, "s" in codes, dataset, config, log)
        results["disentanglement"], results["disentanglement_details"] = suite["disentanglement"], suite
    swap_figure = predictor_images = None
    if "disentanglement" in results and "s" in codes:
        swap_figure = block_metrics(model, full, codes["s"].shape[1], dataset, rows["test"], results, config,
                                    timings, log)
    if "s" in codes and config.predictors:
        with timed(timings, "predictors"):
            results["predictors"], predictor_images = blocks.predictor_networks(
                model, codes["s"], codes["z_mean"], tasks[dataset.specified_targets()[0]], config,
                np.random.default_rng(config.seed + 4), log)

    save_codes(out / "codes.npz", codes, sampled_z, dataset, rows)
    with timed(timings, "figures"):
        figure_entries = figures.write_figures(model, dataset, rows["test"], representations, labels, dimensions,
                                               config, out, pathlib.Path(info["run_dir"]) / "log.csv", swap_figure,
                                               predictor_images)
    timings["total"] = time.time() - started
    results["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    common.write_json(out / "metrics.json", results)
    report.write_report(out, info, results, figure_entries)
    log(f"report written to {out / 'report.md'}")
    return results


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


def load_data(name, data_dir):
    """The dataset the model was trained on, or exit with data.py's explanation."""
    try:
        return data.load_dataset(name, data_dir)
    except data.DataError as error:
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
