"""benchmarks/reference_checkpoint.py without PyTorch: the flattening order it converts between, and its refusal
of a folder that is not the model's public repository. (The conversion itself is checked against PyTorch's outputs
by the script, which refuses to write a model that differs.)"""
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
