"""How long the batches behind a run's peak memory really are, from the data's token lengths.

The collator pads each batch to its longest row (cut at seq_len), not to seq_len, so
a step's activations scale with the longest of its rows, and a run's peak with the
longest row among all the batches the peak is taken over: the first two optimizer
steps on a CPU (engine.train.peak tracks those), the whole run on a GPU (the CUDA
allocator's maximum). `expected_longest` is that length's expectation for `rows` rows
drawn without replacement from a shuffled epoch: for a length v,

    P(longest <= v) = C(k_v, rows) / C(n, rows),   k_v = rows of length <= v,

and E[longest] = sum over the distinct lengths v of v * (P(longest <= v) - P(longest < v)).
With one batch's rows this is the expected longest row of a batch; with every row of
the data, its longest row.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from engine.train.peak import CPU_TRACKED_STEPS


def _all_at_most(k: int, n: int, b: int) -> float:
    """P(every one of b rows drawn without replacement from n lies among k given rows)."""
    if k >= n:
        return 1.0
    if b > k:
        return 0.0
    # C(k, b) / C(n, b) through log-gamma: O(1) per length, so thousands of rows cost nothing
    return math.exp(math.lgamma(k + 1) - math.lgamma(k - b + 1) - math.lgamma(n + 1) + math.lgamma(n - b + 1))


def expected_longest(lengths: Sequence[int], rows: int, seq_len: int) -> float:
    """Expected token length of the longest of `rows` rows drawn from the data, each cut at seq_len."""
    if not lengths:
        raise ValueError("expected_longest needs at least one length")
    counts = Counter(min(int(n), seq_len) for n in lengths)
    n = sum(counts.values())
    b = max(1, min(rows, n))  # rows beyond the data's own are repeats: they add no longer row
    expected, below, p_below = 0.0, 0, 0.0
    for v in sorted(counts):
        below += counts[v]
        p_at_most = _all_at_most(below, n, b)
        expected += v * (p_at_most - p_below)
        p_below = p_at_most
    return expected


def peak_rows(plan, on_gpu: bool) -> int:
    """How many rows the measured peak spans: the first tracked steps on a CPU, the run on a GPU."""
    per_step = plan.batch_size * plan.grad_accum
    if not on_gpu:
        steps = CPU_TRACKED_STEPS if not plan.max_steps else min(CPU_TRACKED_STEPS, plan.max_steps)
        return per_step * steps
    if plan.max_steps:
        return per_step * plan.max_steps
    return 2**62  # epochs: every row of the data is drawn


def padded_length(lengths: Sequence[int] | None, rows: int, seq_len: int) -> int:
    """The length the longest batch among `rows` rows is padded to, expected; seq_len without data."""
    if not lengths:
        return seq_len
    return max(1, min(seq_len, round(expected_longest(lengths, rows, seq_len))))
