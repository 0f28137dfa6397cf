"""Write the README's headline results table from the evaluations of the checkpoints in pretrained/.

    python benchmarks/results_table.py            # print the table
    python benchmarks/results_table.py --write    # put it into README.md, between the results-table markers
    python benchmarks/results_table.py --check    # exit 1, showing the difference, when README.md disagrees

Every number in a row is read from pretrained/<name>.metrics.json, which `eval_latents.py --ckpt
pretrained/<name>.keras` writes (as eval/metrics.json of runs/eval_<name>/; copy it beside the checkpoint). The
training command comes from the first command line in pretrained/<name>.command.txt, without the flags that only
say where this machine kept its data and run (--data-dir, --out). Only the papers' figures, the links to the
results pages and a seed study's medians (copied from the page that gives the study's command, since a study's
run folders are not published) are written here, in ROWS. tests/test_results_table.py fails when the README's
table is not what this script writes, so a number a user reads can always be traced to a file they can re-create.
"""
import argparse
import dataclasses
import difflib
import functools
import json
import pathlib
import shlex
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import data  # noqa: E402  (ATTRIBUTES: the Sprites attribute names)

PRETRAINED = ROOT / "pretrained"
README = ROOT / "README.md"
START = "<!-- results-table: written by `python benchmarks/results_table.py --write` from pretrained/*.metrics.json -->"
END = "<!-- /results-table -->"
HEADER = ("| model | dataset | key numbers | published | training command | reproduce "
          "| details |\n|---|---|---|---|---|---|---|")
MACHINE_FLAGS = ("--data-dir", "--out")  # where one machine kept its data and run folder: not part of the recipe


class TableError(ValueError):
    """A pretrained file that is missing or cannot back its row; the message names the file and the fix."""


def _percent(value):
    return f"{100 * value:.1f}"


def mnist_split_codes(metrics, s_name="s"):
    """Key numbers of a specified/unspecified model on MNIST: MLP probes of s (mean), z sampled and z mean."""
    probes = metrics["probes"]
    return (f"{s_name} {_percent(probes['s/digit/mlp/mean'])}, sampled z {_percent(probes['z/digit/mlp/sampled'])}, "
            f"z mean {_percent(probes['z/digit/mlp/mean'])}; chance {_percent(metrics['chance']['digit'])}")


SPRITES_ALWAYS_DRAWN = tuple(name for name in data.ATTRIBUTES if name != "weapon")  # the weapon: some frames


def sprites_split_codes(metrics, s_name="s"):
    """Key numbers of a specified/unspecified model on Sprites: the 100-way identity of unseen identities from s,
    a sampled z and z's mean (MLP probes), and s on the attributes drawn in every frame."""
    probes = metrics["probes"]
    attributes = [probes[f"s/{name}/mlp/mean"] for name in SPRITES_ALWAYS_DRAWN]
    return (f"identity (100-way, unseen identities): {s_name} {_percent(probes['s/identity/mlp/mean'])}, sampled z "
            f"{_percent(probes['z/identity/mlp/sampled'])}, z mean {_percent(probes['z/identity/mlp/mean'])}; chance "
            f"{_percent(metrics['chance']['identity'])}. {s_name} on the six always-drawn attributes "
            f"{_percent(min(attributes))}-{_percent(max(attributes))}")


def dsprites_scores(metrics):
    """Key numbers of an unsupervised model on dSprites: the disentanglement_lib scores at study sizes (0 to 1)."""
    scores = metrics["disentanglement"]
    return (f"BetaVAE {scores['beta_vae']:.3f}, FactorVAE {scores['factor_vae']:.3f}, MIG {scores['mig']:.3f}, "
            f"DCI {scores['dci/disentanglement']:.3f}")


@dataclasses.dataclass(frozen=True)
class Row:
    name: str  # pretrained/<name>.keras, .metrics.json, .command.txt
    model: str  # the first column, before "(N epochs)" read from the run's config
    published: str  # the papers' own figures and the public checkpoints scored our way (docs/results/...)
    details: str  # link into docs/results
    numbers: object = mnist_split_codes  # metrics.json -> the key-numbers text
    also: str = ""  # written after the checkpoint's numbers: a seed study's figures, with the page that holds them

    def files(self, folder):
        return {kind: folder / f"{self.name}{suffix}" for kind, suffix in
                (("checkpoint", ".keras"), ("metrics", ".metrics.json"), ("command", ".command.txt"))}


