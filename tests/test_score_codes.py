"""Scoring given codes: evaluation/codes.py's score_codes and `eval_latents.py --codes` (docs/evaluation.md Sec. 4, 6).

The suite runs with the fast preset on a small full factor product, so each call takes a few seconds. The DCI
examples at the end have answers that follow from the definition (the MIG and FactorVAE ones live in
test_metrics.py).
"""
import json

import numpy as np
import pytest

from evaluation import codes as scoring
from evaluation import metrics

HEADLINE_KEYS = {"beta_vae", "factor_vae", "mig", "sap", "modularity", "explicitness", "dci/disentanglement",
                 "dci/completeness", "dci/informativeness"}


def product(*sizes):
    grids = np.meshgrid(*[np.arange(n) for n in sizes], indexing="ij")
    return np.stack(grids, axis=-1).reshape(-1, len(sizes))


@pytest.fixture(scope="module")
def small():
    """A 3 x 4 x 5 product (60 rows); codes = the factors plus a little noise, and two pure-noise dims."""
    factors = product(3, 4, 5)
    random_state = np.random.RandomState(0)
    codes = np.hstack([factors + 0.05 * random_state.randn(*factors.shape), random_state.randn(len(factors), 2)])
    return codes.astype(np.float32), factors


@pytest.fixture(scope="module")
def codes_file(small, tmp_path_factory):
    path = tmp_path_factory.mktemp("codes") / "small.npz"
    np.savez(path, codes=small[0], factors=small[1], factor_names=np.array(["shape", "scale", "position"]))
    return path


def test_score_codes_on_arrays(small):
    lines = []
    results = scoring.score_codes(*small, seed=0, fast=True, progress=lines.append)
    assert set(results["disentanglement"]) == HEADLINE_KEYS
    assert set(results["seconds"]) == set(metrics.METRICS) and len(lines) == len(metrics.METRICS)
    assert results["preset"] == "fast" and results["settings"] == metrics.FAST_SETTINGS
    scores = results["disentanglement"]
    assert scores["dci/disentanglement"] > 0.8 and scores["factor_vae"] > 0.9 and scores["beta_vae"] > 0.9


def test_score_codes_rejects_bad_arrays(small):
    codes, factors = small
    with pytest.raises(scoring.CodesError, match="60 rows but factors has 59"):
        scoring.score_codes(codes, factors[:-1])
    with pytest.raises(scoring.CodesError, match="not whole numbers"):
        scoring.score_codes(codes, factors + 0.5)
    with pytest.raises(scoring.CodesError, match=">= 0"):
        scoring.score_codes(codes, factors - 1)
    with pytest.raises(scoring.CodesError, match="single value"):
        scoring.score_codes(codes, np.hstack([factors, np.zeros((len(factors), 1), int)]))
    infinite = codes.copy()
    infinite[7, 1] = np.inf
    with pytest.raises(scoring.CodesError, match="row 7"):
        scoring.score_codes(infinite, factors)


@pytest.fixture(scope="module")
def eval_latents():
    return pytest.importorskip("eval_latents")  # imports TensorFlow


def test_cli_writes_the_results_json(eval_latents, codes_file, tmp_path, capsys):
    out = tmp_path / "scores.json"
    eval_latents.main(["--codes", str(codes_file), "--fast", "--seed", "3", "--out", str(out)])
    written = json.loads(out.read_text())
    assert set(written["disentanglement"]) == HEADLINE_KEYS
    assert all(isinstance(value, float) for value in written["disentanglement"].values())
    assert set(written["seconds"]) == set(metrics.METRICS)
    assert written["seed"] == 3 and written["representation"] == "given codes"
    assert written["config"]["preset"] == "fast"
    assert written["config"]["settings"]["dci"] == metrics.FAST_SETTINGS["dci"]
    assert written["factors"] == {"names": ["shape", "scale", "position"], "sizes": [3, 4, 5], "num_rows": 60,
                                  "min_group_size": 12, "distinct_combinations": 60, "full_product": True}
    assert {"numpy", "sklearn", "scipy", "python"} <= set(written["versions"])
    assert written["date"] and written["timings"]["total"] > 0
    progress = capsys.readouterr().out
    assert all(f"[metrics] {name}:" in progress for name in metrics.METRICS)


