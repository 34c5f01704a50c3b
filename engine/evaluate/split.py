"""How many rows a job holds out for evaluation, and why none when it holds out none.

The plan's `eval_split` is a share; a share of a small file can round to zero or to one
row, and a loss or an exact match on one row says little. So a hold-out has at least
MIN_EVAL_ROWS rows, and never more than half the file (training needs rows too); a file
too small for both gets no hold-out, and the evaluation says so instead of guessing.
"""

from __future__ import annotations

import random

MIN_EVAL_ROWS = 2
MIN_TRAIN_ROWS = 2
# How the held-out rows are answered (engine.evaluate.heldout); here, light to import, because the
# estimate sizes the scoring phases from them too (engine.estimate.timing).
MAX_NEW_TOKENS = 256  # longest generated answer, whatever the references' length
GENERATE_BATCH = 8  # rows answered together
DEMO_GENERATE_BATCH = 24  # a demo skill's batch, so its exact match is the number it always reported


def holdout_size(n_rows: int, share: float) -> int:
    """Rows to hold out of `n_rows` for a share `share` (0 when the share is 0 or the file too small)."""
    if share <= 0 or n_rows < MIN_EVAL_ROWS + MIN_TRAIN_ROWS:
        return 0
    wanted = max(MIN_EVAL_ROWS, round(n_rows * share))
    return min(wanted, n_rows // 2, n_rows - MIN_TRAIN_ROWS)


def holdout_rows(n_rows: int, share: float, seed: int) -> list[int]:
    """The indices (sorted) of the rows held out of `n_rows`: `holdout_size` of them, drawn with `seed`."""
    order = list(range(n_rows))
    random.Random(seed).shuffle(order)
    return sorted(order[: holdout_size(n_rows, share)])


def why_none(n_rows: int, share: float) -> str:
    """The sentence a job shows when it held out nothing."""
    if share <= 0:
        return "eval_split is 0, so no rows were held out; set it to e.g. 0.1 to measure base and adapter"
    return (
        f"the data has {n_rows} usable rows, too few to hold any out (at least "
        f"{MIN_EVAL_ROWS + MIN_TRAIN_ROWS} are needed: {MIN_EVAL_ROWS} to evaluate, {MIN_TRAIN_ROWS} to train)"
    )