# Mathieu et al. 2016, Table 1 (MNIST, test): beside both our MNIST rows of it.
MATHIEU_MNIST_PUBLISHED = "Mathieu et al. 2016: s 98.52, z 66.83"
# Jha et al. 2018 ran Mathieu et al. on Sprites in their comparison table; each of our Sprites rows stands beside it.
MATHIEU_SPRITES_PUBLISHED = ("Jha et al. 2018 report for it, z 512, s 64: s 96.75, z 11.98 on a target the paper does "
                             "not name (not the identity)")

ROWS = (
    Row("cycle_vae_mnist", "cycle-VAE, paper setting",
        "Jha et al. 2018: s 98.35, sampled z 17.56; official checkpoint, our protocol: s 98.6, sampled z 16.1, "
        "z mean 75.5",
        "[cycle_vae.md](docs/results/cycle_vae.md#the-published-checkpoint)"),
    Row("cycle_vae_sprites", "cycle-VAE",
        "Jha et al. 2018, z 512, s 64: s 97.16, z 11.47 on a target the paper does not name (not the identity)",
        "[cycle_vae.md](docs/results/cycle_vae.md#the-published-sprites-checkpoint)", numbers=sprites_split_codes),
    Row("adversarial_disentangle_mnist", "Mathieu et al. 2016, reference settings, `--kl-weight 3`",
        f"{MATHIEU_MNIST_PUBLISHED}; public checkpoint, our protocol: s 98.4, sampled z 68.6, z mean 88.8",
        "[adversarial_disentangle.md](docs/results/adversarial_disentangle.md#mnist-reference-settings-with-kl-weight-3-50-epochs-the-pretrained-checkpoint)"),
    Row("adversarial_disentangle_mnist_kl1", "Mathieu et al. 2016, reference settings, the paper's KL weight 1",
        MATHIEU_MNIST_PUBLISHED,
        "[adversarial_disentangle.md](docs/results/adversarial_disentangle.md#mnist-reference-settings-with-the-papers-kl-weight-1-50-epochs)"),
    Row("adversarial_disentangle_sprites", "Mathieu et al. 2016, shortened schedule",
        MATHIEU_SPRITES_PUBLISHED,
        "[adversarial_disentangle.md](docs/results/adversarial_disentangle.md#sprites-z-512-s-64-8-epochs)",
        numbers=sprites_split_codes),
    Row("adversarial_disentangle_sprites_joint", "Mathieu et al. 2016, one weighted loss (the Lua code's balance)",
        MATHIEU_SPRITES_PUBLISHED,
        "[adversarial_disentangle.md](docs/results/adversarial_disentangle.md#sprites-one-weighted-loss-8-epochs)",
        numbers=sprites_split_codes),
    Row("adversarial_disentangle_sprites_joint_kl5",
        "Mathieu et al. 2016, one weighted loss, `--kl-weight 5` after a KL warm-up",
        MATHIEU_SPRITES_PUBLISHED,
        "[adversarial_disentangle.md](docs/results/adversarial_disentangle.md#one-weighted-loss---kl-weight-5-after-a-two-epoch-kl-warm-up-16-epochs)",
        numbers=sprites_split_codes),
    Row("mlvae_mnist", "ML-VAE, MLP, paper setting",
        "Bouchacourt et al. 2018 / public code: sampled style 42.06; public checkpoint, our protocol: s (one image) "
        "75.2, sampled z 41.1, z mean 70.4",
        "[mlvae.md](docs/results/mlvae.md)",
        numbers=functools.partial(mnist_split_codes, s_name="s (one image)")),
    Row("mlvae_mnist_conv", "ML-VAE, the cycle-VAE's conv network",
        "Bouchacourt et al. 2018 use the MLP (row above): sampled style 42.06",
        "[mlvae.md](docs/results/mlvae.md#mnist-the-convolutional-network-400-epochs)",
        numbers=functools.partial(mnist_split_codes, s_name="s (one image)")),
    Row("mlvae_sprites", "ML-VAE, conv", "no published Sprites probe figure",
        "[mlvae.md](docs/results/mlvae.md#sprites-conv-network-16-epochs)",
        numbers=functools.partial(sprites_split_codes, s_name="s (one image)")),
    Row("beta_vae_dsprites", "beta-VAE, beta 16",
        "Locatello et al. 2019 bands for beta-VAE (encoder mean): BetaVAE 0.75-0.90, FactorVAE 0.55-0.80, "
        "MIG 0.05-0.35, DCI 0.10-0.45",
        "[beta_vae.md](docs/results/beta_vae.md#the-published-checkpoint)", numbers=dsprites_scores,
        also="median of 3 seeds ([study](docs/results/beta_vae.md#beta--16-50-epochs-three-seeds)): 0.879, 0.597, "
             "0.394, 0.511"),
)


