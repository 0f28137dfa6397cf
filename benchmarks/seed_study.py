"""Train and evaluate one model setting under several seeds, then report each seed's scores and their median.

    python benchmarks/seed_study.py --out runs/beta16_dsprites_e50 --seeds 0 1 2 \\
        --eval-args "--data-dir DIR --probe-epochs 20 --patience 5 --tsne-points 3000" \\
        -- beta_vae.py --data-dir DIR --epochs 50 --beta 16 --no-evaluate
    python benchmarks/seed_study.py --out runs/beta16_dsprites_e50 --seeds 0 1 2 --summary-only

Everything after `--` is the training command (a model script and its flags, without --seed and --out). Seed N
trains into <out>_seedN with `--seed N --out <out>_seedN`, and `eval_latents.py --ckpt <out>_seedN/model.keras`
then writes <out>_seedN/eval/metrics.json. Rerunning the same command picks up where it stopped: a seed whose
evaluation exists is not touched, a seed whose run folder exists is continued with --resume (each script
checkpoints every epoch), so a study longer than one sitting can be finished later. Seeds run one after the
other: on a 2-core CPU two trainings side by side take as long as both in a row.

The summary (printed, and written to <out>_seeds.md and <out>_seeds.json) follows docs/evaluation.md Sec. 6: one row
per evaluated seed with its headline scores, then the mean +- sample standard deviation (ddof 1) and the median
over those seeds (the issues' goals are medians). The headline scores are the metric suite's (`disentanglement`
in metrics.json) where it ran, i.e. on dSprites; otherwise, for the specified/unspecified models, the MLP probe
accuracies (%) of s, of a sampled z and of z's mean per target, the target's chance and z's active dimensions:

    python benchmarks/seed_study.py --out runs/cycle_vae_mnist --seeds 0 1 2 --eval-args "--data-dir DIR" \\
        -- cycle_vae.py --dataset mnist --data-dir DIR --no-evaluate

Its title says how many seeds it covers, so a partial study is never read as the full one.
"""
import argparse
import json
import pathlib
import shlex
import statistics
import subprocess
import sys

EVAL_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "eval_latents.py"
SHOWN = ("beta_vae", "factor_vae", "mig", "dci/disentanglement", "dci/completeness", "dci/informativeness",
         "sap", "modularity", "explicitness")


def run_dir(out, seed):
    return pathlib.Path(f"{out}_seed{seed}")


def metrics_path(out, seed):
    return run_dir(out, seed) / "eval" / "metrics.json"


def run(command):
    print(f"[seed_study] {shlex.join(command)}", flush=True)
    status = subprocess.call(command)
    if status != 0:
        sys.exit(f"error: this command failed (exit status {status}); its run folder is kept, so rerunning the "
                 f"study continues it:\n  {shlex.join(command)}")


def train_and_evaluate(out, seed, train_command, eval_args):
    folder = run_dir(out, seed)
    if metrics_path(out, seed).exists():
        print(f"[seed_study] seed {seed}: already evaluated ({metrics_path(out, seed)})", flush=True)
        return
    resume = ["--resume"] if (folder / "config.json").exists() else []
    run([sys.executable, *train_command, "--seed", str(seed), "--out", str(folder), *resume])
    run([sys.executable, str(EVAL_SCRIPT), "--ckpt", str(folder / "model.keras"), *eval_args])


PROBE_SHOWN = (("s", "mlp", "mean"), ("z", "mlp", "sampled"), ("z", "mlp", "mean"))  # per target, in this order


def headline(metrics, path):
    """(preset, scores) of one seed's metrics.json, the preset saying how it was scored: the metric suite's
    headline scores where it ran (dSprites), otherwise the MLP probe accuracies of s, sampled z and z's mean per
    target, z's active dimensions and chance (the specified/unspecified models on MNIST and Sprites). Scores are
    plain numbers; None where not computed."""
    if metrics.get("disentanglement"):
        preset = metrics.get("disentanglement_details", {}).get("preset", "unknown")
        return preset, {name: metrics["disentanglement"].get(name) for name in SHOWN}
    probes = metrics.get("probes") or {}
    targets = list(dict.fromkeys(key.split("/")[1] for key in probes if key.startswith("z/")))
    if not targets:
        sys.exit(f"error: {path} has neither metric-suite scores ('disentanglement') nor probes of z; evaluate the "
                 "seeds with eval_latents.py --ckpt (without --fast or options that skip the probes).")
    scores = {}
    for target in targets:
        for code, probe, kind in PROBE_SHOWN:
            scores[f"{target}: {code}" + ("" if code == "s" else f" {kind}")] = probes.get(
                f"{code}/{target}/{probe}/{kind}")
        scores[f"{target}: chance"] = metrics.get("chance", {}).get(target)
    active = metrics.get("z_dimensions", {}).get("active")
    scores["z active dims"] = None if active is None else sum(active)
    quick = metrics.get("eval_config", {}).get("quick")
    return f"probes ({'quick' if quick else 'full'} evaluation)", scores


