"""Score the public PyTorch code's own trained MNIST model on our protocol, by converting it into our Keras model.

The public re-implementation of Mathieu et al. 2016 (ananyahjha93/disentangling-factors-of-variation-using-
adversarial-training) ships a trained MNIST model, z = s = 16, in checkpoints/encoder and checkpoints/decoder
(PyTorch state dicts). Its encoder and decoder are the networks of adversarial_disentangle.py layer for layer
(docs/methods.md Sec. 4), so their weights can be copied into an AdversarialDisentangler and evaluated by
eval_latents.py exactly as our own checkpoint is:

    python benchmarks/reference_checkpoint.py --repo PATH --torch-python PATH/TO/python --data-dir DIR \\
        --out runs/reference_adversarial_mnist
    python eval_latents.py --ckpt runs/reference_adversarial_mnist --probes-only --data-dir DIR

--repo is a clone of that repository; --torch-python an interpreter that has PyTorch (not a dependency of this
project: `python -m venv T && T/bin/pip install torch numpy`), used only to read the state dicts and to run the
reference networks on 64 MNIST test images. The conversion is checked on those images before anything is written:
encoder outputs and decoded images must agree with PyTorch's to 1e-4, or the script stops without writing.

The mapping (PyTorch -> Keras): Conv2d weights (out, in, kh, kw) -> (kh, kw, in, out); ConvTranspose2d weights
(in, out, kh, kw) -> (kh, kw, out, in); Linear (out, in) -> (in, out), with the rows or columns that meet the 2 x 2
feature maps permuted from PyTorch's channel-first flattening (c * 4 + h * 2 + w) to Keras' channel-last one
(h * 128 + w * 64 + c for 64 channels). InstanceNorm2d with track_running_stats=True normalises with each image's
own statistics in training mode, the function the model was trained as, and that is what our instance norm does;
in PyTorch's eval mode it would use the running averages instead, a different function. The discriminator is not
converted (no evaluation uses it): the converted model's D keeps its fresh initialisation.
"""
import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECKPOINTS = ("encoder", "decoder")


def dump(repo, images_path, out_path):
    """Run under --torch-python: the state dicts as arrays, and the reference networks' outputs on the images."""
    import torch
    sys.path.insert(0, str(repo))
    from networks import Decoder, Encoder  # the reference's own classes

    arrays = {}
    networks = {"encoder": Encoder(16, 16), "decoder": Decoder(16, 16)}
    for name, network in networks.items():
        state = torch.load(pathlib.Path(repo) / "checkpoints" / name, map_location="cpu")
        network.load_state_dict(state)
        network.train()  # instance statistics of each image (see the module docstring)
        arrays.update({f"{name}/{key}": value.numpy() for key, value in state.items()})
    with torch.no_grad():
        images = torch.from_numpy(np.load(images_path)["images"]).permute(0, 3, 1, 2)  # NHWC -> NCHW
        z_mean, z_logvar, s = networks["encoder"](images)
        decoded = networks["decoder"](z_mean, s)
    arrays.update({"out/z_mean": z_mean.numpy(), "out/z_logvar": z_logvar.numpy(), "out/s": s.numpy(),
                   "out/decoded": decoded.permute(0, 2, 3, 1).numpy()})
    np.savez(out_path, **arrays)


def flat_order(height, width, channels):
    """For each Keras (channel-last) flat index of an (h, w, c) map, the PyTorch (channel-first) flat index."""
    h, w, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(channels), indexing="ij")
    return (c * height * width + h * width + w).reshape(-1)