def training_command(path):
    """The first command line of a .command.txt, without the machine-specific flags."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    commands = [line for line in lines if line.startswith("python ")]
    if not commands:
        raise TableError(f"{path} holds no command line starting with 'python '; write the training command there.")
    words, kept = shlex.split(commands[0]), []
    while words:
        word = words.pop(0)
        flag = word.split("=", 1)[0]
        if flag in MACHINE_FLAGS:
            if "=" not in word and words:
                words.pop(0)  # the flag's value
            continue
        kept.append(word)
    return shlex.join(kept)


def row_text(row, folder=PRETRAINED):
    files = row.files(folder)
    for kind, path in files.items():
        if not path.is_file():
            raise TableError(f"The row of {row.name} needs {path} ({kind}), which does not exist. Export the run with "
                             "common.export_checkpoint, evaluate it with eval_latents.py --ckpt and copy its "
                             "metrics.json there, or drop the row from ROWS in benchmarks/results_table.py.")
    metrics = json.loads(files["metrics"].read_text())
    expected = f"pretrained/{row.name}.keras"
    if metrics.get("checkpoint") != expected:
        raise TableError(f"{files['metrics']} is the evaluation of {metrics.get('checkpoint')!r}, not of {expected}: "
                         f"run python eval_latents.py --ckpt {expected} and copy its metrics.json there.")
    if metrics.get("eval_config", {}).get("quick"):
        raise TableError(f"{files['metrics']} comes from a --quick evaluation, whose numbers are not comparable; "
                         f"evaluate {expected} without --quick.")
    try:
        numbers = row.numbers(metrics)
        config = metrics["config"]
        dataset = {"mnist": "MNIST", "sprites": "Sprites", "dsprites": "dSprites"}[metrics["dataset"]]
        model = f"{row.model} ({config['epochs']} epochs)"
    except KeyError as error:
        raise TableError(f"{files['metrics']} lacks {error}, which its row needs; evaluate {expected} again with "
                         "this version of eval_latents.py.") from error
    if row.also:
        numbers = f"{numbers}; {row.also}"
    command = training_command(files["command"])
    reproduce = f"`python eval_latents.py --ckpt {expected}`"
    return f"| {model} | {dataset} | {numbers} | {row.published} | `{command}` | {reproduce} | {row.details} |"


def table(folder=PRETRAINED, rows=ROWS):
    return "\n".join([HEADER] + [row_text(row, folder) for row in rows])


def readme_table(text, readme=README):
    """The table between the markers of a README's text."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise TableError(f"{readme} must hold the line\n{START}\nonce, followed by the table and the line {END}.")
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n")


def differences(readme=README, folder=PRETRAINED, rows=ROWS):
    """Unified diff lines between the README's table and the one the pretrained files give (empty when equal)."""
    written = readme_table(pathlib.Path(readme).read_text(), readme)
    return list(difflib.unified_diff(written.splitlines(), table(folder, rows).splitlines(),
                                     f"{readme} (now)", "from pretrained/*.metrics.json", lineterm=""))


def write(readme=README, folder=PRETRAINED, rows=ROWS):
    readme = pathlib.Path(readme)
    text = readme.read_text()
    readme_table(text, readme)  # checks the markers
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    new = f"{before}{START}\n{table(folder, rows)}\n{END}{after}"
    temporary = readme.with_name(readme.name + ".tmp")
    temporary.write_text(new)
    temporary.replace(readme)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="replace the table in README.md")
    action.add_argument("--check", action="store_true", help="exit 1 when README.md's table differs")
    args = parser.parse_args(argv)
    try:
        if args.write:
            write()
            print(f"wrote the table of {len(ROWS)} rows into {README}")
        elif args.check:
            diff = differences()
            if diff:
                print("\n".join(diff))
                sys.exit(f"error: the table in {README} differs from pretrained/*.metrics.json; run "
                         "python benchmarks/results_table.py --write")
            print(f"{README}: the table matches pretrained/*.metrics.json ({len(ROWS)} rows)")
        else:
            print(table())
    except TableError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