def test_cli_default_output_beside_the_codes(eval_latents, small, tmp_path):
    path = tmp_path / "run_codes.npz"
    np.savez(path, codes=small[0], factors=small[1])
    written = eval_latents.main(["--codes", str(path), "--fast"])
    assert (tmp_path / "run_codes.metrics.json").is_file()
    assert written["factors"]["names"] == ["factor_0", "factor_1", "factor_2"]


def exit_message(eval_latents, argv):
    with pytest.raises(SystemExit) as raised:
        eval_latents.main(argv)
    return str(raised.value.code)


def test_cli_errors_name_the_problem(eval_latents, small, tmp_path):
    codes, factors = small
    message = exit_message(eval_latents, ["--codes", str(tmp_path / "absent.npz")])
    assert "absent.npz not found" in message and "np.savez" in message
    np.savez(tmp_path / "no_factors.npz", codes=codes, labels=factors)
    message = exit_message(eval_latents, ["--codes", str(tmp_path / "no_factors.npz")])
    assert "lacks the array(s) 'factors'" in message and "'labels'" in message
    broken = codes.copy()
    broken[[4, 9], 0] = np.nan
    np.savez(tmp_path / "nan.npz", codes=broken, factors=factors)
    message = exit_message(eval_latents, ["--codes", str(tmp_path / "nan.npz")])
    assert "2 NaN or infinite values in 2 rows (first: row 4)" in message
    np.savez(tmp_path / "short.npz", codes=codes[:-3], factors=factors)
    assert "57 rows but factors has 60" in exit_message(eval_latents, ["--codes", str(tmp_path / "short.npz")])
    message = exit_message(eval_latents, ["--codes", str(tmp_path / "nan.npz"), "--ckpt", "model.keras"])
    assert "exclude each other" in message
    for message in [exit_message(eval_latents, ["--codes", str(tmp_path / name)])
                    for name in ("absent.npz", "nan.npz")]:
        assert message.startswith("error: ") and "Traceback" not in message


# ---------------------------------------------------------------------------------------------------------------
# DCI end to end, with answers that follow from the definition
# ---------------------------------------------------------------------------------------------------------------

def test_dci_codes_that_are_the_factors():
    """Codes [f0, f1] on a full 3 x 4 product (each combination 8 times).

    The factors are independent and balanced, so a split on the other factor's code never lowers the loss, and
    nodes that hold one class are pure and never split: every tree for factor k splits on code k only. R is
    diagonal, so D = C = 1 (up to the 1e-11 the definition adds), and the trees classify perfectly.
    """
    factors = np.repeat(product(3, 4), 8, axis=0)
    scores = metrics.dci_from_codes(factors.astype(float), factors, factors.astype(float), factors, tree_seeds=[0, 1])
    np.testing.assert_allclose(scores["importance_matrix"], np.eye(2), atol=1e-12)
    assert scores["disentanglement"] == pytest.approx(1.0, abs=1e-6)
    assert scores["completeness"] == pytest.approx(1.0, abs=1e-6)
    assert scores["informativeness_test"] == 1.0


def test_dci_one_code_for_two_factors():
    """Code 0 = 4 f0 + f1 carries both factors, code 1 is constant (trees never split on it).

    Each classifier's importances sum to 1 and sit on code 0: R = [[1, 1], [0, 0]]. Code 0 spreads evenly over
    the two factors, D_0 = 1 - H_2(1/2, 1/2) = 0, and code 1 has weight 0, so D = 0; each factor lives in one
    code, so C = 1.
    """
    factors = np.repeat(product(3, 4), 8, axis=0)
    codes = np.stack([4.0 * factors[:, 0] + factors[:, 1], np.full(len(factors), 2.5)], axis=1)
    scores = metrics.dci_from_codes(codes, factors, codes, factors, tree_seeds=[0, 1])
    np.testing.assert_allclose(scores["importance_matrix"], [[1.0, 1.0], [0.0, 0.0]], atol=1e-12)
    assert scores["disentanglement"] == pytest.approx(0.0, abs=1e-6)
    assert scores["completeness"] == pytest.approx(1.0, abs=1e-6)
    assert scores["informativeness_test"] == 1.0
