"""`python -m cluster score|filter|filter-solutions|calibrate`: the pipeline's options as flags, generated from
`ScoringOptions` so the CLI, `score_corpus(...)` and `submit_scoring_job(...)` cannot drift apart."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import typing
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any, Literal

from cluster.core.config import ModelSpec
from cluster.core.errors import ScoringError
from cluster.data.pipeline import ScoringOptions

NONE_DEFAULT_TYPES = {"max_actors": int, "num_gpus": float}  # optional fields: their type when given


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_score_arguments(
    parser: argparse.ArgumentParser, curate: bool = False, calibration: bool = False, solutions: bool = False
) -> None:
    parser.add_argument(
        "input",
        help="a parquet/JSONL/JSON file, a folder of them, or a glob; local or a URI (s3://, gs://, abfs://, "
        "hdfs://, file://; credentials and endpoint from the environment, e.g. AWS_ENDPOINT_URL)",
    )
    parser.add_argument(
        "output",
        help="output folder (parts/, summary.json, errors.jsonl), local or a URI; rerun to resume",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a model directory or hub id (kind read from its config: a reward model or critic); "
        "with --via-serve, the served model's name; or a JSON object / .json file of "
        "ModelSpec fields (a process reward model or pointwise judge needs one: kind 'prm' "
        "with its step_tag, or kind 'pointwise')",
    )
    parser.add_argument("--overwrite", action="store_true", help="discard an existing output folder first")
    parser.add_argument(
        "--address",
        help="Ray cluster to join: HOST:PORT, ray://..., or 'auto' (the one `ray start` "
        "recorded on this machine); default: RAY_ADDRESS, else a fresh local cluster of this "
        "command's own, shut down when it ends",
    )
    if calibration:
        parser.add_argument("--out", default="calibration.json", help="where to write mean/std (JSON)")
    if curate:
        parser.add_argument(
            "--min-margin",
            type=float,
            default=0.0,
            help="keep a pair only if chosen beats rejected by at least this much",
        )
    if solutions:
        parser.add_argument(
            "--min-step-reward",
            type=float,
            default=0.5,
            help="keep a solution only if its weakest step's reward is at least this (default: 0.5)",
        )
    for name, field in ScoringOptions.model_fields.items():
        default = field.default
        help_text = field.description or ""
        if isinstance(default, bool):
            if default:
                parser.add_argument(
                    "--no-" + name.replace("_", "-"),
                    dest=name,
                    action="store_false",
                    help=help_text or f"turn off {name}",
                )
            else:
                parser.add_argument(_flag(name), dest=name, action="store_true", help=help_text)
            continue
        kind = NONE_DEFAULT_TYPES.get(name) or {int: int, float: float}.get(type(default), str)
        choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is Literal else None
        parser.add_argument(
            _flag(name),
            dest=name,
            type=kind,
            default=default,
            choices=choices,
            help=f"{help_text} (default: {default})".strip(),
        )


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


def score_command(
    input_path: str, output_path: str, model: ModelSpec | Mapping[str, Any] | str, **options: Any
) -> list[str]:
    """The argv of `python -m cluster score` for these arguments (what a Ray Job runs)."""
    opts = ScoringOptions.parse({k: v for k, v in options.items() if k not in ("overwrite", "address")})
    if isinstance(model, ModelSpec):
        model_arg = json.dumps(
            model.model_dump(mode="json", exclude_defaults=True)
            | {"name": model.name, "path": model.path, "kind": model.kind}
        )
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


def ray_address(address: str | None, environ: Mapping[str, str] | None = None) -> str:
    """What `ray.init` gets: --address as given ("auto": the cluster `ray start` recorded on this
    machine; HOST:PORT or ray://...: that one); without it RAY_ADDRESS (a Ray Job's driver has it);
    else "local", a fresh cluster of this command's own, never one a previous `ray start` left
    recorded in /tmp/ray/ray_current_cluster (which plain `ray.init()` would join)."""
    environ = os.environ if environ is None else environ
    return address or environ.get("RAY_ADDRESS") or "local"


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Connect for one command and disconnect after it, however it ends. A local cluster it starts
    goes down with it: on SIGTERM/SIGHUP (raised as SystemExit, so `ray.shutdown()` runs) and on
    Ctrl-C (KeyboardInterrupt) alike, and after a SIGKILL through the watchdog (cluster/cli/reaper.py).
    Already connected (a notebook, the tests): nothing is started, changed or shut down."""
    import ray

    if ray.is_initialized():
        yield
        return
    target = ray_address(address)
    watchdog = None
    if target == "local":
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster
        watchdog = _start_watchdog()
    restore = _exit_on_signals()
    try:
        ray.init(address=target, log_to_driver=False, logging_level="ERROR")
        _exit_on_signals()  # again: connecting installs Ray's own SIGTERM handler, which aborts
        yield
    finally:
        restore()
        if ray.is_initialized():
            ray.shutdown()
        if watchdog is not None:
            watchdog.stdin.close()  # EOF: it sweeps anything left and exits


def _start_watchdog() -> subprocess.Popen | None:
    """Start the watchdog (cluster/cli/reaper.py) and mark this process's environment, inherited
    by every Ray process started from here on, with its run id."""
    from cluster.cli import reaper

    if not reaper.supported():
        return None
    mark = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != reaper.MARK_VARIABLE}
    watchdog = subprocess.Popen(
        [sys.executable, reaper.__file__, mark, str(os.getpid())],
        stdin=subprocess.PIPE,
        env=env,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.environ[reaper.MARK_VARIABLE] = mark
    return watchdog


def _exit_on_signals() -> Callable[[], None]:
    """SIGTERM and SIGHUP raise SystemExit(128 + signal) in the main thread (a second one: the
    default action); returns what puts the previous handlers back. Off the main thread: nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    signals = (signal.SIGTERM, signal.SIGHUP)

    def handler(signum, frame):
        for sig in signals:
            signal.signal(sig, signal.SIG_DFL)
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in signals}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)

    return restore


@contextlib.contextmanager
def quiet_stderr(verbose: bool) -> Iterator[IO[str]]:
    """Unless verbose: while the command runs, everything written to this process's stderr goes
    to a log file: Ray's C++ core worker's lines, the stderr of the processes Ray starts, and every
    Python logger or warning (Ray's loggers hold sys.stderr, which still writes to descriptor 2).
    Yields the terminal's stream, for the command's own progress display and messages. The log is
    removed after a clean run or a user error, and named otherwise. Descriptor 2 is swapped, not
    a Python stream, because Ray's C++ side and its processes write to the descriptor."""
    from cluster.data import progress

    if verbose:
        yield sys.stderr
        return
    fd, log_path = tempfile.mkstemp(prefix="scoring-ray-", suffix=".log")
    sys.stderr.flush()
    saved = os.dup(2)
    terminal = os.fdopen(
        os.dup(saved),
        "w",
        buffering=1,
        errors="backslashreplace",
        encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
    )
    os.dup2(fd, 2)
    os.close(fd)
    progress.DISPLAY = terminal
    clean = False
    try:
        yield terminal
        clean = True
    except ScoringError:  # the user's mistake, named in its message: Ray's log adds nothing
        clean = True
        raise
    finally:
        progress.DISPLAY = None
        sys.stderr.flush()
        terminal.flush()
        os.dup2(saved, 2)
        os.close(saved)
        terminal.close()
        if clean:
            with contextlib.suppress(OSError):
                os.unlink(log_path)
        else:
            print(f"(Ray's own messages for this run: {log_path})", file=sys.stderr)


def checked_model(args: argparse.Namespace) -> ModelSpec | str:
    """--model resolved and the input found before Ray starts, so that a wrong path, a hub id with
    no network or a missing input file is said in a second, not after a cluster has started.
    With --via-serve the model is the served one's name, looked up once connected."""
    from cluster.data.pipeline import expand_inputs, resolve_model

    expand_inputs(args.input)
    model = model_from_arg(args.model)
    return model if args.via_serve is not None else resolve_model(model)


def _run_scoring(args: argparse.Namespace, run: Callable[[], Any]) -> Any:
    """`run()` inside the command's Ray session, Ray's noise in a log file unless --verbose. An
    interrupt (Ctrl-C, SIGTERM, SIGHUP) ends the command with one message: what is safely written
    and that the same command resumes (raised as Interrupted, exit 130 / 128 + signal)."""
    from cluster.data.pipeline import Interrupted

    with quiet_stderr(args.verbose) as terminal:
        try:
            with ray_session(args.address):
                return run()
        except Interrupted as stop:  # Ray is down by now: no actor can commit another piece
            raise SystemExit(_say_interrupted(terminal, stop.message(), stop.code)) from None
        except KeyboardInterrupt:
            raise SystemExit(_say_interrupted(terminal, "run the same command again to resume", 130)) from None


def _say_interrupted(terminal: IO[str], message: str, code: int) -> int:
    print(f"interrupted: {message}", file=terminal)
    return code


def cmd_score(args: argparse.Namespace) -> int:
    from cluster.data.metrics import format_summary
    from cluster.data.pipeline import score_corpus

    model = checked_model(args)
    summary = _run_scoring(
        args, lambda: score_corpus(args.input, args.output, model, overwrite=args.overwrite, **options_from_args(args))
    )
    print(format_summary(summary))
    _print_outputs(summary)
    return 0


def cmd_filter(args: argparse.Namespace) -> int:
    from cluster.data.metrics import format_summary
    from cluster.data.pipeline import filter_pairs

    model = checked_model(args)
    summary = _run_scoring(
        args,
        lambda: filter_pairs(
            args.input,
            args.output,
            model,
            min_margin=args.min_margin,
            overwrite=args.overwrite,
            **options_from_args(args),
        ),
    )
    print(format_summary(summary))
    print(f"kept {summary['kept']} pairs -> {summary['kept_file']}")
    print(f"dropped {summary['dropped']} pairs -> {summary['dropped_file']}")
    _print_outputs(summary)
    return 0


def cmd_filter_solutions(args: argparse.Namespace) -> int:
    from cluster.data.metrics import format_summary
    from cluster.data.pipeline import filter_solutions

    model = checked_model(args)
    summary = _run_scoring(
        args,
        lambda: filter_solutions(
            args.input,
            args.output,
            model,
            min_step_reward=args.min_step_reward,
            overwrite=args.overwrite,
            **options_from_args(args),
        ),
    )
    print(format_summary(summary))
    print(f"kept {summary['kept']} solutions (weakest step >= {args.min_step_reward:g}) -> {summary['kept_file']}")
    print(f"dropped {summary['dropped']} solutions -> {summary['dropped_file']}")
    _print_outputs(summary)
    return 0


def _print_outputs(summary: dict[str, Any]) -> None:
    print(f"scores: {summary['output']} (load with cluster.read_scores)")
    for name, moved in (summary.get("moved_columns") or {}).items():
        print(f"input column {name!r} is kept as {moved!r} (the results use that name)")
    if summary.get("errors"):
        print(f"{summary['errors']} row(s) not scored, reasons in {summary['errors_file']}", file=sys.stderr)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from cluster.data.pipeline import calibrate

    model = checked_model(args)
    result = _run_scoring(
        args, lambda: calibrate(args.input, args.output, model, overwrite=args.overwrite, **options_from_args(args))
    )
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    norm = result["shaping"]["normalize"]
    print(
        f"{result['model']}: mean {norm['mean']:.6g}, std {norm['std']:.6g} over {result['count']} scores -> {args.out}"
    )
    print("in ray_config.yaml, under this model (add clip: [low, high] to bound the normalized reward):")
    print(f"  shaping:\n    normalize: {{mean: {norm['mean']!r}, std: {norm['std']!r}}}")
    return 0
