"""Size of the forward-cycle and reverse-cycle gradients on the cycle-VAE encoder's weights.

    python cycle_vae.py --dataset mnist --data-dir ../shared/data --epochs 1 --steps-per-epoch 600 --no-evaluate --out runs/grad_probe
    python benchmarks/cycle_vae_gradient_scale.py --ckpt runs/grad_probe/model.keras --data-dir ../shared/data

For each encoder variable, the RMS over `--batches` training batches of the gradient of L_fwd and of
lambda_rev * L_rev (the model's own weight; in the separate mode Adam ignores it, in the joint mode it is the
real scale), printed as the median, 10th and 90th percentile over the variable's entries. It shows how much
larger the reverse cycle's pull on the encoder is than the forward cycle's (README, MNIST section).
"""
import argparse
import pathlib
import sys

import numpy as np
import tensorflow as tf
from keras import ops

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import cycle_vae  # noqa: E402
import data  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a cycle_vae.py model.keras")
    parser.add_argument("--data-dir", default=None, help="folder with the dataset (as for cycle_vae.py)")
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    model, _ = common.load_checkpoint(args.ckpt)
    config = cycle_vae.resolve(common.parse_config(cycle_vae.Config, ["--dataset", model.dataset]))
    dataset = data.load_dataset(model.dataset, args.data_dir)
    squares = {"forward": {}, "reverse": {}}
    for batch in cycle_vae.training_data(dataset, config).take(args.batches):
        images = ops.concatenate([batch["same"]["image_a"], batch["same"]["image_b"]])
        generated, prior = model._reverse_inputs(batch["different"])
        with tf.GradientTape(persistent=True) as tape:
            reconstruction, kl_term, _, _ = model._forward_cycle(images, training=True)
            generated_mean, _, _ = model.encoder(generated, training=True)
            reverse, _ = model._reverse_cycle(generated_mean, prior)
            losses = {"forward": reconstruction + kl_term, "reverse": model.reverse_weight * reverse}
        for name, loss in losses.items():
            for variable, gradient in zip(model.encoder.trainable_variables,
                                          tape.gradient(loss, model.encoder.trainable_variables)):
                if gradient is not None:
                    squares[name].setdefault(variable.path, []).append(np.square(gradient.numpy()))
    for name, per_variable in squares.items():
        print(f"== {name} (lambda_rev = {model.reverse_weight:g} on the reverse loss)" if name == "reverse"
              else f"== {name}")
        for path, values in per_variable.items():
            rms = np.sqrt(np.mean(values, axis=0))
            print(f"{path:55s} {str(rms.shape):14s} rms median {np.median(rms):.1e} "
                  f"p10 {np.percentile(rms, 10):.1e} p90 {np.percentile(rms, 90):.1e}")


if __name__ == "__main__":
    main()
