"""The evaluation of trained models and of given codes; `eval_latents.py` is its command line.

Read in this order:
    checkpoint.py  `--ckpt`: the whole evaluation of a model, step by step (its table of contents)
    probes.py      probe tasks and rows, encoding, probe training, the raw-pixel ceiling (docs/evaluation.md Sec. 1)
    figures.py     swap and interpolation grids, reconstructions, traversals and GIFs, t-SNE, plots (Sec. 2)
    blocks.py      specified/unspecified blocks: block metrics, leakage, ground-truth swap error, predictor
                   networks (Sec. 3 and 5)
    metrics.py     the disentanglement_lib metric suite (Sec. 4), on top of
    sampling.py    drawing dataset rows, also on subsets of the factor product, and
    trees.py       scikit-learn's GradientBoostingClassifier rebuilt to grow the same trees faster (DCI)
    codes.py       `--codes`: the metric suite on given codes and factors
    report.py      report.md
What the evaluation needs to know about each dataset (probe targets, the targets that s should carry, t-SNE
colourings, the labels saved with the codes) it asks data.py.

metrics.py, sampling.py, trees.py and codes.py need NumPy, SciPy and scikit-learn only (not TensorFlow).
"""
