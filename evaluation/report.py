"""report.md of a model's evaluation: the numbers of metrics.json as Markdown tables, then the figures.

Sections, in order: probe test accuracy against chance and the pixel ceiling (docs/evaluation.md Sec. 1), z per
dimension, the disentanglement_lib suite (Sec. 4), the specified and unspecified blocks (Sec. 5), the predictor
networks (Sec. 3), every figure (Sec. 2) and the timings.
"""
import numpy as np

from evaluation import blocks, metrics


def dimension_table(stats, limit=32):
    """z's dimensions by mean KL (largest first, at most `limit` rows) as a Markdown table."""
    order = np.argsort(stats["kl_nats"])[::-1]
    lines = ["| dim | KL (nats) | var of mean | mean posterior variance | active |", "|---|---|---|---|---|"]
    for j in order[:limit]:
        lines.append(f"| {j} | {stats['kl_nats'][j]:.3f} | {stats['mean_variance'][j]:.2e} | "
                     f"{stats['posterior_variance'][j]:.3f} | {'yes' if stats['active'][j] else ''} |")
    if len(order) > limit:
        smallest = stats["kl_nats"][order[limit - 1]]
        lines.append(f"| ... {len(order) - limit} more, all with KL <= {smallest:.3f} | | | | |")
    return "\n".join(lines)



