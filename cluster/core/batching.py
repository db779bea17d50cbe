"""Token-budget, length-sorted batches; results back in input order.

The budget counts what the model really computes for a padded batch: longest item x batch size.
Sorting by length (longest first, so an out-of-memory shows up on the first batch rather than the
last) keeps items of similar length together, so padding stays small. This is the one batching
component the in-process, Serve and Ray Data paths share (no torch here: padding is the
runner's, cluster/engine/runner.py).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


# A batch is closed early rather than padded below this share of useful tokens. Length sorting
# alone leaves gaps between neighbouring lengths when a request holds few items; this bounds the
# waste per batch, so the whole plan is at least this efficient too.
MIN_PADDING_EFFICIENCY = 0.95


def plan_batches(
    lengths: Sequence[int],
    max_batch_tokens: int,
    max_batch_size: int = 1 << 30,
    min_efficiency: float = MIN_PADDING_EFFICIENCY,
) -> list[list[int]]:
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


# ---------------------------------------------------------------- shared prefixes

# A group of items shares its common token prefix (computed once, its keys / values reused) only
# when that is worth a second kind of forward pass: the prefix is at least this long and saves at
# least this share of the group's tokens. Below that, the items run as they would without sharing.
# Measured on CPU (docs/benchmarks.md, `bench --workload grpo`): the reasoning shape (prompt ~10%
# of each item) gains nothing, so it must stay below the bar.
MIN_SHARED_PREFIX = 32
MIN_SAVED_SHARE = 0.25


@dataclass(frozen=True)
class PrefixGroup:
    prefix: int  # tokens every member starts with, computed once
    members: list[int]  # item indices

    def saved(self) -> int:
        return self.prefix * (len(self.members) - 1)


def common_prefix(a: bytes, b: bytes, width: int) -> int:
    """Items in common at the start of two packed sequences (`width` bytes per item)."""
    lo, hi = 0, min(len(a), len(b)) // width
    while lo < hi:  # the longest m with a[:m] == b[:m]: O(log n) comparisons, each at C speed
        mid = (lo + hi + 1) // 2
        if a[: mid * width] == b[: mid * width]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def shared_prefix_groups(
    seqs: Sequence[Sequence[int]],
    limits: Sequence[int],
    *,
    min_prefix: int = MIN_SHARED_PREFIX,
    min_saved_share: float = MIN_SAVED_SHARE,
) -> list[PrefixGroup]:
    """Groups of items that share a token prefix worth computing once. `limits[i]`: the longest
    prefix item i may share (its read position: the token whose output is read must be computed in
    the item's own pass). Items in no group are left out. Items sorted by content sit next to the
    items they share most with; each run of them either forms one group (its common prefix) or
    splits at its weakest link, whichever saves more tokens (a Cartesian tree over the neighbours'
    common-prefix lengths)."""
    n = len(seqs)
    if n < 2:
        return []
    order = sorted(range(n), key=lambda i: seqs[i])
    packed = [array("q", seqs[i]).tobytes() for i in order]
    width = array("q").itemsize
    links = [
        min(common_prefix(packed[k], packed[k + 1], width), limits[order[k]], limits[order[k + 1]])
        for k in range(n - 1)
    ]  # links[k]: what sorted items k and k+1 share

    sizes = [0]  # running token totals in sorted order: a run's total in O(1)
    for k in range(n):
        sizes.append(sizes[-1] + len(seqs[order[k]]))

    def worth(prefix: int, lo: int, hi: int) -> int:
        saved = prefix * (hi - lo)
        return saved if prefix >= min_prefix and saved >= min_saved_share * (sizes[hi + 1] - sizes[lo]) else 0

    found: list[tuple[int, int, int]] = []
    start = 0
    for end in range(n):  # a link shorter than min_prefix can join nothing: runs between them are independent
        if end == n - 1 or links[end] < min_prefix:
            if end > start:
                found += best_groups(links, start, end, worth)
            start = end + 1
    return [PrefixGroup(prefix, [order[k] for k in range(lo, hi + 1)]) for prefix, lo, hi in found]


def best_groups(links: list[int], first: int, last: int, worth) -> list[tuple[int, int, int]]:
    """(prefix, lo, hi) runs of sorted items [first, last] saving the most: each run is one group
    or splits at its weakest link (post-order over the Cartesian tree of `links`, iteratively)."""
    best: dict[tuple[int, int], tuple[int, list[tuple[int, int, int]]]] = {}
    stack: list[tuple[int, int, int | None]] = [(first, last, None)]
    while stack:
        lo, hi, split = stack.pop()
        if lo == hi:
            best[lo, hi] = (0, [])
            continue
        if split is None:
            split = min(range(lo, hi), key=links.__getitem__)
            stack += [(lo, hi, split), (lo, split, None), (split + 1, hi, None)]
            continue
        (left, lg), (right, rg) = best.pop((lo, split)), best.pop((split + 1, hi))
        whole = worth(links[split], lo, hi)
        best[lo, hi] = (whole, [(links[split], lo, hi)]) if whole > left + right else (left + right, lg + rg)
    return best[first, last][1]


def call_cost(seqs: Sequence[Sequence[int]]) -> int:
    """Tokens a runner computes for these sequences: each shared prefix once (the budget a replica
    gathers calls by, and the one the request core plans its calls under, are this)."""
    groups = shared_prefix_groups(seqs, [len(s) - 1 for s in seqs]) if len(seqs) > 1 else []
    return sum(len(s) for s in seqs) - sum(g.saved() for g in groups)


def plan_calls(seqs: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]:
    """Item indices per backend call, each call's `call_cost` within `max_tokens`. Items that share a
    prefix stay in one call (a group too big for one is split into calls that each carry the
    prefix), so the runner that receives them finds the group again; the rest are planned by length
    as before (`plan_batches`, no efficiency floor: a call is not a forward pass)."""
    groups = shared_prefix_groups(seqs, [len(s) - 1 for s in seqs]) if len(seqs) > 1 else []
    grouped = {i for g in groups for i in g.members}
    alone = [i for i in range(len(seqs)) if i not in grouped]
    calls = [[alone[k] for k in b] for b in plan_batches([len(seqs[i]) for i in alone], max_tokens, min_efficiency=0.0)]
    for group in groups:
        call: list[int] = []
        cost = group.prefix
        for i in sorted(group.members, key=lambda i: -len(seqs[i])):
            rest = len(seqs[i]) - group.prefix
            if call and cost + rest > max_tokens:
                calls.append(call)
                call, cost = [], group.prefix
            call.append(i)
            cost += rest
        calls.append(call)
    return calls
