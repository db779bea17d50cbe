"""Command line: `python -m cluster COMMAND` (demo, tiny-model, score, filter, filter-solutions, calibrate,
report, bench*).

Each command lives in its own module, imported only when that command runs: `--help` and a light
command never pay for torch, Ray or the Serve layer.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from cluster.core.errors import ScoringError

# name -> (help, module, function adding its arguments, function running it, extra arguments for the former)
COMMANDS: dict[str, tuple[str, str, str, str, dict]] = {
    "demo": (
        "tiny models behind the Serve app on a local CPU cluster, over HTTP",
        "cluster.cli.commands",
        "add_demo_arguments",
        "run_demo",
        {},
    ),
    "tiny-model": (
        "write a tiny seeded reward model, critic, process reward model or pointwise judge to a directory",
        "cluster.cli.commands",
        "add_tiny_model_arguments",
        "run_tiny_model",
        {},
    ),
    "score": (
        "score a parquet/JSONL corpus with Ray Data (resumable), print the summary",
        "cluster.cli.score",
        "add_score_arguments",
        "cmd_score",
        {},
    ),
    "filter": (
        "keep the preference pairs a model agrees with (kept/dropped parquet)",
        "cluster.cli.score",
        "add_score_arguments",
        "cmd_filter",
        {"curate": True},
    ),
    "filter-solutions": (
        "keep the solutions whose weakest step a process reward model rates at least "
        "--min-step-reward (kept/dropped parquet)",
        "cluster.cli.score",
        "add_score_arguments",
        "cmd_filter_solutions",
        {"solutions": True},
    ),
    "calibrate": (
        "a reward model's score mean/std on a corpus, for shaping.normalize",
        "cluster.cli.score",
        "add_score_arguments",
        "cmd_calibrate",
        {"calibration": True},
    ),
    "report": (
        "HTML report of a scoring output, or a comparison of several (same corpus)",
        "cluster.data.report",
        "add_arguments",
        "main",
        {},
    ),
    "bench": (
        "in-process throughput: model card loop vs fixed batches vs ours",
        "cluster.bench.command",
        "add_arguments",
        "run",
        {},
    ),
    "bench-serve": (
        "HTTP load on the CPU app: cross-request batching vs none",
        "cluster.bench.serve",
        "add_arguments",
        "run",
        {},
    ),
    "bench-chat": (
        "chat completions: continuous batching vs one at a time vs one padded batch",
        "cluster.bench.chat",
        "add_arguments",
        "run",
        {},
    ),
    "bench-pipeline": (
        "Ray Data pipeline throughput: 1 and 2 actors vs fixed batches",
        "cluster.bench.pipeline",
        "add_arguments",
        "run",
        {},
    ),
    "gpu-check": (
        "the seed models' shapes on a GPU with random weights: tokens/s, MFU, parity, attention, placement",
        "cluster.bench.gpu_check",
        "add_arguments",
        "run",
        {},
    ),
}


def quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command listed; only `command`'s module imported, for its arguments. Options are
    matched whole, never by a prefix (`--no-prog` is not `--no-progress`)."""
    parser = argparse.ArgumentParser(prog="python -m cluster", description=__doc__.split("\n")[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    parser.commands = {}  # name -> its parser, for errors in that command's own usage
    for name, (help_text, module, add, run, extra) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        parser.commands[name] = sub_parser
        if name == command:
            mod = importlib.import_module(module)
            getattr(mod, add)(sub_parser, **extra)
            sub_parser.set_defaults(func=getattr(mod, run))
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """The command's arguments. An option the command does not take is refused in the command's
    own usage (argparse's top-level parser would print its own, which lists no option of it)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    quiet_transformers()
    try:
        return args.func(args)
    except ScoringError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the command's own Ray cluster is down already (score.ray_session)
        print("interrupted (score/filter/calibrate: run the same command again to resume)", file=sys.stderr)
        return 130
