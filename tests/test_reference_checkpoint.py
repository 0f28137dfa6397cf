"""benchmarks/reference_checkpoint.py without PyTorch: the flattening order it converts between, the ML-VAE MLP
conversion against a NumPy forward pass of the reference networks, and its refusal of a folder that is not the
model's public repository. (The conversion itself is checked against PyTorch's outputs by the script, which refuses
to write a model that differs.)"""
import importlib.util
import pathlib

import numpy as np
import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
SPEC = importlib.util.spec_from_file_location("reference_checkpoint", BENCHMARKS / "reference_checkpoint.py")
reference_checkpoint = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(reference_checkpoint)


@pytest.mark.parametrize("height, width, channels", [(2, 2, 64), (3, 2, 5)])
def test_flat_order_maps_channel_first_flattening_to_channel_last(height, width, channels):
    maps = np.random.default_rng(0).normal(size=(channels, height, width))  # one PyTorch (C, H, W) map
    torch_flat = maps.reshape(-1)  # x.view(B, C * H * W) in the reference
    keras_flat = maps.transpose(1, 2, 0).reshape(-1)  # Flatten() of the same (H, W, C) map in Keras
    np.testing.assert_array_equal(torch_flat[reference_checkpoint.flat_order(height, width, channels)], keras_flat)


def test_a_folder_without_the_reference_checkpoints_is_refused(tmp_path):
    (tmp_path / "networks.py").write_text("")
    with pytest.raises(SystemExit) as raised:
        reference_checkpoint.main(["--model", "cycle_vae", "--repo", str(tmp_path)])
    message = str(raised.value.code)
    assert "checkpoints/encoder" in message and str(tmp_path) in message and "cycle-consistent-vae" in message


def test_the_ml_vae_mlp_converts_to_the_function_pytorch_computes():
    # A random state dict in the layout of the public ML-VAE's networks.py (Linear weights are (out, in)), run
    # through the reference's forward pass in NumPy, against our MLP ML-VAE after convert_mlp.
    import keras

    import mlvae
    rng = np.random.default_rng(0)
    shapes = {"encoder/linear_model.linear_1": (500, 784), "encoder/style_mu": (10, 500),
              "encoder/style_logvar": (10, 500), "encoder/class_mu": (10, 500), "encoder/class_logvar": (10, 500),
              "decoder/linear_model.linear_1": (500, 20), "decoder/linear_model.linear_2": (784, 500)}
    arrays = {}
    for name, shape in shapes.items():
        arrays[f"{name}.weight"] = rng.normal(0, 0.05, shape).astype(np.float32)
        arrays[f"{name}.bias"] = rng.normal(0, 0.05, shape[0]).astype(np.float32)

    def linear(name, x):
        return x @ arrays[f"{name}.weight"].T + arrays[f"{name}.bias"]

    images = rng.uniform(size=(4, 28, 28, 1)).astype(np.float32)
    hidden = np.tanh(linear("encoder/linear_model.linear_1", images.reshape(4, 784)))
    expected = {ours: linear(f"encoder/{theirs}", hidden) for ours, theirs in (
        ("z_mean", "style_mu"), ("z_logvar", "style_logvar"), ("s", "class_mu"), ("s_logvar", "class_logvar"))}
    decoded = 1 / (1 + np.exp(-linear("decoder/linear_model.linear_2", np.tanh(linear(
        "decoder/linear_model.linear_1", np.concatenate([expected["z_mean"], expected["s"]], axis=1))))))

    model = mlvae.MLVAE((28, 28, 1), dataset="mnist", z_dim=10, s_dim=10, architecture="mlp")
    model.compile(optimizer=keras.optimizers.Adam())
    model.build()
    reference_checkpoint.convert_mlp(arrays, model)
    codes = model.encode(images)
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(codes[name]), value, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(np.asarray(model.decode(codes["z_mean"], codes["s"])), decoded.reshape(4, 28, 28, 1),
                               atol=1e-5)


def test_the_ml_vae_checkpoint_files_are_named_when_missing(tmp_path):
    (tmp_path / "networks.py").write_text("")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "encoder").write_text("")  # the other codes' file name is not the ML-VAE's
    with pytest.raises(SystemExit) as raised:
        reference_checkpoint.main(["--model", "mlvae", "--repo", str(tmp_path)])
    message = str(raised.value.code)
    assert "checkpoints/encoder_0.1_var_reparam" in message and "multi-level-vae" in message
