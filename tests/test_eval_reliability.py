"""How `eval_latents.py` fails: size flags refused before the work, figures that fail without losing the numbers,
evaluation folders written whole or not at all, a run's stored data directory, flags that do not apply, and codes
too few to score.

The evaluation of a model runs here on a stand-in model (no network) with the probes, the pixel ceiling, the
predictor networks and t-SNE stubbed, so each run takes a second or two. Kills are simulated by leaving the
folders a killed process would leave, a full disk by making a write raise.
"""
import errno
import json
import pathlib
import subprocess

import numpy as np
import pytest

import common
import data
import eval_latents
from evaluation import blocks, checkpoint, figures, metrics, probes
from evaluation import codes as scoring


class FakeModel:
    """The encode/decode interface of eval_latents.py without a network: the codes are averages of pixel strips,
    the decoding a grey image whose level follows the mean of z."""

    def __init__(self, image_shape, with_s=True, z_dim=4, s_dim=2):
        self.image_shape, self.with_s, self.z_dim, self.s_dim = tuple(image_shape), with_s, z_dim, s_dim
        self.encoded = 0  # images encoded so far

    def encode(self, images):
        images = np.asarray(images, np.float32)
        self.encoded += len(images)
        strips = np.array_split(images.reshape(len(images), -1), self.z_dim + self.s_dim, axis=1)
        means = np.stack([strip.mean(1) for strip in strips], 1) * 4 - 2
        codes = {"z_mean": means[:, :self.z_dim], "z_logvar": np.full((len(images), self.z_dim), -2.0, np.float32)}
        if self.with_s:
            codes["s"] = means[:, self.z_dim:]
        return codes

    def decode(self, z, s=None):
        level = 1 / (1 + np.exp(-np.asarray(z, np.float32).mean(1)))
        return np.broadcast_to(level[:, None, None, None], (len(z),) + self.image_shape).astype(np.float32)


def placeholder_tsne(codes, colourings, path, points, seed):
    path.write_bytes(b"not a real PNG: t-SNE is stubbed")


@pytest.fixture
def evaluate(tiny_mnist, tmp_path, monkeypatch):
    """evaluate(*flags, with_s=True, dataset=None, data_dir=<the fixture's>) runs `eval_latents.main` on a
    stand-in model whose run folder is tmp_path/run; returns (results, model, run folder)."""
    root, mnist = tiny_mnist
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setattr(probes, "run_probes", lambda *args, **kwargs: ({}, {}))
    monkeypatch.setattr(probes, "pixel_ceiling", lambda *args, **kwargs: {"probes": {}, "details": {}})
    monkeypatch.setattr(blocks, "predictor_networks", lambda *args, **kwargs: ({}, None))
    monkeypatch.setattr(figures, "plot_tsne", placeholder_tsne)

    def run(*flags, with_s=True, dataset=None, data_dir=str(root)):
        dataset = dataset or mnist
        model = FakeModel(dataset.image_shape, with_s=with_s)
        info = {"script": "fake_model", "name": "test", "run_dir": run_dir, "path": run_dir / "model.keras",
                "config": {"dataset": dataset.name, "data_dir": data_dir, "seed": 0}}
        monkeypatch.setattr(checkpoint, "load_model", lambda path: (model, info))
        if dataset is not mnist:
            monkeypatch.setattr(data, "load_dataset", lambda name, data_dir=None, **options: dataset)
        return eval_latents.main(["--ckpt", str(run_dir), *flags]), model, run_dir
    return run


def exit_of(function, *args, **kwargs):
    with pytest.raises(SystemExit) as raised:
        function(*args, **kwargs)
    return raised.value.code


