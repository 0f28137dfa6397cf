"""Tests of benchmarks/comparison.py: the rows from pretrained evaluations and from seed studies, and its errors."""
import importlib.util
import json
import pathlib

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
SPEC = importlib.util.spec_from_file_location("comparison", BENCHMARKS / "comparison.py")
comparison = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(comparison)


def probe_metrics(s, z_sampled, z_mean, active=(True, True, False), seed=0):
    return {"probes": {"s/digit/mlp/mean": s, "z/digit/mlp/sampled": z_sampled, "z/digit/mlp/mean": z_mean},
            "chance": {"digit": 0.1135}, "z_dimensions": {"active": list(active)}, "eval_config": {"quick": False},
            "training_seed": seed}


@pytest.fixture
def pretrained(tmp_path, monkeypatch):
    monkeypatch.setattr(comparison, "PRETRAINED", tmp_path)
    for name, _, _ in comparison.MODELS:
        (tmp_path / f"{name}.metrics.json").write_text(json.dumps(probe_metrics(0.985, 0.182, 0.744)))
    return tmp_path


def test_a_row_without_a_study_is_the_pretrained_evaluation(pretrained):
    lines = comparison.table({}).splitlines()
    assert len(lines) == 2 + len(comparison.MODELS)
    assert lines[2] == "| cycle-VAE (Jha et al. 2018) | 0 | 98.5 | 18.2 | 74.4 | 2 | 11.3 | s 98.35, sampled z 17.56 |"


def test_a_row_with_a_study_is_the_median_over_its_seeds_with_their_range(pretrained, tmp_path):
    seeds = {"0": {"digit: s": 0.985, "digit: z sampled": 0.182, "digit: z mean": 0.744, "digit: chance": 0.1135,
                   "z active dims": 2},
             "1": {"digit: s": 0.981, "digit: z sampled": 0.150, "digit: z mean": 0.700, "digit: chance": 0.1135,
                   "z active dims": 3},
             "2": {"digit: s": 0.990, "digit: z sampled": 0.210, "digit: z mean": 0.760, "digit: chance": 0.1135,
                   "z active dims": 2}}
    study = tmp_path / "cycle_seeds.json"
    study.write_text(json.dumps({"seeds": seeds}))
    row = comparison.table({"cycle_vae_mnist": study}).splitlines()[2]
    assert row == ("| cycle-VAE (Jha et al. 2018) | 0, 1, 2 | 98.5 (98.1-99.0) | 18.2 (15.0-21.0) | 74.4 (70.0-76.0) "
                   "| 2 (2-3) | 11.3 | s 98.35, sampled z 17.56 |")


def test_the_median_of_an_even_number_of_seeds_is_the_mean_of_the_middle_two():
    assert comparison.cell([0.10, 0.20, 0.40, 0.30], "digit: s") == "25.0 (10.0-40.0)"
    assert comparison.cell([], "digit: s") == "n/a"


def test_a_missing_pretrained_evaluation_says_how_to_make_it(pretrained, capsys):
    (pretrained / "mlvae_mnist.metrics.json").unlink()
    with pytest.raises(SystemExit, match="mlvae_mnist.metrics.json is missing: evaluate pretrained/mlvae_mnist.keras"):
        comparison.main([])


@pytest.mark.parametrize("argument, message", [("vae=x.json", "NAME one of"), ("mlvae_mnist=nowhere.json",
                                                                               "does not exist")])
def test_a_bad_study_argument_is_refused(pretrained, capsys, argument, message):
    with pytest.raises(SystemExit):
        comparison.main(["--study", argument])
    assert message in capsys.readouterr().err


def sprites_metrics(s, z_sampled, z_mean):
    targets = comparison.SPRITES_TARGETS
    probes = {}
    for target in targets:
        probes.update({f"s/{target}/mlp/mean": s, f"z/{target}/mlp/sampled": z_sampled, f"z/{target}/mlp/mean": z_mean})
    return {"probes": probes, "chance": {target: 0.25 for target in targets}}


def test_the_sprites_matrix_has_a_block_per_evaluated_model_and_names_the_others(tmp_path):
    (tmp_path / "cycle_vae_sprites.metrics.json").write_text(json.dumps(sprites_metrics(0.995, 0.30, 0.9)))
    (tmp_path / "mlvae_sprites.metrics.json").write_text(json.dumps(sprites_metrics(0.97, 0.26, 0.5)))
    text = comparison.sprites_table(tmp_path)
    lines = text.splitlines()
    targets = len(comparison.SPRITES_TARGETS)
    assert lines[0].count("|") == targets + 3
    assert lines[2] == "| | chance | " + " | ".join(["25.0"] * targets) + " |"
    assert lines[3] == "| cycle-VAE | s | " + " | ".join(["99.5"] * targets) + " |"
    assert lines[4] == "| cycle-VAE | z sampled | " + " | ".join(["30.0"] * targets) + " |"
    assert lines[6] == "| ML-VAE | s | " + " | ".join(["97.0"] * targets) + " |"
    assert len([line for line in lines if line.startswith("| ")]) == 2 + 2 * 3  # header, chance, two blocks
    assert lines[-1].startswith("Not yet evaluated: ")
    for name in ("adversarial_disentangle_sprites", "adversarial_disentangle_sprites_joint",
                 "adversarial_disentangle_sprites_joint_kl5"):
        assert f"pretrained/{name}.metrics.json" in lines[-1]
    assert "cycle_vae_sprites" not in lines[-1] and "mlvae_sprites" not in lines[-1]


def test_no_sprites_evaluation_at_all_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.setattr(comparison, "PRETRAINED", tmp_path)
    with pytest.raises(SystemExit, match="no Sprites evaluation in pretrained/"):
        comparison.main(["--sprites"])


def test_sprites_does_not_mix_with_the_mnist_options(capsys):
    with pytest.raises(SystemExit):
        comparison.main(["--sprites", "--figure", "x.png"])
    assert "--study and --figure belong to the MNIST table" in capsys.readouterr().err