def convert(arrays, model):
    """Copy the reference weights into model (an MNIST AdversarialDisentangler, z = s = 16)."""
    def conv(name):
        return [arrays[f"{name}.weight"].transpose(2, 3, 1, 0), arrays[f"{name}.bias"]]

    order = flat_order(2, 2, 64)
    encoder_convs = [layer for layer in model.encoder.layers if type(layer).__name__ == "Conv2D"]
    for k, layer in enumerate(encoder_convs, 1):
        layer.set_weights(conv(f"encoder/conv_model.convolution_{k}"))
    for ours, theirs in (("z_mean", "style_mu"), ("z_logvar", "style_logvar"), ("specified", "class_output")):
        weight = arrays[f"encoder/{theirs}.weight"]  # (out, 256), inputs in PyTorch's flattening
        model.encoder.get_layer(ours).set_weights([weight.T[order], arrays[f"encoder/{theirs}.bias"]])
    dense = [layer for layer in model.decoder.layers if type(layer).__name__ == "Dense"]  # z's, then s's
    for layer, theirs in zip(dense, ("style_input", "class_input")):
        weight = arrays[f"decoder/{theirs}.weight"]  # (256, 16), outputs in PyTorch's flattening
        layer.set_weights([weight.T[:, order], arrays[f"decoder/{theirs}.bias"][order]])
    transposed = [layer for layer in model.decoder.layers if type(layer).__name__ == "Conv2DTranspose"]
    for k, layer in enumerate(transposed, 1):
        layer.set_weights(conv(f"decoder/deconv_model.deconvolution_{k}"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", required=True, help="a clone of the public PyTorch repository")
    parser.add_argument("--torch-python", default=sys.executable, help="an interpreter with PyTorch")
    parser.add_argument("--data-dir", default=None, help="MNIST's data directory (default: data.py's)")
    parser.add_argument("--out", default="runs/reference_adversarial_mnist", help="run folder to write")
    parser.add_argument("--dump", nargs=2, metavar=("IMAGES", "OUT"), help=argparse.SUPPRESS)  # the torch side
    args = parser.parse_args(argv)
    repo = pathlib.Path(args.repo)
    if args.dump:
        return dump(repo, *args.dump)
    missing = [name for name in CHECKPOINTS if not (repo / "checkpoints" / name).is_file()]
    if missing or not (repo / "networks.py").is_file():
        sys.exit(f"error: {repo} is not a clone of ananyahjha93/disentangling-factors-of-variation-using-"
                 "adversarial-training: it needs networks.py and checkpoints/encoder and checkpoints/decoder.")

    sys.path.insert(0, str(ROOT))
    import adversarial_disentangle as adv
    import common
    import data

    config = adv.resolve(adv.Config(dataset="mnist", data_dir=args.data_dir, out=args.out, evaluate=False))
    try:
        dataset = data.load_dataset("mnist", args.data_dir)
    except data.DataError as error:
        sys.exit(f"error: {error}")
    images = dataset.images[dataset.rows("test")[:64]].astype(np.float32) / 255.0
    with tempfile.TemporaryDirectory() as scratch:
        inputs, outputs = pathlib.Path(scratch) / "images.npz", pathlib.Path(scratch) / "reference.npz"
        np.savez(inputs, images=images)
        command = [args.torch_python, __file__, "--repo", str(repo), "--dump", str(inputs), str(outputs)]
        if subprocess.call(command) != 0:
            sys.exit(f"error: reading the PyTorch checkpoints failed (above); --torch-python {args.torch_python} must "
                     "have PyTorch installed.")
        arrays = dict(np.load(outputs))

    model = adv.AdversarialDisentangler(dataset.image_shape, dataset="mnist", z_dim=config.z_dim, s_dim=config.s_dim)
    model.compile(**adv.build_optimizers(config))
    model.build()
    convert(arrays, model)
    codes = model.encode(images)
    differences = {"z_mean": codes["z_mean"] - arrays["out/z_mean"], "z_logvar": codes["z_logvar"] - arrays[
        "out/z_logvar"], "s": codes["s"] - arrays["out/s"],
        "decoded": np.asarray(model.decode(codes["z_mean"], codes["s"])) - arrays["out/decoded"]}
    largest = {name: float(np.abs(value).max()) for name, value in differences.items()}
    print("largest difference from PyTorch on 64 test images:", json.dumps(largest))
    if max(largest.values()) > 1e-4:
        sys.exit("error: the converted model does not compute what the PyTorch one does; nothing was written.")
    run_dir = common.prepare_run_dir(config, script="adversarial_disentangle", name="mnist_reference",
                                     argv=sys.argv[1:] if argv is None else argv)
    common.save_model(model, run_dir / "model.keras")
    print(f"written: {run_dir / 'model.keras'}\nnext: python eval_latents.py --ckpt {run_dir} --probes-only"
          + (f" --data-dir {args.data_dir}" if args.data_dir else ""))


if __name__ == "__main__":
    main()
