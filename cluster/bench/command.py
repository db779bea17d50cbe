"""`python -m cluster bench`: the in-process benchmarks. The default compares the model card's loop,
fixed batches and ours on one corpus (inprocess.py); `--lengths` and `--workload grpo` the RL shapes
(rl.py)."""

from __future__ import annotations

import argparse

from cluster.bench import inprocess, rl

add_arguments = inprocess.add_arguments


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.lengths:
        return rl.run_lengths(args)
    if args.workload == "grpo":
        return rl.run_grpo(args)
    return inprocess.run(args)
