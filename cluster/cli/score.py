"""`python -m cluster score|filter`: the pipeline's options as flags, generated from
`ScoringOptions` so the CLI, `score_corpus(...)` and `submit_scoring_job(...)` cannot drift apart."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import typing
from collections.abc import Mapping
from typing import Any, Literal

from cluster.core.config import ModelSpec
from cluster.data.pipeline import ScoringOptions

NONE_DEFAULT_TYPES = {"max_actors": int, "num_gpus": float}  # optional fields: their type when given


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_score_arguments(parser: argparse.ArgumentParser, curate: bool = False, calibration: bool = False) -> None:
    parser.add_argument("input", help="a parquet/JSONL/JSON file, a folder of them, or a glob")
    parser.add_argument("output", help="output folder (parts/, summary.json, errors.jsonl); rerun to resume")
    parser.add_argument("--model", required=True,
                        help="a model directory or hub id (kind read from its config); with --via-serve, "
                             "the served model's name; or a JSON object / .json file of ModelSpec fields")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing output folder first")
    parser.add_argument("--address", help="Ray cluster to connect to (default: RAY_ADDRESS, else a local one)")
    if calibration:
        parser.add_argument("--out", default="calibration.json", help="where to write mean/std (JSON)")
    if curate:
        parser.add_argument("--min-margin", type=float, default=0.0,
                            help="keep a pair only if chosen beats rejected by at least this much")
    for name, field in ScoringOptions.model_fields.items():
        default = field.default
        help_text = field.description or ""
        if isinstance(default, bool):
            if default:
                parser.add_argument("--no-" + name.replace("_", "-"), dest=name, action="store_false",
                                    help=help_text or f"turn off {name}")
            else:
                parser.add_argument(_flag(name), dest=name, action="store_true", help=help_text)
            continue
        kind = NONE_DEFAULT_TYPES.get(name) or {int: int, float: float}.get(type(default), str)
        choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is Literal else None
        parser.add_argument(_flag(name), dest=name, type=kind, default=default, choices=choices,
                            help=f"{help_text} (default: {default})".strip())


def model_from_arg(value: str) -> ModelSpec | str:
    """A path/name, a JSON object of ModelSpec fields, or a .json file holding one."""
    text = value.strip()
    if text.startswith("{"):
        return ModelSpec.parse(json.loads(text))
    if text.endswith(".json") and os.path.isfile(text):
        with open(text) as f:
            return ModelSpec.parse(json.load(f))
    return value


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in ScoringOptions.model_fields}


def score_command(input_path: str, output_path: str, model: ModelSpec | Mapping[str, Any] | str,
                  **options: Any) -> list[str]:
    """The argv of `python -m cluster score` for these arguments (what a Ray Job runs)."""
    opts = ScoringOptions.parse({k: v for k, v in options.items() if k not in ("overwrite", "address")})
    if isinstance(model, ModelSpec):
        model_arg = json.dumps(model.model_dump(mode="json", exclude_defaults=True) | {"name": model.name,
                                                                                       "path": model.path,
                                                                                       "kind": model.kind})
    elif isinstance(model, Mapping):
        model_arg = json.dumps(dict(model))
    else:
        model_arg = str(model)
    argv = ["python", "-m", "cluster", "score", str(input_path), str(output_path), "--model", model_arg]
    if options.get("overwrite"):
        argv.append("--overwrite")
    defaults = ScoringOptions()
    for name in ScoringOptions.model_fields:
        value, default = getattr(opts, name), getattr(defaults, name)
        if value == default:
            continue
        if isinstance(default, bool):
            argv.append(_flag(name) if value else "--no-" + name.replace("_", "-"))
        else:
            argv += [_flag(name), str(value)]
    return argv


def entrypoint(argv: list[str]) -> str:
    return shlex.join(argv)


def _connect(address: str | None) -> None:
    import ray

    if address in (None, "local") and not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")


def cmd_score(args: argparse.Namespace) -> int:
    from cluster.data.metrics import format_summary
    from cluster.data.pipeline import score_corpus

    _connect(args.address)
    summary = score_corpus(args.input, args.output, model_from_arg(args.model), overwrite=args.overwrite,
                           **options_from_args(args))
    print(format_summary(summary))
    _print_outputs(summary)
    return 0


def cmd_filter(args: argparse.Namespace) -> int:
    from cluster.data.metrics import format_summary
    from cluster.data.pipeline import filter_pairs

    _connect(args.address)
    summary = filter_pairs(args.input, args.output, model_from_arg(args.model), min_margin=args.min_margin,
                           overwrite=args.overwrite, **options_from_args(args))
    print(format_summary(summary))
    print(f"kept {summary['kept']} pairs -> {summary['kept_file']}")
    print(f"dropped {summary['dropped']} pairs -> {summary['dropped_file']}")
    _print_outputs(summary)
    return 0


def _print_outputs(summary: dict[str, Any]) -> None:
    print(f"scores: {summary['output']} (load with cluster.read_scores)")
    if summary.get("errors"):
        print(f"{summary['errors']} row(s) not scored, reasons in {summary['errors_file']}", file=sys.stderr)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from cluster.data.pipeline import calibrate

    _connect(args.address)
    result = calibrate(args.input, args.output, model_from_arg(args.model), overwrite=args.overwrite,
                       **options_from_args(args))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    norm = result["shaping"]["normalize"]
    print(f"{result['model']}: mean {norm['mean']:.6g}, std {norm['std']:.6g} over {result['count']} scores "
          f"-> {args.out}")
    print("in ray_config.yaml, under this model (add clip: [low, high] to bound the normalized reward):")
    print(f"  shaping:\n    normalize: {{mean: {norm['mean']!r}, std: {norm['std']!r}}}")
    return 0