def summarise(out, seeds):
    """Per-seed headline scores and their median over the evaluated seeds, as Markdown and as a dict."""
    rows, presets = {}, {}
    for seed in seeds:
        path = metrics_path(out, seed)
        if path.exists():
            presets[seed], rows[seed] = headline(json.loads(path.read_text()), path)
    if not rows:
        sys.exit(f"error: no seed of {out} has been evaluated yet (no {metrics_path(out, seeds[0])}); run the study "
                 "without --summary-only first.")
    if len(set(presets.values())) > 1:  # docs/evaluation.md Sec. 6: never mix fast-preset and study-size numbers
        sys.exit(f"error: the seeds were scored with different metric presets ({presets}); evaluate them all with the "
                 "same eval_latents.py flags (delete the odd ones' eval/ folders and rerun the study).")
    preset = next(iter(presets.values()))
    columns = list(dict.fromkeys(name for scores in rows.values() for name in scores))
    names = [name for name in columns if any(rows[seed].get(name) is not None for seed in rows)]
    median, mean, std = {}, {}, {}
    for name in names:
        values = [rows[seed][name] for seed in rows if rows[seed].get(name) is not None]
        median[name], mean[name] = statistics.median(values), statistics.fmean(values)
        std[name] = statistics.stdev(values) if len(values) > 1 else None
    missing = [seed for seed in seeds if seed not in rows]
    probes = preset.startswith("probes")
    title = f"{out}: median of {len(rows)} of {len(seeds)} seeds, {preset}{'' if probes else ' metric preset'}" + (
        f" (not yet evaluated: {', '.join(map(str, missing))})" if missing else "")
    # Probe accuracies read as percentages, like every probe table of the project; the suite's scores as they are.
    form = _percent if probes else _format
    lines = [title, "", "| seed | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for seed, scores in rows.items():
        lines.append(f"| {seed} | " + " | ".join(form(scores.get(name), name) for name in names) + " |")
    lines.append("| mean +- std | " + " | ".join(
        form(mean[name], name) + (f" +- {form(std[name], name)}" if std[name] is not None else "")
        for name in names) + " |")
    lines.append("| **median** | " + " | ".join(f"**{form(median[name], name)}**" for name in names) + " |")
    summary = {"seeds": {str(seed): rows[seed] for seed in rows}, "preset": preset,
               "median": median, "mean": mean, "std_ddof1": std, "n": len(rows), "missing_seeds": missing}
    return "\n".join(lines) + "\n", summary


def _format(value, name=None):
    return "n/a" if value is None else f"{value:.3f}"


def _percent(value, name):
    if value is None:
        return "n/a"
    return f"{value:.1f}" if name == "z active dims" else f"{100 * value:.1f}"


STUDY_FLAGS = ("--seed", "--out", "--resume")


def sets_study_flag(word):
    """Whether a training-command word would set one of the flags the study sets per seed.

    argparse reads "--seed=3" like "--seed 3", and also accepts any unambiguous prefix ("--se 3"), so a word counts
    when the part before any "=" is one of STUDY_FLAGS or a prefix of one. A prefix that several flags share would
    be refused by argparse anyway, so refusing it here too costs nothing.
    """
    flag = word.split("=", 1)[0]
    return flag.startswith("--") and len(flag) > 2 and any(name.startswith(flag) for name in STUDY_FLAGS)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="run folder prefix; seed N trains into <out>_seedN")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    parser.add_argument("--eval-args", default="", help="flags for eval_latents.py, as one quoted string")
    parser.add_argument("--summary-only", action="store_true", help="only summarise the seeds evaluated so far")
    args = parser.parse_args(argv[:split])
    train_command = argv[split + 1:]
    if not args.summary_only:
        if not train_command or not train_command[0].endswith(".py"):
            parser.error("give the training command after --, starting with the model script, e.g. "
                         "-- beta_vae.py --data-dir DIR --epochs 50 --no-evaluate")
        if any(sets_study_flag(word) for word in train_command):
            parser.error("leave --seed, --out and --resume out of the training command: the study sets them per seed")
        for seed in args.seeds:
            train_and_evaluate(args.out, seed, train_command, shlex.split(args.eval_args))
    text, summary = summarise(args.out, args.seeds)
    pathlib.Path(f"{args.out}_seeds.md").write_text(text)
    pathlib.Path(f"{args.out}_seeds.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text, end="")


if __name__ == "__main__":
    main()
