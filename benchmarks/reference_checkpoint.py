"""Score a public PyTorch code's own trained MNIST model on our protocol, by converting it into our Keras model.

Three public PyTorch codes ship a trained MNIST model (state dicts of the encoder and decoder in checkpoints/):
the cycle-VAE's (ananyahjha93/cycle-consistent-vae, `--model cycle_vae`, z = s = 16), the re-implementation of
Mathieu et al. 2016 (ananyahjha93/disentangling-factors-of-variation-using-adversarial-training, `--model
adversarial_disentangle`, z = s = 16) and the ML-VAE's (ananyahjha93/multi-level-vae, `--model mlvae`, z = s = 10;
its checkpoints/*_0.1_var_reparam, the run with group content noise of std 0.1 whose style accuracy its README
reports). Their encoder and decoder are the networks of cycle_vae.py, adversarial_disentangle.py and mlvae.py (the
MLP) layer for layer (docs/methods.md Sec. 3-5), so their weights can be copied into our model and evaluated by
eval_latents.py exactly as our own checkpoints are:

    python benchmarks/reference_checkpoint.py --model adversarial_disentangle --repo PATH \\
        --torch-python PATH/TO/python --data-dir DIR --out runs/reference_adversarial_mnist
    python eval_latents.py --ckpt runs/reference_adversarial_mnist --probes-only --data-dir DIR

--repo is a clone of the model's repository; --torch-python an interpreter that has PyTorch (not a dependency of this
project: `python -m venv T && T/bin/pip install torch numpy`), used only to read the state dicts and to run the
reference networks on 64 MNIST test images. The conversion is checked on those images before anything is written:
encoder outputs and decoded images must agree with PyTorch's to 1e-4, or the script stops without writing.

The mapping (PyTorch -> Keras): Conv2d weights (out, in, kh, kw) -> (kh, kw, in, out); ConvTranspose2d weights
(in, out, kh, kw) -> (kh, kw, out, in); Linear (out, in) -> (in, out), with the rows or columns that meet the 2 x 2
feature maps permuted from PyTorch's channel-first flattening (c * 4 + h * 2 + w) to Keras' channel-last one
(h * 128 + w * 64 + c for 64 channels); the ML-VAE's MLP flattens a one-channel 28 x 28 image, the same order in
both. InstanceNorm2d with track_running_stats=True normalises with each image's own statistics in training mode,
the function the model was trained as, and that is what our instance norm does; in PyTorch's eval mode it would use
the running averages instead, a different function. The discriminator of Mathieu et al. is not converted (no
evaluation uses it): the converted model's D keeps its fresh initialisation. The cycle-VAE's checkpoint was saved by
an older version of its networks.py, whose layers had other names (varying_factor_mu for style_mu, common_factor
for class_output, ...): its Reference's renames map them. REFERENCES holds all that differs between the three.
"""
import argparse
import dataclasses
import json
import pathlib
import subprocess
import sys
import tempfile
from typing import Callable

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Reference:
    """One public code's trained MNIST model and how it maps onto ours."""
    repository: str  # owner/name on GitHub
    checkpoints: dict  # network ("encoder", "decoder") -> file in the repository's checkpoints/ folder
    sizes: tuple  # (z, s) the reference networks were trained with
    build: Callable  # (script module, config, image shape) -> our compiled model, unbuilt
    convert: Callable  # (reference arrays, our built model): copies the weights
    # Encoder outputs in the reference's order; they name the arrays checked against ours.
    encoder_outputs: tuple = ("z_mean", "z_logvar", "s")
    # Config fields that reproduce the reference's model (the network-shaping ones; the rest is training).
    setting: dict = dataclasses.field(default_factory=dict)
    # Layer names of a checkpoint saved by an older networks.py -> the names in the repository's networks.py.
    renames: dict = dataclasses.field(default_factory=dict)


