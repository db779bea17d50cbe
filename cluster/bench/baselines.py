"""The in-process benchmarks' baseline, kept out of the runners: what a reward server without
planning runs. (The Serve app's baselines: cluster/bench/serve_baselines.py.)"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cluster.kinds import Op


def score_batch(runner, seqs: Sequence[Sequence[int]]) -> list[float]:
    """A reward runner's scalar rewards from one forward pass over exactly these sequences, in this
    order, with no planning (the runner's own padding and read position): the fixed-batch rows of
    `bench` and `bench-pipeline`."""
    with torch.inference_mode():
        return [score for score, _ in runner.ops()[Op.SCORE].forward(list(seqs))]