def probe_table(results, chance, codes):
    """Probe test accuracy (%) per code, probe and target, below the chance row, as a Markdown table."""
    targets = list(chance)
    lines = ["| code | probe | " + " | ".join(targets) + " |", "|---|---|" + "---|" * len(targets),
             "| chance (test majority) | | " + " | ".join(f"{100 * chance[t]:.1f}" for t in targets) + " |"]
    for code, versions in codes.items():
        for kind in ("mlp", "linear"):
            for version in versions:
                keys = [f"{code}/{t}/{kind}/{version}" for t in targets]
                if not any(k in results for k in keys):
                    continue
                cells = [f"{100 * results[k]:.1f}" if k in results else "" for k in keys]
                lines.append(f"| {code} ({version}) | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def block_report(results, swap):
    """The report's section on the s and z blocks: suites per block, block-DCI, leakage, ground-truth swap."""
    s_block, z_block = results["blocks"]["s"], results["blocks"]["z"]
    lines = ["## Specified and unspecified blocks (docs/evaluation.md Sec. 5)", "",
             f"s = code dims {s_block['code_dims'][0]}-{s_block['code_dims'][1] - 1} against "
             f"{', '.join(s_block['factors'])}; z = dims {z_block['code_dims'][0]}-{z_block['code_dims'][1] - 1} "
             f"against {', '.join(z_block['factors'])}. n/a: the metric needs two or more factors.", "",
             "| metric | s block | z block |", "|---|---|---|"]
    for name in results["s_block"]["disentanglement"]:
        lines.append(f"| {name} | {blocks.format_score(results['s_block']['disentanglement'][name])} | "
                     f"{blocks.format_score(results['z_block']['disentanglement'][name])} |")
    share = results["block_dci"]
    lines += ["", "Block-DCI: the share of each factor's DCI importance that falls in its intended block (ideal 1).",
              "", "| factor | intended block | share |", "|---|---|---|"]
    lines += [f"| {name} | {share['intended_block'][name]} | {blocks.format_score(value)} |"
              for name, value in share["per_factor"].items()]
    lines += [f"| mean | | {blocks.format_score(share['mean'])} |", "",
              f"Leakage: a block predicting the factors it should not hold "
              f"({results['leakage_settings']['num_train']} / {results['leakage_settings']['num_test']} rows); "
              "normalised = (accuracy - chance) / (1 - chance), 0 is chance; MI ratio = max over the block's dims of "
              "MI(dim, factor) / H(factor).", "",
              "The last column is the GBT given the true factors that the block should hold instead of the code: what "
              "those factors alone predict in this data (above chance only where the data lacks combinations).", "",
              "| block -> factor | chance | LR | LR normalised | GBT | GBT normalised | MI ratio | GBT on true "
              "factors |", "|---|---|---|---|---|---|---|---|"]
    for name, entry in results["leakage"].items():
        lines.append(f"| {name} | {entry['chance']:.3f} | {entry['lr']['accuracy']:.3f} | "
                     f"{entry['lr']['normalised']:.3f} | {entry['gbt']['accuracy']:.3f} | "
                     f"{entry['gbt']['normalised']:.3f} | {blocks.format_score(entry['mi_ratio'])} | "
                     f"{entry['data_baseline']['gbt']['accuracy']:.3f} |")
    lines += ["", f"Ground-truth swap error: Dec(z_b, s_a) against the real image with a's "
              f"{', '.join(swap['specified'])} and b's other factors, over {swap['pairs_scored']} test pairs "
              f"(coverage {swap['coverage']:.2f} of {swap['pairs_drawn']} drawn pairs); the floor is the "
              "reconstruction of that real image.", "",
              "| | BCE (nats per image) | MSE per pixel | IoU (0.5) |", "|---|---|---|---|"]
    for row in ("swap", "floor"):
        lines.append(f"| {row} | {swap[row]['bce']:.2f} | {swap[row]['mse']:.3e} | {swap[row]['iou']:.3f} |")
    return lines + [""]


def write_report(out, info, results, figures):
    """report.md in `out` from the results (the dict that metrics.json holds) and the (title, file) figure entries."""
    lines = [f"# Evaluation of {info['script']} on {info['config'].get('dataset')}", "",
             f"Checkpoint: `{results['checkpoint']}`  ", f"Evaluated {results['date']} in "
             f"{results['timings']['total']:.0f} s (eval seed {results['eval_seed']})."
             + (f" The run had logged {results['trained_epochs']} epochs." if results.get("trained_epochs") else ""),
             ""]
    if results["eval_config"].get("probes_only"):
        lines += ["Probes only (`--probes-only`): no disentanglement suite, predictor networks or figures.", ""]
    lines += problems_section(results.get("figures", {}).get("failed", {}), results.get("notices", []))
    lines += ["## Probe test accuracy (%)", "",
             "Lower is better on the block that should not carry the target; `pixels` is the ceiling.", "",
             probe_table(results["probes"], results["chance"], results["representations"]), ""]
    lines += dimension_section(results["z_dimensions"], results["eval_config"]["active_kl"])
    if "disentanglement" in results:
        lines += suite_section(results["disentanglement"], results["disentanglement_details"])
    if "blocks" in results:
        lines += block_report(results["blocks"], results["ground_truth_swap"])
    if "predictors" in results:
        lines += predictor_section(results["predictors"])
    for title, file in figures:
        lines += [f"## {title}", "", f"![{title}]({file})", ""]
    lines += ["## Timings (s)", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in results["timings"].items()]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def problems_section(failed, notices):
    """Up front, so that no one reads the report without seeing them: the figures that failed (with the one-line
    reason; the numbers do not depend on them) and the notices about flags that were ignored or capped."""
    lines = []
    if failed:
        lines += ["## Figures that failed", "", "These figures were not drawn; every number below is unaffected.", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in failed.items()] + [""]
    if notices:
        lines += ["## Notices", ""] + [f"- {line}" for line in notices] + [""]
    return lines


def dimension_section(dims, active_kl):
    """The section on z per dimension: how many are active, the total KL, and the table."""
    n_active = sum(dims["active"])
    return ["## The unspecified code z, per dimension", "",
            f"{n_active} of {len(dims['active'])} dimensions are active (mean KL >= {active_kl} nats per image); "
            f"total KL {sum(dims['kl_nats']):.2f} nats per image.",
            "A dimension with KL near 0 transmits almost nothing through a sampled code, but its mean may still vary "
            "with the input; the `z_active` row probes the active dimensions' means alone.", "",
            dimension_table(dims), ""]


def suite_section(scores, details):
    """The section on the disentanglement_lib suite: what was scored, and each headline score with its time."""
    factors = ", ".join(f"{n} ({k})" for n, k in zip(details["factor_names"], details["factor_sizes"]))
    lines = ["## Disentanglement metrics (disentanglement_lib definitions)", "",
             f"Representation: {details['representation']} (encoder mean) over the factors {factors}; "
             f"{details['num_rows']} rows, smallest conditional group {details['min_group_size']}; "
             f"{details['preset']} preset, seed {details['seed']}.", "",
             "| metric | score | seconds |", "|---|---|---|"]
    seconds = {name: details["seconds"][metrics.HEADLINE[name][0]] for name in scores}
    lines += [f"| {name} | {value:.3f} | {seconds[name]:.1f} |" for name, value in scores.items()]
    return lines + [""]


def predictor_section(predictors):
    """The section on the predictor networks s -> z and z -> s."""
    lines = ["## Predictor networks (docs/evaluation.md Sec. 3)", "",
             "An MLP predicts one block's mean code from the other's. R^2 is pooled over the predicted code's "
             "dims on the test codes; the regeneration MSE compares Dec(z, s) with the decoding that uses the "
             "predicted block, against the constant predictor (the training mean). Disentangled: R^2 near 0, "
             "ratio near 1.", "", "| predictor | R^2 | regeneration MSE | constant predictor | ratio |",
             "|---|---|---|---|---|"]
    for name, entry in predictors.items():
        ratio = "" if entry["ratio"] is None else f"{entry['ratio']:.3f}"
        lines.append(f"| {name} | {entry['r2']:.3f} | {entry['regeneration_mse']:.3e} | "
                     f"{entry['baseline_mse']:.3e} | {ratio} |")
    return lines + [""]