class _Unused:
    """Whatever a stubbed module is asked for: callable, and callable again."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Unused()


def stub_unused_imports():
    """The reference's networks.py and utils.py import torchvision and matplotlib at the top, for the data loader
    and plots, which the networks never use: where they are not installed, stand-ins let the import succeed."""
    import importlib
    import types
    for name in ("torchvision", "torchvision.datasets", "torchvision.transforms", "matplotlib",
                 "matplotlib.pyplot", "mpl_toolkits", "mpl_toolkits.axes_grid1"):
        try:
            importlib.import_module(name)
        except ImportError:
            module = types.ModuleType(name)
            module.__getattr__ = lambda attribute: _Unused
            module.__path__ = []  # a package without files: its submodules are stubbed in turn
            sys.modules[name] = module
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, module)


def dump(model_name, repo, images_path, out_path):
    """Run under --torch-python: the state dicts as arrays, and the reference networks' outputs on the images."""
    import torch
    stub_unused_imports()
    sys.path.insert(0, str(repo))
    from networks import Decoder, Encoder  # the reference's own classes

    reference = REFERENCES[model_name]
    arrays = {}
    networks = {"encoder": Encoder(*reference.sizes), "decoder": Decoder(*reference.sizes)}
    for name, network in networks.items():
        state = torch.load(pathlib.Path(repo) / "checkpoints" / reference.checkpoints[name], map_location="cpu")
        renames = reference.renames.get(name, {})
        state = type(state)((".".join([renames.get(key.split(".")[0], key.split(".")[0])] + key.split(".")[1:]),
                             value) for key, value in state.items())
        network.load_state_dict(state)
        network.train()  # instance statistics of each image (see the module docstring)
        arrays.update({f"{name}/{key}": value.numpy() for key, value in state.items()})
    with torch.no_grad():
        images = torch.from_numpy(np.load(images_path)["images"]).permute(0, 3, 1, 2)  # NHWC -> NCHW
        outputs = dict(zip(reference.encoder_outputs, networks["encoder"](images)))
        decoded = networks["decoder"](outputs["z_mean"], outputs["s"])
    arrays.update({f"out/{name}": value.numpy() for name, value in outputs.items()})
    arrays["out/decoded"] = decoded.permute(0, 2, 3, 1).numpy()
    np.savez(out_path, **arrays)


def flat_order(height, width, channels):
    """For each Keras (channel-last) flat index of an (h, w, c) map, the PyTorch (channel-first) flat index."""
    h, w, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(channels), indexing="ij")
    return (c * height * width + h * width + w).reshape(-1)


def convert_mlp(arrays, model):
    """Copy the ML-VAE reference's weights into model (our MLP ML-VAE on MNIST, z = s = 10)."""
    def dense(name):
        return [arrays[f"{name}.weight"].T, arrays[f"{name}.bias"]]

    hidden = [layer for layer in model.encoder.layers if type(layer).__name__ == "Dense"][0]  # then the heads
    hidden.set_weights(dense("encoder/linear_model.linear_1"))
    for ours, theirs in (("z_mean", "style_mu"), ("z_logvar", "style_logvar"), ("s_mean", "class_mu"),
                         ("s_logvar", "class_logvar")):
        model.encoder.get_layer(ours).set_weights(dense(f"encoder/{theirs}"))
    hidden, output = [layer for layer in model.decoder.layers if type(layer).__name__ == "Dense"]
    hidden.set_weights(dense("decoder/linear_model.linear_1"))  # on [style, class], our [z, s]
    output.set_weights(dense("decoder/linear_model.linear_2"))  # logits; decode() applies the sigmoid


def convert(arrays, model):
    """Copy the reference weights into model (our convolutional MNIST model, z = s = 16)."""
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


def build_cycle_vae(script, config, image_shape):
    """Our cycle-VAE with the settings that shape the network (the defaults); the rest is training."""
    import keras
    model = script.CycleVAE(image_shape, dataset="mnist", z_dim=config.z_dim, s_dim=config.s_dim)
    model.compile(optimizer=keras.optimizers.Adam(), reverse_optimizer=keras.optimizers.Adam())
    return model


def build_adversarial_disentangle(script, config, image_shape):
    model = script.AdversarialDisentangler(image_shape, dataset="mnist", z_dim=config.z_dim, s_dim=config.s_dim)
    model.compile(**script.build_optimizers(config))
    return model


def build_mlvae(script, config, image_shape):
    import keras
    model = script.MLVAE(image_shape, dataset="mnist", z_dim=config.z_dim, s_dim=config.s_dim,
                         architecture=config.architecture, content_sampling=config.content_sampling,
                         content_noise_std=config.content_noise_std)
    model.compile(optimizer=keras.optimizers.Adam())
    return model


