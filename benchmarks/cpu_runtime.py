"""Time the model scripts' `--benchmark` under TensorFlow CPU runtime settings, side by side in one run.

    python benchmarks/cpu_runtime.py --data-dir DATA_DIR --rounds 3
    python benchmarks/cpu_runtime.py --data-dir DATA_DIR --torch-python /tmp/torch/bin/python
    python benchmarks/cpu_runtime.py --data-dir DATA_DIR --only "cycle-VAE Sprites"   # names holding it

Each setting is one environment for a fresh process of `cycle_vae.py --dataset mnist --benchmark` or
`beta_vae.py --benchmark` (dSprites conv net): TensorFlow's default CPU allocator against the BFC allocator that
common.configure_cpu() now selects (TF_CPU_ALLOCATOR_USE_BFC), and for the cycle-VAE one thread per op (its
default) against two (TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS, which configure_cpu leaves to the user).
The Sprites cycle-VAE (60x60x3, z 512, s 64) is timed with one and with two threads per op as well. The settings
take turns within every round, so that the load of a shared machine falls on all of them alike. --only picks
settings by a part of their name; note that "Sprites" is also part of "dSprites".
With --torch-python (an interpreter with PyTorch), each round also runs benchmarks/torch_reference_step.py, the
public reference's cycle-VAE step. Prints every figure and the median per setting (ms/iter; lower is faster).
"""
import argparse
import os
import pathlib
import re
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_ALLOCATOR = {"TF_CPU_ALLOCATOR_USE_BFC": "false"}
TWO_THREADS_PER_OP = {"TF_NUM_INTRAOP_THREADS": "2", "TF_NUM_INTEROP_THREADS": "2"}
CYCLE_MNIST, BETA_DSPRITES = ["cycle_vae.py", "--dataset", "mnist"], ["beta_vae.py"]
CYCLE_SPRITES = ["cycle_vae.py", "--dataset", "sprites"]
SETTINGS = {  # name -> (script and flags, environment)
    "cycle-VAE MNIST, default allocator, 1 thread/op": (CYCLE_MNIST, DEFAULT_ALLOCATOR),
    "cycle-VAE MNIST, BFC allocator, 1 thread/op (default)": (CYCLE_MNIST, {}),
    "cycle-VAE MNIST, BFC allocator, 2 threads/op": (CYCLE_MNIST, TWO_THREADS_PER_OP),
    "beta-VAE dSprites conv, default allocator": (BETA_DSPRITES, DEFAULT_ALLOCATOR),
    "beta-VAE dSprites conv, BFC allocator (default)": (BETA_DSPRITES, {}),
    "cycle-VAE Sprites, BFC allocator, 1 thread/op (default)": (CYCLE_SPRITES, {}),
    "cycle-VAE Sprites, BFC allocator, 2 threads/op": (CYCLE_SPRITES, TWO_THREADS_PER_OP),
}
FIGURE = re.compile(r"benchmark: ([0-9.]+) ms/iter")


def select(only):
    """The settings whose name contains any of the texts in `only` (case-insensitive); all of them if it is empty."""
    return {name: setting for name, setting in SETTINGS.items()
            if not only or any(text.lower() in name.lower() for text in only)}


def time_one(command, environment):
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, **environment}, capture_output=True, text=True)
    found = FIGURE.search(result.stdout)
    if result.returncode != 0 or not found:
        sys.exit(f"error: {' '.join(command)} failed (exit status {result.returncode}):\n{result.stderr[-2000:]}")
    return float(found.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="folder with the datasets (as for the model scripts)")
    parser.add_argument("--rounds", type=int, default=3, help="times each setting is run (default 3)")
    parser.add_argument("--torch-python", default=None, help="a Python with PyTorch, to time the reference step too")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="time only the settings whose name contains TEXT (case-insensitive; repeatable)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    chosen = select(args.only)
    if not chosen:
        parser.error(f"--only {' / '.join(args.only)} matches no setting; the settings are: " + "; ".join(SETTINGS))
    data_flags = ["--data-dir", args.data_dir] if args.data_dir else []
    runs = {name: ([sys.executable, *script, *data_flags, "--benchmark"], environment)
            for name, (script, environment) in chosen.items()}
    if args.torch_python:
        runs["PyTorch reference cycle-VAE MNIST step, 2 threads"] = (
            [args.torch_python, "benchmarks/torch_reference_step.py", "--threads", "2"], {})
    figures = {name: [] for name in runs}
    for round_number in range(1, args.rounds + 1):
        for name, (command, environment) in runs.items():
            figures[name].append(time_one(command, environment))
            print(f"round {round_number}: {name}: {figures[name][-1]:.1f} ms/iter", flush=True)
    print("\n| setting | ms/iter, each round | median |\n|---|---|---|")
    for name, values in figures.items():
        print(f"| {name} | {', '.join(f'{value:.1f}' for value in values)} | {statistics.median(values):.1f} |")


if __name__ == "__main__":
    main()
