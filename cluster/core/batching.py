"""Token-budget, length-sorted batches; results back in input order.

The budget counts what the model really computes for a padded batch: longest item x batch size.
Sorting by length (longest first, so an out-of-memory shows up on the first batch rather than the
last) keeps items of similar length together, so padding stays small. This is the one batching
component the in-process, Serve and Ray Data paths share (no torch here: padding is the
runner's, cluster/core/runner.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


# A batch is closed early rather than padded below this share of useful tokens. Length sorting
# alone leaves gaps between neighbouring lengths when a request holds few items; this bounds the
# waste per batch, so the whole plan is at least this efficient too.
MIN_PADDING_EFFICIENCY = 0.95


def plan_batches(lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int = 1 << 30,
                 min_efficiency: float = MIN_PADDING_EFFICIENCY) -> list[list[int]]:
    """Group item indices into batches whose padded size (max length x count) fits the budget and
    whose useful/computed tokens stay >= min_efficiency.

    An item longer than the budget gets a batch of its own (callers cap item length at max_length,
    and ModelSpec guarantees max_length <= max_batch_tokens).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep input order
    batches: list[list[int]] = []
    current: list[int] = []
    longest = useful = 0  # longest is the batch's first item: the order is descending
    for i in order:
        n = len(current) + 1
        full = longest * n > max_batch_tokens or n > max_batch_size
        wasteful = useful + lengths[i] < min_efficiency * longest * n
        if current and (full or wasteful):
            batches.append(current)
            current, useful = [], 0
        if not current:
            longest = lengths[i]
        current.append(i)
        useful += lengths[i]
    if current:
        batches.append(current)
    return batches


def run_batched(
    seqs: Sequence[Sequence[int]],
    fn: Callable[[list[Sequence[int]]], list[T]],
    max_batch_tokens: int,
    max_batch_size: int = 1 << 30,
    cost: Callable[[Sequence[int]], int] = len,
    plan: list[list[int]] | None = None,
) -> list[T]:
    """Run `fn` on token-budget batches of `seqs` and return its per-item results in input order.
    `plan`: the batches to run (item indices), when the caller planned them already."""
    results: list = [None] * len(seqs)
    if plan is None:
        plan = plan_batches([cost(s) for s in seqs], max_batch_tokens, max_batch_size)
    for batch in plan:
        outputs = fn([seqs[i] for i in batch])
        if len(outputs) != len(batch):
            raise RuntimeError(f"batch function returned {len(outputs)} results for {len(batch)} items")
        for i, out in zip(batch, outputs):
            results[i] = out
    return results


def padding_efficiency(batches_lengths: Sequence[Sequence[int]]) -> float:
    """Useful tokens / computed tokens over a list of batches (each a list of item lengths)."""
    useful = sum(sum(b) for b in batches_lengths)
    computed = sum(max(b) * len(b) for b in batches_lengths if b)
    return useful / computed if computed else 1.0
