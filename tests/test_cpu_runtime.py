"""Tests of benchmarks/cpu_runtime.py's choice of settings (--only); timing itself is a benchmark, not a test."""

import importlib.util
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_runtime.py"
SPEC = importlib.util.spec_from_file_location("cpu_runtime", SCRIPT)
cpu_runtime = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(cpu_runtime)


def test_only_selects_settings_by_case_insensitive_name_parts():
    assert cpu_runtime.select([]) == cpu_runtime.SETTINGS
    sprites = cpu_runtime.select(["cycle-vae sprites"])
    assert len(sprites) == 2 and all(setting[0][:3] == ["cycle_vae.py", "--dataset", "sprites"]
                                     for setting in sprites.values())
    assert len(cpu_runtime.select(["Sprites"])) == 4  # a plain substring: "dSprites" contains it too
    both = cpu_runtime.select(["cycle-VAE Sprites", "MNIST, BFC"])  # the README's command
    assert len(both) == 4 and not any("default allocator" in name or "beta" in name for name in both)


def test_only_matching_nothing_is_a_usage_error_listing_the_settings():
    result = subprocess.run([sys.executable, str(SCRIPT), "--only", "no such setting"], capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert "--only no such setting matches no setting" in result.stderr
    assert "cycle-VAE Sprites, BFC allocator, 2 threads/op" in result.stderr
