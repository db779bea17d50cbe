"""Command line: `python -m cluster COMMAND` (demo, tiny-model, score, filter, calibrate, report, bench*)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from cluster.errors import ScoringError
from cluster.tiny import ARCHES


def quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def cmd_demo(args: argparse.Namespace) -> int:
    quiet_transformers()
    if args.in_process:
        return demo_in_process(args)
    from deployments.demo import run_demo

    return run_demo(args.models_dir, args.port, args.once)


def demo_in_process(args: argparse.Namespace) -> int:
    """Build a tiny reward model and critic, score a handful of conversations, judge one pair."""
    from cluster import ModelSpec, load_model
    from cluster.tiny import DEMO_CONVERSATIONS, DEMO_PAIR, build_demo_models

    rm_dir, critic_dir = build_demo_models(Path(args.models_dir or tempfile.mkdtemp(prefix="scoring-demo-")))
    rm = load_model(ModelSpec(name="tiny-rm", path=str(rm_dir), kind="reward"))
    critic = load_model(ModelSpec(name="tiny-critic", path=str(critic_dir), kind="critic", max_new_tokens=8))
    print("\nreward model: raw logits (higher is better), one per conversation, input order")
    for conv, res in zip(DEMO_CONVERSATIONS, rm.score_detailed(DEMO_CONVERSATIONS)):
        last_user = next(m["content"] for m in reversed(conv) if m["role"] == "user")
        print(f"  {res.score:+9.4f}  tokens={res.num_tokens:<4d} truncated={res.truncated!s:<5}  "
              f"{last_user[:36]!r} -> {conv[-1]['content'][:40]!r}")
    [cmp] = rm.compare([DEMO_PAIR])
    print(f"\npair {json.dumps(DEMO_PAIR)}")
    print(f"  reward model : r_a={cmp.reward_a:+.4f} r_b={cmp.reward_b:+.4f} "
          f"P(A better)=sigmoid(r_a-r_b)={cmp.prob_a:.4f} -> {cmp.winner}")
    [fast] = critic.judge([DEMO_PAIR], mode="logits")
    [fair] = critic.judge([DEMO_PAIR], mode="logits", debias=True)
    [gen] = critic.judge([DEMO_PAIR], mode="generate")
    print(f"  critic logits: P(A better)={fast.prob_a:.4f} -> {fast.winner}")
    print(f"  critic debias: P(A better)={fair.prob_a:.4f} -> {fair.winner} (both orders averaged)")
    print(f"  critic generate: {gen.text!r} -> {gen.winner}")
    print("\n(tiny random models: the numbers show the plumbing, not judgement)")
    return 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from cluster.tiny import build_tiny_model

    quiet_transformers()
    out = build_tiny_model(
        args.out, kind=args.kind, arch=args.arch, template_bos=args.template_bos,
        tokenizer_adds_bos=args.tokenizer_bos, pad=args.pad, seed=args.seed,
    )
    print(out)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from cluster import bench

    quiet_transformers()
    return bench.run(args)


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from deployments import bench_serve

    quiet_transformers()
    return bench_serve.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="tiny models behind the Serve app on a local CPU cluster, over HTTP")
    demo.add_argument("--models-dir", help="where to build (or reuse) the tiny models; default: a temp dir")
    demo.add_argument("--once", action="store_true", help="exit after one round of requests")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--in-process", action="store_true",
                      help="no Ray: load the models in this process, score and judge directly")
    demo.set_defaults(func=cmd_demo)

    tiny = sub.add_parser("tiny-model", help="write a tiny seeded reward model or critic to a directory")
    tiny.add_argument("--kind", choices=["reward", "critic"], default="reward")
    tiny.add_argument("--arch", choices=list(ARCHES), default="llama", help="model family")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--pad", choices=["separate", "eos", "none"], default="separate",
                      help="pad token: its own, equal to EOS, or absent")
    tiny.add_argument("--template-bos", action=argparse.BooleanOptionalAction, default=None,
                      help="the chat template writes BOS (default: as the family's real template)")
    tiny.add_argument("--tokenizer-bos", action=argparse.BooleanOptionalAction, default=None,
                      help="the tokenizer adds BOS (default: as the family's real tokenizer)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_tiny_model)

    from cluster import bench

    bench_parser = sub.add_parser("bench", help="in-process throughput: model card loop vs fixed batches vs ours")
    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(func=cmd_bench)
    from deployments import bench_serve

    serve_bench = sub.add_parser("bench-serve", help="HTTP load on the CPU app: cross-request batching vs none")
    bench_serve.add_arguments(serve_bench)
    serve_bench.set_defaults(func=cmd_bench_serve)
    from cluster import bench_pipeline

    pipe_bench = sub.add_parser("bench-pipeline", help="Ray Data pipeline throughput: 1 and 2 actors vs fixed batches")
    bench_pipeline.add_arguments(pipe_bench)
    pipe_bench.set_defaults(func=with_quiet(bench_pipeline.run))
    from cluster import score_cli

    score = sub.add_parser("score", help="score a parquet/JSONL corpus with Ray Data (resumable), print the summary")
    score_cli.add_score_arguments(score)
    score.set_defaults(func=with_quiet(score_cli.cmd_score))
    curate = sub.add_parser("filter", help="keep the preference pairs a model agrees with (kept/dropped parquet)")
    score_cli.add_score_arguments(curate, curate=True)
    curate.set_defaults(func=with_quiet(score_cli.cmd_filter))
    calib = sub.add_parser("calibrate", help="a reward model's score mean/std on a corpus, for shaping.normalize")
    score_cli.add_score_arguments(calib, calibration=True)
    calib.set_defaults(func=with_quiet(score_cli.cmd_calibrate))
    from cluster import report

    report_parser = sub.add_parser("report", help="HTML report (plots + summary) of a scoring output")
    report.add_arguments(report_parser)
    report_parser.set_defaults(func=with_quiet(report.main))
    return parser


def with_quiet(fn):
    def run(args: argparse.Namespace) -> int:
        quiet_transformers()
        return fn(args)
    return run


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ScoringError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
