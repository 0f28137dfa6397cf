"""The README's headline table against the evaluations in pretrained/ (benchmarks/results_table.py)."""
import json
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import results_table  # noqa: E402


def test_the_readme_table_is_what_the_pretrained_metrics_give():
    diff = results_table.differences()
    assert not diff, "README.md's results table disagrees with pretrained/*.metrics.json " \
                     "(python benchmarks/results_table.py --write):\n" + "\n".join(diff)


def test_every_row_has_its_checkpoint_metrics_and_command():
    for row in results_table.ROWS:
        for path in row.files(results_table.PRETRAINED).values():
            assert path.is_file(), path


def fake_metrics(checkpoint="pretrained/toy.keras", quick=False, epochs=7):
    return {"checkpoint": checkpoint, "dataset": "mnist", "config": {"epochs": epochs},
            "eval_config": {"quick": quick}, "chance": {"digit": 0.1135},
            "probes": {"s/digit/mlp/mean": 0.98765, "z/digit/mlp/sampled": 0.2001, "z/digit/mlp/mean": 0.7449}}


def make_folder(tmp_path, metrics, command="python toy.py --dataset mnist --data-dir /data --out runs/x --beta=2"):
    folder = tmp_path / "pretrained"
    folder.mkdir(exist_ok=True)
    (folder / "toy.keras").write_bytes(b"not read by the table")
    (folder / "toy.metrics.json").write_text(json.dumps(metrics))
    (folder / "toy.command.txt").write_text(f"# trained on some machine\n{command}\npython eval_latents.py ...\n")
    return folder


TOY = results_table.Row("toy", "toy model", "paper: 1.0", "[toy.md](docs/results/toy.md)")


def test_a_row_reads_its_numbers_epochs_and_command_from_the_files(tmp_path):
    folder = make_folder(tmp_path, fake_metrics())
    assert results_table.row_text(TOY, folder) == (
        "| toy model (7 epochs) | MNIST | s 98.8, sampled z 20.0, z mean 74.5; chance 11.3 | paper: 1.0 "
        "| `python toy.py --dataset mnist --beta=2` | `python eval_latents.py --ckpt pretrained/toy.keras` "
        "| [toy.md](docs/results/toy.md) |")


@pytest.mark.parametrize("metrics, message", [
    (fake_metrics(checkpoint="runs/toy/model.keras"), "not of pretrained/toy.keras"),
    (fake_metrics(quick=True), "--quick evaluation"),
    ({**fake_metrics(), "probes": {}}, "lacks 's/digit/mlp/mean'"),
])
def test_metrics_that_cannot_back_the_row_are_refused(tmp_path, metrics, message):
    folder = make_folder(tmp_path, metrics)
    with pytest.raises(results_table.TableError, match=message):
        results_table.row_text(TOY, folder)


def test_a_missing_file_is_named(tmp_path):
    folder = make_folder(tmp_path, fake_metrics())
    (folder / "toy.command.txt").unlink()
    with pytest.raises(results_table.TableError, match="toy.command.txt"):
        results_table.row_text(TOY, folder)


def test_check_finds_a_changed_number_and_write_repairs_it(tmp_path):
    folder = make_folder(tmp_path, fake_metrics())
    readme = tmp_path / "README.md"
    good = results_table.table(folder, (TOY,))
    readme.write_text(f"# title\n\n{results_table.START}\n{good}\n{results_table.END}\n\nrest\n")
    assert results_table.differences(readme, folder, (TOY,)) == []
    readme.write_text(readme.read_text().replace("sampled z 20.0", "sampled z 19.0"))
    diff = results_table.differences(readme, folder, (TOY,))
    assert "-" + good.splitlines()[-1].replace("sampled z 20.0", "sampled z 19.0") in diff
    results_table.write(readme, folder, (TOY,))
    assert results_table.differences(readme, folder, (TOY,)) == []
    assert readme.read_text().startswith("# title\n") and readme.read_text().endswith("\n\nrest\n")


def test_a_readme_without_the_markers_is_refused(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("| a | table |\n")
    with pytest.raises(results_table.TableError, match="results-table"):
        results_table.differences(readme, tmp_path, ())


def test_the_readme_snippet_encodes_and_swaps_a_users_images(tmp_path, tiny_mnist):
    """The README's Python snippet, as a new user runs it: their own PNG digits, a pretrained model, a swap grid."""
    from PIL import Image

    text = (ROOT / "README.md").read_text()
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(snippet.strip().splitlines()) <= 10
    _, dataset = tiny_mnist
    names = ["my_digit_1.png", "my_digit_2.png", "my_digit_3.png"]
    for name, image in zip(names, dataset.images[:3]):
        Image.fromarray(image[..., 0]).resize((56, 56)).save(tmp_path / name)  # not 28 x 28: the snippet resizes
    (tmp_path / "pretrained").symlink_to(ROOT / "pretrained")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    grid = Image.open(tmp_path / "swap.png")
    assert grid.size[0] > 4 * 28 and grid.size[0] == grid.size[1]  # (3 + 1) cells of 28 and the padding
