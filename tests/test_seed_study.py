"""Tests of benchmarks/seed_study.py: the per-seed table and its mean, std and median, and its errors."""

import importlib.util
import json
import pathlib

import pytest

SPEC = importlib.util.spec_from_file_location(
    "seed_study", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "seed_study.py")
seed_study = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(seed_study)


def write_metrics(out, seed, scores, preset="study"):
    path = seed_study.metrics_path(out, seed)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"disentanglement": scores, "disentanglement_details": {"preset": preset}}))


def test_summary_gives_per_seed_rows_mean_std_and_median(tmp_path):
    out = tmp_path / "study"
    for seed, (mig, factor) in enumerate([(0.394, 0.60), (0.10, 0.70), (0.30, 0.65)]):
        write_metrics(out, seed, {"mig": mig, "factor_vae": factor, "sap": None})
    text, summary = seed_study.summarise(out, [0, 1, 2])
    assert summary["n"] == 3 and summary["missing_seeds"] == []
    assert summary["median"] == {"factor_vae": 0.65, "mig": 0.30}  # sap is None in every seed: left out
    assert summary["mean"]["mig"] == pytest.approx((0.394 + 0.10 + 0.30) / 3)
    assert summary["std_ddof1"]["factor_vae"] == pytest.approx(0.05)  # ddof 1: sqrt((0.05**2 + 0.05**2) / 2)
    assert "median of 3 of 3 seeds, study metric preset" in text and summary["preset"] == "study"
    assert "| **median** | **0.650** | **0.300** |" in text  # columns in SHOWN order: factor_vae before mig


def test_summary_of_a_partial_study_names_the_missing_seeds(tmp_path):
    out = tmp_path / "study"
    write_metrics(out, 1, {"mig": 0.2})
    text, summary = seed_study.summarise(out, [0, 1, 2])
    assert summary["n"] == 1 and summary["missing_seeds"] == [0, 2]
    assert summary["std_ddof1"]["mig"] is None
    assert "median of 1 of 3 seeds, study metric preset (not yet evaluated: 0, 2)" in text


def test_summary_refuses_to_mix_metric_presets(tmp_path):
    out = tmp_path / "study"
    write_metrics(out, 0, {"mig": 0.2}, preset="study")
    write_metrics(out, 1, {"mig": 0.3}, preset="fast")
    with pytest.raises(SystemExit, match="different metric presets"):
        seed_study.summarise(out, [0, 1])


def test_summary_without_any_evaluated_seed_says_what_to_run(tmp_path):
    with pytest.raises(SystemExit, match="no seed of .* has been evaluated yet"):
        seed_study.summarise(tmp_path / "study", [0, 1, 2])


@pytest.mark.parametrize("flag", [["--seed", "3"], ["--seed=3"], ["--out=elsewhere"], ["--se", "3"], ["--ou=x"],
                                  ["--resu"]])
def test_training_command_may_not_set_the_seed_itself(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as exit_info:
        seed_study.main(["--out", str(tmp_path / "study"), "--", "beta_vae.py", *flag])
    assert exit_info.value.code == 2
    assert "leave --seed, --out and --resume out" in capsys.readouterr().err


def test_other_flags_of_the_training_command_pass():
    words = ["--epochs", "50", "--steps-per-epoch=3", "--seeds-file", "--output-dir", "--no-evaluate", "-s", "--"]
    assert not any(seed_study.sets_study_flag(word) for word in words)


def test_study_resumes_a_seed_with_a_run_folder_and_skips_an_evaluated_one(tmp_path, monkeypatch):
    out = tmp_path / "study"
    write_metrics(out, 0, {"mig": 0.3})
    (seed_study.run_dir(out, 1)).mkdir()
    (seed_study.run_dir(out, 1) / "config.json").write_text("{}")
    commands = []
    monkeypatch.setattr(seed_study, "run", commands.append)
    for seed in (0, 1, 2):
        seed_study.train_and_evaluate(out, seed, ["beta_vae.py", "--epochs", "2"], ["--quick"])
    trainings = [command for command in commands if "beta_vae.py" in command]
    assert [command[command.index("--seed") + 1] for command in trainings] == ["1", "2"]
    assert trainings[0][-1] == "--resume" and "--resume" not in trainings[1]
    assert sum(str(seed_study.EVAL_SCRIPT) in command for command in commands) == 2


def probe_metrics(s, z_sampled, z_mean, active=(True, True, False), quick=False):
    return {"probes": {"s/digit/mlp/mean": s, "s/digit/linear/mean": 0.5, "z/digit/mlp/sampled": z_sampled,
                       "z/digit/mlp/mean": z_mean, "pixels/digit/mlp/mean": 0.96},
            "chance": {"digit": 0.1135}, "z_dimensions": {"active": list(active)}, "eval_config": {"quick": quick}}


def write_probe_metrics(out, seed, metrics):
    path = seed_study.metrics_path(out, seed)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(metrics))


def test_summary_of_a_split_code_model_gives_its_probe_accuracies_in_percent(tmp_path):
    out = tmp_path / "study"
    write_probe_metrics(out, 0, probe_metrics(0.985, 0.182, 0.744))
    write_probe_metrics(out, 1, probe_metrics(0.981, 0.150, 0.700, active=(True, True, True)))
    write_probe_metrics(out, 2, probe_metrics(0.990, 0.210, 0.760))
    text, summary = seed_study.summarise(out, [0, 1, 2])
    assert list(summary["median"]) == ["digit: s", "digit: z sampled", "digit: z mean", "digit: chance",
                                       "z active dims"]
    assert summary["median"]["digit: z sampled"] == 0.182 and summary["median"]["z active dims"] == 2
    assert summary["std_ddof1"]["digit: s"] == pytest.approx(0.0045092, abs=1e-6)
    assert "median of 3 of 3 seeds, probes (full evaluation)" in text
    assert "| **median** | **98.5** | **18.2** | **74.4** | **11.3** | **2.0** |" in text
    assert "| 1 | 98.1 | 15.0 | 70.0 | 11.3 | 3.0 |" in text


def test_summary_refuses_to_mix_quick_and_full_evaluations(tmp_path):
    out = tmp_path / "study"
    write_probe_metrics(out, 0, probe_metrics(0.98, 0.2, 0.7))
    write_probe_metrics(out, 1, probe_metrics(0.98, 0.2, 0.7, quick=True))
    with pytest.raises(SystemExit, match="different metric presets"):
        seed_study.summarise(out, [0, 1])


def test_summary_of_metrics_without_scores_says_how_to_evaluate(tmp_path):
    out = tmp_path / "study"
    write_probe_metrics(out, 0, {"probes": {}})
    with pytest.raises(SystemExit, match="neither metric-suite scores"):
        seed_study.summarise(out, [0])
