"""Token-budget batches: budget respected, padding small, every item once, results in input order."""

from __future__ import annotations

import random

import pytest
import torch

from cluster.core.batching import padding_efficiency, plan_batches, run_batched
from cluster.engine.runner import pad_batch


def random_lengths(n, seed=0):
    rng = random.Random(seed)
    return [max(1, int(rng.lognormvariate(5.8, 0.6))) for _ in range(n)]


@pytest.mark.parametrize("budget", [512, 2048, 16384])
def test_batches_fit_the_budget_and_cover_every_item_once(budget):
    lengths = [min(n, 512) for n in random_lengths(500)]
    batches = plan_batches(lengths, budget, max_batch_size=64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert max(lengths[i] for i in b) * len(b) <= budget
        assert len(b) <= 64
    # length sorting keeps padding small
    eff = padding_efficiency([[lengths[i] for i in b] for b in batches])
    arrival = padding_efficiency([lengths[i : i + 16] for i in range(0, len(lengths), 16)])
    assert eff >= 0.95 and arrival < 0.8


def test_longest_batch_comes_first_and_an_oversized_item_runs_alone():
    lengths = [10, 300, 20, 30]
    batches = plan_batches(lengths, max_batch_tokens=100, min_efficiency=0.0)
    assert batches[0] == [1]
    assert batches[1] == [3, 2, 0]
    assert plan_batches([], 100) == []


def test_run_batched_returns_results_in_input_order():
    seqs = [[i] * n for i, n in enumerate([5, 1, 9, 3, 7, 2])]
    calls = []

    def fn(batch):
        calls.append([s[0] for s in batch])
        return [f"item{s[0]}" for s in batch]

    assert run_batched(seqs, fn, max_batch_tokens=10) == [f"item{i}" for i in range(6)]
    assert calls[0] == [2]  # longest first, out of input order
    with pytest.raises(RuntimeError, match="returned 0 results for"):
        run_batched(seqs, lambda b: [], max_batch_tokens=10)


@pytest.mark.parametrize("side", ["left", "right"])
def test_pad_batch_masks_and_positions(side):
    batch = pad_batch([[5, 6, 7], [8]], pad_id=0, side=side)
    if side == "right":
        assert batch.input_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
        assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
        assert batch.offsets == [0, 0]
    else:
        assert batch.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
        assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
        assert batch.offsets == [0, 2]
    real = batch.position_ids[batch.attention_mask.bool()].tolist()
    assert real == [0, 1, 2, 0]
    assert batch.input_ids.dtype == torch.long


def test_every_batch_keeps_padding_below_the_floor():
    lengths = [1000, 990, 500, 495, 100, 99, 98, 10]
    batches = plan_batches(lengths, max_batch_tokens=100_000, min_efficiency=0.95)
    assert batches == [[0, 1], [2, 3], [4, 5, 6], [7]]
    for b in batches:
        assert padding_efficiency([[lengths[i] for i in b]]) >= 0.95
    # with no floor, the budget alone decides: one batch
    assert plan_batches(lengths, max_batch_tokens=100_000, min_efficiency=0.0) == [list(range(8))]
