"""Token-budget, length-sorted batches; results back in input order.

The budget counts what the model really computes for a padded batch: longest item x batch size.
Sorting by length (longest first, so an out-of-memory shows up on the first batch rather than the
last) keeps items of similar length together, so padding stays small. This is the one batching
component the in-process, Serve and Ray Data paths share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

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
) -> list[T]:
    """Run `fn` on token-budget batches of `seqs` and return its per-item results in input order."""
    results: list = [None] * len(seqs)
    for batch in plan_batches([cost(s) for s in seqs], max_batch_tokens, max_batch_size):
        outputs = fn([seqs[i] for i in batch])
        if len(outputs) != len(batch):
            raise RuntimeError(f"batch function returned {len(outputs)} results for {len(batch)} items")
        for i, out in zip(batch, outputs):
            results[i] = out
    return results


@dataclass
class PaddedBatch:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T], 1 for real tokens
    position_ids: torch.Tensor  # [B, T], 0.. for real tokens whatever the padding side
    offsets: list[int]  # where each row's first real token sits (0 with right padding)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)

    def to(self, device) -> PaddedBatch:
        return PaddedBatch(self.input_ids.to(device), self.attention_mask.to(device),
                           self.position_ids.to(device), self.offsets)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> PaddedBatch:
    """Pad to the longest sequence. Position ids count real tokens only, so a row's positions are
    the same as when it runs alone, on either padding side."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    pos = torch.zeros((len(seqs), width), dtype=torch.long)
    offsets = []
    for row, s in enumerate(seqs):
        start = width - len(s) if side == "left" else 0
        ids[row, start:start + len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[row, start:start + len(s)] = 1
        pos[row, start:start + len(s)] = torch.arange(len(s))
        offsets.append(start)
    return PaddedBatch(ids, mask, pos, offsets)


def padding_efficiency(batches_lengths: Sequence[Sequence[int]]) -> float:
    """Useful tokens / computed tokens over a list of batches (each a list of item lengths)."""
    useful = sum(sum(b) for b in batches_lengths)
    computed = sum(max(b) * len(b) for b in batches_lengths if b)
    return useful / computed if computed else 1.0
