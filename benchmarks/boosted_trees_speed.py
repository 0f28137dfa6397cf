"""Time per tree of evaluation/trees.py's GradientBoostedTrees against sklearn's GradientBoostingClassifier, same data.

    python benchmarks/boosted_trees_speed.py [--stages 10] [--rows 10000]

Two 10-dim codes with a 16-valued factor, each fitted by both (one thread, alternately): `repeats`, rows drawn
with replacement from a noisy linear code of five factors (as DCI draws them: repeated rows), and `distinct`,
the same without repeats. Prints ms per tree and whether the importances and predictions are bit-identical.
"""
import argparse
import pathlib
import sys
import time
import warnings

import numpy as np
from sklearn import ensemble

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from evaluation import trees  # noqa: E402


def code(rows, repeats, seed=0):
    random_state = np.random.RandomState(seed)
    sizes = (3, 6, 10, 8, 16)
    pool = 2 * rows if repeats else rows
    factors = np.stack([random_state.randint(size, size=pool) for size in sizes], axis=1)
    codes = (factors / np.array(sizes)) @ random_state.randn(len(sizes), 10) + 0.1 * random_state.randn(pool, 10)
    picked = random_state.randint(pool, size=rows) if repeats else np.arange(rows)
    return codes[picked], factors[picked, 4]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, default=10, help="boosting stages per fit (sklearn's default: 100)")
    parser.add_argument("--rows", type=int, default=10000, help="training rows (DCI's study size: 10,000)")
    args = parser.parse_args()
    warnings.simplefilter("ignore", FutureWarning)
    for name, repeats in (("repeats", True), ("distinct", False)):
        x, y = code(args.rows, repeats)
        num_trees = args.stages * len(np.unique(y))
        start = time.perf_counter()
        ours = trees.GradientBoostedTrees(random_state=0, n_estimators=args.stages).fit(x, y)
        ours_ms = (time.perf_counter() - start) / num_trees * 1e3
        start = time.perf_counter()
        theirs = ensemble.GradientBoostingClassifier(random_state=0, n_estimators=args.stages).fit(x, y)
        theirs_ms = (time.perf_counter() - start) / num_trees * 1e3
        identical = (np.array_equal(ours.feature_importances_, theirs.feature_importances_)
                     and np.array_equal(ours.predict(x), theirs.predict(x)))
        print(f"{name}: {args.rows} rows, {num_trees} trees: ours {ours_ms:.1f} ms/tree, sklearn {theirs_ms:.1f} "
              f"ms/tree ({theirs_ms / ours_ms:.1f}x); importances and predictions bit-identical: {identical}")


if __name__ == "__main__":
    main()
