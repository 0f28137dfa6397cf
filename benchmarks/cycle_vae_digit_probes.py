"""Digit probes on MNIST cycle-VAE checkpoints: s, z mean, z sampled and the means of z's active dimensions.

    python benchmarks/cycle_vae_digit_probes.py --data-dir DIR runs/sw_l1_e8/model.keras [...]

The probes of evaluation/probes.py (its rows, encoding and `train_probe`; 40 epochs at most, patience 5), without the
rest of its report, so that a sweep of short runs can be scored quickly. Prints one JSON line per checkpoint: the
total and per-dimension KL of z, the number of active dimensions (KL >= 0.1 nats), the standard deviation across
images of each inactive dimension's mean, and the MLP and linear test accuracy (%) per code. This is what the
README's 5-epoch MNIST sweep tables report.
"""
import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import data  # noqa: E402
import eval_latents  # noqa: E402
from evaluation import probes  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="cycle_vae.py MNIST model.keras files")
    parser.add_argument("--data-dir", default=None, help="folder with the dataset (as for cycle_vae.py)")
    args = parser.parse_args()
    dataset = data.load_dataset("mnist", args.data_dir)
    for checkpoint in args.checkpoints:
        model, _ = common.load_checkpoint(checkpoint)
        config = eval_latents.EvalConfig(ckpt=checkpoint, probe_epochs=40, patience=5)
        rng = np.random.default_rng(0)
        rows = probes.evaluation_rows(dataset, config, rng)
        all_rows = np.concatenate([rows["train"], rows["test"]])
        codes = probes.encode(model, dataset, all_rows)
        tasks = probes.probe_tasks(dataset, rows, rng)
        digits = dataset.labels["digit"][all_rows].astype(np.int64)
        stats = probes.dimension_statistics(codes["z_mean"], codes["z_logvar"], config.active_kl)
        active = np.array(stats["active"])
        noise = rng.standard_normal(codes["z_mean"].shape).astype(np.float32)
        representations = {"s": codes["s"], "z_mean": codes["z_mean"],
                           "z_sampled": codes["z_mean"] + np.exp(0.5 * codes["z_logvar"]) * noise,
                           "z_active": codes["z_mean"][:, active]}
        result = {"kl_total": float(np.sum(stats["kl_nats"])), "active": int(active.sum()),
                  "kl": [round(k, 3) for k in stats["kl_nats"]],
                  "inactive_mean_std": [float(f"{np.sqrt(v):.1e}")
                                        for v, on in zip(stats["mean_variance"], active) if not on]}
        for name, codes_of in representations.items():
            if codes_of.shape[1] == 0:
                continue
            for kind in ("mlp", "linear"):
                accuracy = probes.train_probe(kind, codes_of, digits, tasks["digit"], config, 0)["test"]
                result[f"{name}/{kind}"] = round(100 * accuracy, 1)
        print(checkpoint, json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