REFERENCES = {
    "cycle_vae": Reference(
        "ananyahjha93/cycle-consistent-vae", {"encoder": "encoder", "decoder": "decoder"}, (16, 16),
        build_cycle_vae, convert,
        renames={"encoder": {"varying_factor_mu": "style_mu", "varying_factor_logvar": "style_logvar",
                             "common_factor": "class_output"},
                 "decoder": {"varying_factor": "style_input", "common_factor": "class_input"}}),
    "adversarial_disentangle": Reference(
        "ananyahjha93/disentangling-factors-of-variation-using-adversarial-training",
        {"encoder": "encoder", "decoder": "decoder"}, (16, 16), build_adversarial_disentangle, convert),
    # The ML-VAE reference grouped the digit labels of each batch and drew one content eps of std 0.1 per group.
    "mlvae": Reference(
        "ananyahjha93/multi-level-vae", {"encoder": "encoder_0.1_var_reparam", "decoder": "decoder_0.1_var_reparam"},
        (10, 10), build_mlvae, convert_mlp, encoder_outputs=("z_mean", "z_logvar", "s", "s_logvar"),
        setting={"grouping": "batch", "content_sampling": "group", "content_noise_std": 0.1, "architecture": "mlp"}),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=sorted(REFERENCES), help="whose checkpoint")
    parser.add_argument("--repo", required=True, help="a clone of the model's public PyTorch repository")
    parser.add_argument("--torch-python", default=sys.executable, help="an interpreter with PyTorch")
    parser.add_argument("--data-dir", default=None, help="MNIST's data directory (default: data.py's)")
    parser.add_argument("--out", default=None, help="run folder to write (default runs/reference_<model>_mnist)")
    parser.add_argument("--dump", nargs=2, metavar=("IMAGES", "OUT"), help=argparse.SUPPRESS)  # the torch side
    args = parser.parse_args(argv)
    repo = pathlib.Path(args.repo)
    if args.dump:
        return dump(args.model, repo, *args.dump)
    reference = REFERENCES[args.model]
    files = [f"checkpoints/{name}" for name in reference.checkpoints.values()]
    if not all((repo / file).is_file() for file in files) or not (repo / "networks.py").is_file():
        sys.exit(f"error: {repo} is not a clone of {reference.repository}: it needs networks.py, "
                 f"{' and '.join(files)}.")

    sys.path.insert(0, str(ROOT))
    import importlib

    import common
    import data
    script = importlib.import_module(args.model)

    out = args.out or f"runs/reference_{args.model}_mnist"
    config = script.resolve(script.Config(dataset="mnist", data_dir=args.data_dir, out=out, evaluate=False,
                                          **reference.setting))
    try:
        dataset = data.load_dataset("mnist", args.data_dir)
    except data.DataError as error:
        sys.exit(f"error: {error}")
    images = dataset.images[dataset.rows("test")[:64]].astype(np.float32) / 255.0
    with tempfile.TemporaryDirectory() as scratch:
        inputs, outputs = pathlib.Path(scratch) / "images.npz", pathlib.Path(scratch) / "reference.npz"
        np.savez(inputs, images=images)
        command = [args.torch_python, __file__, "--model", args.model, "--repo", str(repo), "--dump", str(inputs),
                   str(outputs)]
        if subprocess.call(command) != 0:
            sys.exit(f"error: reading the PyTorch checkpoints with --torch-python {args.torch_python} failed (above); "
                     "that interpreter needs PyTorch and NumPy.")
        arrays = dict(np.load(outputs))

    model = reference.build(script, config, dataset.image_shape)
    model.build()
    reference.convert(arrays, model)
    codes = model.encode(images)
    differences = {name: np.asarray(codes[name]) - arrays[f"out/{name}"]
                   for name in reference.encoder_outputs}
    differences["decoded"] = np.asarray(model.decode(codes["z_mean"], codes["s"])) - arrays["out/decoded"]
    largest = {name: float(np.abs(value).max()) for name, value in differences.items()}
    print("largest difference from PyTorch on 64 test images:", json.dumps(largest))
    if max(largest.values()) > 1e-4:
        sys.exit("error: the converted model does not compute what the PyTorch one does; nothing was written.")
    run_dir = common.prepare_run_dir(config, script=args.model, name="mnist_reference",
                                     argv=sys.argv[1:] if argv is None else argv)
    common.save_model(model, run_dir / "model.keras")
    print(f"written: {run_dir / 'model.keras'}\nnext: python eval_latents.py --ckpt {run_dir} --probes-only"
          + (f" --data-dir {args.data_dir}" if args.data_dir else ""))


if __name__ == "__main__":
    main()