def siblings(folder):
    """Whatever else an evaluation left beside its output folder (staging or set-aside folders)."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(folder.name + "."))


def contents(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dead_pid():
    """The id of a process that has ended (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# ---------------------------------------------------------------------------------------------------------------
# 5. Size flags, and a failing figure
# ---------------------------------------------------------------------------------------------------------------

def test_swap_pairs_far_above_the_maximum_are_refused_at_parse_time(capsys):
    code = exit_of(common.parse_config, eval_latents.EvalConfig, ["--ckpt", "x", "--swap-pairs", "1000000000"])
    error = capsys.readouterr().err
    assert code == 2 and "--swap-pairs" in error and f"{eval_latents.MAX_SWAP_PAIRS}" in error
    assert common.parse_config(eval_latents.EvalConfig, ["--ckpt", "x", "--swap-pairs",
                                                         str(eval_latents.MAX_SWAP_PAIRS)]).swap_pairs > 0


def fake_sprites(frames=6, identities=(4, 2, 2)):
    """A Sprites-shaped dataset: `frames` frames per identity, identities split train / val / test."""
    counts = np.cumsum((0,) + identities)
    identity = np.repeat(np.arange(counts[-1]), frames)
    splits = {name: np.flatnonzero((identity >= counts[k]) & (identity < counts[k + 1]))
              for k, name in enumerate(("train", "val", "test"))}
    n = len(identity)
    labels = {"identity": identity, "attributes": np.tile(identity[:, None] % 2, (1, 7)), "action": identity % 3,
              "direction": identity % 2, "frame": np.arange(n) % frames}
    return data.Dataset(name="sprites", images=np.zeros((n, 8, 8, 3), np.uint8), labels=labels,
                        splits={**splits, "all": np.arange(n)}, class_label="identity")


def test_sprites_frames_per_identity_above_the_data_are_refused_before_encoding(evaluate, capsys):
    with pytest.raises(SystemExit) as raised:
        evaluate("--sprites-frames-per-identity", "10", dataset=fake_sprites(frames=6))
    error = capsys.readouterr().err
    assert raised.value.code == 2, raised.value.code
    assert "--sprites-frames-per-identity 10" in error and "at most 6" in error
    assert "Traceback" not in error


def test_tsne_points_above_the_test_set_are_capped_with_a_notice(evaluate, capsys):
    results, _, _ = evaluate("--tsne-points", "5000")
    notices = [line for line in capsys.readouterr().err.splitlines() if "--tsne-points" in line]
    assert len(notices) == 1 and notices[0].startswith("notice:") and "100 test rows" in notices[0]
    assert results["eval_config"]["tsne_points"] == 100  # what ran is what is recorded


def test_metrics_json_is_written_before_the_figures(evaluate, monkeypatch):
    seen = []
    monkeypatch.setattr(figures, "plot_tsne", lambda codes, colourings, path, points, seed: seen.append(
        json.loads((path.parent / "metrics.json").read_text())["dataset"]))
    evaluate()
    assert seen == ["mnist"]


def test_a_failing_figure_keeps_the_numbers_the_other_figures_and_the_report(evaluate, monkeypatch, tmp_path):
    def broken(*args):
        raise RuntimeError("t-SNE ran out of memory\nthe rest of a long message")
    monkeypatch.setattr(figures, "plot_tsne", broken)
    code = exit_of(evaluate)
    assert isinstance(code, str) and code.startswith("error: ")  # exit status 1
    assert "tsne.png" in code and "t-SNE ran out of memory" in code and "metrics.json" in code
    assert "the rest of a long message" not in code
    out = tmp_path / "run" / "eval"
    written = json.loads((out / "metrics.json").read_text())
    assert written["figures"]["failed"] == {"tsne.png": "RuntimeError: t-SNE ran out of memory"}
    assert "swap_grid.png" in written["figures"]["written"]
    report = (out / "report.md").read_text()
    assert "tsne.png" in report and "t-SNE ran out of memory" in report
    for name in ("swap_grid.png", "interpolation.png", "reconstructions.png", "dimensions.png", "traversal_0.png",
                 "traversal.gif", "codes.npz"):
        assert (out / name).is_file(), name
    assert not (out / "tsne.png").exists() and siblings(out) == []


# ---------------------------------------------------------------------------------------------------------------
# 6. Evaluation folders: whole or not at all
# ---------------------------------------------------------------------------------------------------------------

def test_a_re_evaluation_replaces_the_previous_folder_whole(evaluate):
    _, _, run_dir = evaluate()
    out = run_dir / "eval"
    (out / "swap_truth.png").write_bytes(b"a figure of an older evaluation, which this one does not draw")
    first = json.loads((out / "metrics.json").read_text())
    evaluate("--seed", "1")
    assert not (out / "swap_truth.png").exists()
    assert json.loads((out / "metrics.json").read_text())["eval_seed"] == 1 and first["eval_seed"] == 0
    assert siblings(out) == []


def test_a_failed_re_evaluation_leaves_the_previous_one_untouched(evaluate, monkeypatch):
    _, _, run_dir = evaluate()
    out = run_dir / "eval"
    before = contents(out)

    def disk_full(path, *args):
        path.write_bytes(b"PK\x03\x04 half an archive")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(checkpoint, "save_codes", disk_full)
    code = exit_of(evaluate, "--seed", "1")
    assert code.startswith("error: ") and "No space left on device" in code and "disk is full" in code
    assert str(out) in code and "untouched" in code
    assert contents(out) == before and siblings(out) == []


def test_the_folders_a_kill_leaves_are_cleaned_up_or_restored(evaluate, monkeypatch, capsys):
    _, _, run_dir = evaluate()
    out = run_dir / "eval"
    before = contents(out)
    # Killed while replacing: the previous evaluation set aside, the new one still in its staging folder.
    pid = dead_pid()
    out.rename(out.with_name(f"eval.old-{pid}"))
    staging = out.with_name(f"eval.partial-{pid}")
    staging.mkdir()
    (staging / "codes.npz").write_bytes(b"PK\x03\x04 truncated")
    # The next evaluation stops early (its data is missing), after it has tidied up.
    monkeypatch.setattr(data, "load_dataset", lambda *args, **kwargs: (_ for _ in ()).throw(
        data.MissingDataError("no data here")))
    assert "no data here" in exit_of(evaluate)
    assert contents(out) == before and siblings(out) == []
    notices = capsys.readouterr().err
    assert f"eval.old-{pid}" in notices and f"eval.partial-{pid}" in notices


# (A folder with a config.json, such as a run folder, is refused at parse time already, by common.parse_config.)
@pytest.mark.parametrize("files", [["notes.txt"], ["model.keras", "log.csv"], ["metrics.json", "notes.txt"],
                                   ["codes.npz"]])
def test_out_holding_other_files_is_refused_and_kept(evaluate, tmp_path, files):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in files:
        (mine / name).write_text(json.dumps({"schema": 1, "eval_config": {}}) if name == "metrics.json" else "mine")
    before = contents(mine)
    code = exit_of(evaluate, "--out", str(mine))
    assert code.startswith("error: --out ") and str(mine) in code
    assert contents(mine) == before and siblings(mine) == []


def test_codes_json_write_failure_keeps_the_previous_json(monkeypatch, tmp_path, stub_suite):
    path = tmp_path / "codes.npz"
    np.savez(path, codes=np.random.default_rng(0).standard_normal((60, 3)), factors=product(3, 4, 5))
    eval_latents.main(["--codes", str(path), "--fast"])
    written = tmp_path / "codes.metrics.json"
    before = written.read_bytes()

    def disk_full(self, text, *args, **kwargs):
        pathlib.Path.write_bytes(self, text[:10].encode())
        raise OSError(errno.ENOSPC, "No space left on device", str(self))
    monkeypatch.setattr(pathlib.Path, "write_text", disk_full)
    code = exit_of(eval_latents.main, ["--codes", str(path), "--fast", "--seed", "1"])
    assert code.startswith("error: ") and "No space left on device" in code
    assert written.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.metrics.json", "codes.npz"]


# ---------------------------------------------------------------------------------------------------------------
# 10. The data directory a run's config.json names
# ---------------------------------------------------------------------------------------------------------------

def test_a_missing_relative_data_dir_of_the_run_is_blamed_on_its_config(evaluate, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = exit_of(evaluate, data_dir="../shared/data")
    assert code.startswith("error: ") and "--data-dir DIR" in code
    assert str(tmp_path / "run" / "config.json") in code and "../shared/data" in code
    assert "current directory" in code and "from --data-dir" not in code


def test_a_missing_data_dir_passed_on_the_command_line_is_blamed_on_the_flag(evaluate, tmp_path):
    code = exit_of(evaluate, "--data-dir", str(tmp_path / "nowhere"))
    assert code.startswith("error: ") and "--data-dir" in code and str(tmp_path / "nowhere") in code
    assert "config.json" not in code


# ---------------------------------------------------------------------------------------------------------------
# 11. Flags that do not apply; too few codes
# ---------------------------------------------------------------------------------------------------------------

def test_flags_that_do_not_apply_to_the_model_or_data_get_a_notice(evaluate, capsys):
    evaluate("--no-predictors", "--swap-pairs", "100", "--sprites-frames-per-identity", "5", "--fast",
             with_s=False)
    notices = [line for line in capsys.readouterr().err.splitlines() if line.startswith("notice:")]
    for flag in ("--no-predictors", "--swap-pairs", "--sprites-frames-per-identity", "--fast"):
        assert sum(flag in line for line in notices) == 1, (flag, notices)
    assert all("ignored" in line for line in notices)


def test_default_flags_and_flags_that_apply_get_no_notice(evaluate, capsys):
    evaluate("--tsne-points", "50", "--probe-epochs", "7")
    assert "notice:" not in capsys.readouterr().err


def test_quick_capping_an_explicit_flag_gets_a_notice(evaluate, capsys):
    evaluate("--quick", "--probe-epochs", "50")
    notices = [line for line in capsys.readouterr().err.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and "--probe-epochs 50" in notices[0] and "--quick" in notices[0]


def test_probes_only_writes_the_numbers_beside_a_full_evaluation_and_leaves_it_untouched(evaluate, capsys):
    _, _, run_dir = evaluate()
    full = contents(run_dir / "eval")
    (run_dir / "log.csv").write_text("epoch,loss\n0,1.0\n1,0.5\n2,0.4\n")
    capsys.readouterr()
    results, _, _ = evaluate("--probes-only", "--no-predictors")
    out = run_dir / "eval_probes"
    assert sorted(p.name for p in out.iterdir()) == ["codes.npz", "metrics.json", "report.md"]
    assert contents(run_dir / "eval") == full  # the full evaluation is not replaced
    written = json.loads((out / "metrics.json").read_text())
    assert written["eval_config"]["probes_only"] and written["trained_epochs"] == 3
    assert "predictors" not in written and written["figures"] == {"written": [], "failed": {}}
    assert "predictors" in json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert "Probes only" in (out / "report.md").read_text() and "logged 3 epochs" in (out / "report.md").read_text()
    notices = [line for line in capsys.readouterr().err.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and "--no-predictors" in notices[0] and "--probes-only" in notices[0]


def product(*sizes):
    return np.stack(np.meshgrid(*[np.arange(n) for n in sizes], indexing="ij"), -1).reshape(-1, len(sizes))


@pytest.fixture
def stub_suite(monkeypatch):
    """metrics.all_metrics replaced by constant scores: these tests are about the checks around it."""
    def all_metrics(represent, sampler, seed=0, fast=False, progress=print, names=None):
        return {"preset": "fast" if fast else "study", "seed": seed, "num_rows": len(sampler),
                "min_group_size": sampler.min_group_size(),
                "settings": metrics.FAST_SETTINGS if fast else metrics.STUDY_SETTINGS,
                "seconds": {name: 0.0 for name in metrics.METRICS},
                "disentanglement": {name: 0.5 for name in metrics.HEADLINE}, **{name: {} for name in metrics.METRICS}}
    monkeypatch.setattr(metrics, "all_metrics", all_metrics)


def test_too_few_codes_are_refused():
    factors = np.array([[0, 0], [1, 1], [0, 1], [1, 0], [0, 0]])
    codes = factors + 0.1 * np.random.default_rng(0).standard_normal(factors.shape)
    with pytest.raises(scoring.CodesError, match=f"at least {scoring.MIN_ROWS} rows"):
        scoring.score_codes(codes, factors, fast=True, progress=None)


def test_too_few_codes_in_a_file_are_refused_on_the_command_line(tmp_path):
    factors = np.tile(product(2, 2), (3, 1))
    np.savez(tmp_path / "few.npz", codes=factors.astype(float), factors=factors)
    code = exit_of(eval_latents.main, ["--codes", str(tmp_path / "few.npz"), "--fast"])
    assert code.startswith("error: ") and "12 rows" in code and f"at least {scoring.MIN_ROWS}" in code
    assert not (tmp_path / "few.metrics.json").exists()


def test_few_codes_are_scored_with_a_warning_recorded_in_the_json(tmp_path, stub_suite, capsys):
    factors = np.repeat(product(3, 4), 2, axis=0)  # 24 rows, the smallest value group holds 6
    np.savez(tmp_path / "few.npz", codes=factors.astype(float), factors=factors)
    eval_latents.main(["--codes", str(tmp_path / "few.npz"), "--fast"])
    written = json.loads((tmp_path / "few.metrics.json").read_text())
    assert len(written["warnings"]) == 1 and "24 rows" in written["warnings"][0]
    assert f"warning: {written['warnings'][0]}" in capsys.readouterr().err
    factors = np.vstack([product(3, 4)[:-1]] * 100 + [product(3, 4)[-1:]])  # 1101 rows; value (2, 3) once
    np.savez(tmp_path / "thin.npz", codes=factors.astype(float), factors=factors)
    written = eval_latents.main(["--codes", str(tmp_path / "thin.npz"), "--fast"])
    assert len(written["warnings"]) == 0
    factors = np.vstack([product(3, 4)[:-1]] * 100 + [[[2, 4]]])  # 1101 rows; factor 1 takes the value 4 once
    np.savez(tmp_path / "thin.npz", codes=factors.astype(float), factors=factors)
    written = eval_latents.main(["--codes", str(tmp_path / "thin.npz"), "--fast"])
    assert len(written["warnings"]) == 1 and "one row" in written["warnings"][0]


def test_model_flags_with_codes_get_a_notice(tmp_path, stub_suite, capsys):
    factors = np.tile(product(3, 4, 5), (20, 1))
    np.savez(tmp_path / "codes.npz", codes=factors.astype(float), factors=factors)
    eval_latents.main(["--codes", str(tmp_path / "codes.npz"), "--fast", "--probe-epochs", "5", "--no-predictors"])
    notices = [line for line in capsys.readouterr().err.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and "--probe-epochs" in notices[0] and "--no-predictors" in notices[0]
    assert "--codes" in notices[0]


def test_a_damaged_or_unwritable_pixel_cache_never_costs_the_evaluation(tmp_path, monkeypatch, tiny_mnist):
    _, dataset = tiny_mnist
    cache = tmp_path / "eval-cache" / "mnist-pixel-probes.json"
    cache.parent.mkdir()
    cache.write_text('{"probes": {"pix')  # Cut short by a kill.
    computed = {"probes": {"pixels": 0.5}, "details": {}}
    monkeypatch.setattr(probes, "pixel_cache_path", lambda *args: cache)
    monkeypatch.setattr(probes, "pixel_features", lambda *args, **kwargs: np.zeros((3, 2)))
    monkeypatch.setattr(probes, "run_probes", lambda *args: (computed["probes"], computed["details"]))
    config = eval_latents.EvalConfig(ckpt="x")
    lines = []
    tasks = {"digit": (np.arange(3), None)}
    assert probes.pixel_ceiling(dataset, np.arange(3), {}, tasks, config, lines.append)["probes"] == {"pixels": 0.5}
    assert "unreadable" in lines[0] and json.loads(cache.read_text())["probes"] == {"pixels": 0.5}  # Rewritten.

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    cache.unlink()
    monkeypatch.setattr(common, "write_json", full_disk)
    assert probes.pixel_ceiling(dataset, np.arange(3), {}, tasks, config, lines.append)["probes"] == {"pixels": 0.5}
    assert "not cached" in lines[-1] and "disk is full" in lines[-1]
