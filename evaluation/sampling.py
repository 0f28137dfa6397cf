"""Drawing dataset rows for the metric suite, also on data that is a subset of the factor product.

A metric sees the data through two objects. A `FactorSampler` draws rows: uniformly, or rows that share one
factor's value. A representation is a callable `represent(rows) -> codes` that maps integer row indices into the
dataset to a (len(rows), D) array (the encoder mean for a model; `codes_representation` looks rows up in codes
computed beforehand). Codes are (points, dims) and factors are (points, factors), the transpose of
disentanglement_lib's layout.

Subsets of the factor product (docs/evaluation.md Sec. 4, "Subsets of the factorial product"): points are always
whole dataset rows drawn uniformly, never factors drawn independently, and "fix factor k" draws rows from
`rows[k][v]`. On a full product this gives the library's distribution; on a subset the non-fixed factors follow
the data's conditional distribution given factor k = v.
"""
import numpy as np

# Rows per call of `represent`: large enough to keep an encoder busy, small enough that the images of one call
# (16,384 dSprites images are 268 MB as float32) and the interventional metrics' codes stay in memory.
ENCODE_CHUNK_ROWS = 16384


class FactorSampler:
    """Draws dataset rows uniformly, or rows that share one factor's value, by index lists.

    `rows[k][v]` lists (in increasing order) the rows whose factor k equals v; it is empty for values that do
    not occur. Mixed-radix index arithmetic would be wrong on a subset of the factor product, so the sampler
    never builds factor vectors: every draw is an existing row, and a draw "with factor k fixed to v" is a
    uniform draw (with replacement) from `rows[k][v]`.
    """

    def __init__(self, factors):
        factors = np.asarray(factors)
        if factors.ndim != 2 or len(factors) == 0:
            raise ValueError(f"factors must be a non-empty (N, K) array, got shape {factors.shape}")
        if not np.issubdtype(factors.dtype, np.integer):
            if not np.all(np.isfinite(factors)) or not np.all(factors == np.round(factors)):
                raise ValueError("factors must be integer class indices; map continuous factors to their "
                                 "value indices first (e.g. with np.unique(..., return_inverse=True))")
        factors = factors.astype(np.int64)
        if factors.min() < 0:
            raise ValueError(f"factor values must be >= 0, got minimum {factors.min()}")
        constant = [k for k in range(factors.shape[1]) if np.all(factors[:, k] == factors[0, k])]
        if constant:
            raise ValueError(f"factors {constant} take a single value in the data; drop them (their entropy is 0, "
                             "so MIG divides by zero, and fixing them fixes nothing)")
        self.factors = factors
        self.num_factors = factors.shape[1]
        # Per factor: the rows sorted by value (stable, so each group stays in increasing row order), and where
        # each value's group starts and how long it is. `rows[k][v]` are views into these arrays, and the
        # vectorised draws below index them directly.
        width = int(factors.max()) + 1
        self._order = np.stack([np.argsort(column, kind="stable") for column in factors.T])
        self._count = np.stack([np.bincount(column, minlength=width) for column in factors.T])
        self._start = np.concatenate([np.zeros((self.num_factors, 1), np.int64),
                                      np.cumsum(self._count, axis=1)[:, :-1]], axis=1)
        self.rows = [[self._order[k, self._start[k, v]:self._start[k, v] + self._count[k, v]]
                      for v in range(int(factors[:, k].max()) + 1)] for k in range(self.num_factors)]

    def __len__(self):
        return len(self.factors)

    def min_group_size(self):
        """Size of the smallest non-empty `rows[k][v]`: how thin the conditional draws get (record it)."""
        return int(self._count[self._count > 0].min())

    def sample(self, size, random_state):
        """Rows drawn uniformly (with replacement) from the dataset; `size` may be an int or a shape."""
        return random_state.randint(len(self.factors), size=size)

    def draw_matching(self, rows, factor, random_state):
        """For each row r, a row drawn uniformly from `rows[factor][factors[r, factor]]` (r itself included).

        `factor` is an int or an integer array broadcast against `rows`. This is the BetaVAE partner of r and,
        for a batch of copies of one anchor row, a FactorVAE batch with the factor fixed.
        """
        rows = np.asarray(rows)
        factor = np.broadcast_to(np.asarray(factor), rows.shape)
        value = self.factors[rows, factor]
        position = self._start[factor, value] + random_state.randint(0, self._count[factor, value])
        return self._order[factor, position]

    def sample_fixed(self, factor, size, random_state):
        """`size` rows sharing the value of `factor` taken from one uniformly drawn row (a FactorVAE batch)."""
        anchor = self.sample(1, random_state)
        return self.draw_matching(np.repeat(anchor, size), factor, random_state)


def codes_representation(codes):
    """A `represent(rows)` callable that looks rows up in a precomputed (N, D) code array (dataset order)."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be an (N, D) array in dataset row order, got shape {codes.shape}")

    def represent(rows):
        return codes[rows]
    return represent


def represent_rows(represent, rows):
    """Codes of `rows` (any shape) as float64, shape rows.shape + (D,), calling `represent` in chunks."""
    rows = np.asarray(rows)
    flat = rows.reshape(-1)
    parts = []
    for start in range(0, len(flat), ENCODE_CHUNK_ROWS):
        chunk = flat[start:start + ENCODE_CHUNK_ROWS]
        codes = np.asarray(represent(chunk), dtype=np.float64)
        if codes.ndim != 2 or len(codes) != len(chunk):
            raise ValueError(f"represent(rows) must return a (len(rows), D) array; got shape {codes.shape} "
                             f"for {len(chunk)} rows")
        parts.append(codes)
    codes = np.concatenate(parts)
    return codes.reshape(rows.shape + codes.shape[1:])


def random_state(seed):
    """One RandomState per metric call, as disentanglement_lib's evaluate does (an existing one is used as is)."""
    return seed if isinstance(seed, np.random.RandomState) else np.random.RandomState(seed)


def sample_codes_and_factors(represent, sampler, num_points, random_state):
    """i.i.d. (codes, factors) of `num_points` uniformly drawn rows: the input of the observational metrics.

    The library draws in batches of 16 (factors, then images); drawing all rows at once only changes which
    points a given seed picks, not their distribution.
    """
    rows = sampler.sample(num_points, random_state)
    return represent_rows(represent, rows), sampler.factors[rows]
