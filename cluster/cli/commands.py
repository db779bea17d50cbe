"""The light CLI commands (their heavy imports happen when they run): demo and tiny-model."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def add_demo_arguments(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("--models-dir", help="where to build (or reuse) the tiny models; default: a temp dir")
    demo.add_argument("--once", action="store_true", help="exit after one round of requests")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument(
        "--in-process", action="store_true", help="no Ray: load the models in this process, score and judge directly"
    )
    demo.add_argument(
        "--verbose", action="store_true", help="Ray's and Serve's own progress lines and the replicas' logs too"
    )


def add_tiny_model_arguments(tiny: argparse.ArgumentParser) -> None:
    from cluster.kinds import NAMES
    from cluster.tiny import ARCHES

    tiny.add_argument(
        "--kind",
        choices=NAMES,
        default="reward",
        help="prm: a process reward model in a real PRM's format (see --style); pointwise: a judge "
        "taught to answer '... [[N]]'",
    )
    tiny.add_argument(
        "--style",
        choices=["qwen", "shepherd"],
        default=None,
        help="only for --kind prm: qwen (Qwen2.5-Math-PRM: <extra_0>, remote-code head; the default) "
        "or shepherd (math-shepherd: 'ки' tag, +/- next-token logits)",
    )
    tiny.add_argument("--arch", choices=list(ARCHES), default="llama", help="model family")
    tiny.add_argument("--out", required=True)
    tiny.add_argument(
        "--pad",
        choices=["separate", "eos", "none"],
        default="separate",
        help="pad token: its own, equal to EOS, or absent",
    )
    tiny.add_argument(
        "--template-bos",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the chat template writes BOS (default: as the family's real template)",
    )
    tiny.add_argument(
        "--tokenizer-bos",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the tokenizer adds BOS (default: as the family's real tokenizer)",
    )
    tiny.add_argument("--seed", type=int, default=0)


def run_demo(args: argparse.Namespace) -> int:
    if args.in_process:
        return demo_in_process(args)
    from deployments import demo

    return demo.run_demo(args.models_dir, args.port, args.once, verbose=args.verbose)


def demo_in_process(args: argparse.Namespace) -> int:
    """Build a tiny reward model and critic, score a handful of conversations, judge one pair."""
    from cluster.core.config import ModelSpec
    from cluster.engine.loading import load_model
    from cluster.tiny import DEMO_CONVERSATIONS, DEMO_PAIR, build_demo_models

    rm_dir, critic_dir = build_demo_models(Path(args.models_dir or tempfile.mkdtemp(prefix="scoring-demo-")))
    rm = load_model(ModelSpec(name="tiny-rm", path=str(rm_dir), kind="reward"))
    critic = load_model(ModelSpec(name="tiny-critic", path=str(critic_dir), kind="critic", max_new_tokens=8))
    print("\nreward model: raw logits (higher is better), one per conversation, input order")
    for conv, res in zip(DEMO_CONVERSATIONS, rm.score_detailed(DEMO_CONVERSATIONS)):
        last_user = next(m["content"] for m in reversed(conv) if m["role"] == "user")
        print(
            f"  {res.score:+9.4f}  tokens={res.num_tokens:<4d} truncated={res.truncated!s:<5}  "
            f"{last_user[:36]!r} -> {conv[-1]['content'][:40]!r}"
        )
    [cmp] = rm.compare([DEMO_PAIR])
    print(f"\npair {json.dumps(DEMO_PAIR)}")
    print(
        f"  reward model : r_a={cmp.reward_a:+.4f} r_b={cmp.reward_b:+.4f} "
        f"P(A better)=sigmoid(r_a-r_b)={cmp.prob_a:.4f} -> {cmp.winner}"
    )
    [fast] = critic.judge([DEMO_PAIR], mode="logits")
    [fair] = critic.judge([DEMO_PAIR], mode="logits", debias=True)
    [gen] = critic.judge([DEMO_PAIR], mode="generate")
    print(f"  critic logits: P(A better)={fast.prob_a:.4f} -> {fast.winner}")
    print(f"  critic debias: P(A better)={fair.prob_a:.4f} -> {fair.winner} (both orders averaged)")
    print(f"  critic generate: {gen.text!r} -> {gen.winner}")
    print("\n(tiny random models: the numbers show the plumbing, not judgement)")
    return 0


def run_tiny_model(args: argparse.Namespace) -> int:
    import sys

    from cluster.kinds import kind_of
    from cluster.tiny import build_tiny_model, build_tiny_prm

    if kind_of(args.kind).steps:  # its own builder, in a real PRM's two styles
        print(build_tiny_prm(args.out, style=args.style or "qwen", seed=args.seed))
        return 0
    if args.style is not None:
        print("error: --style is only for --kind prm", file=sys.stderr)
        return 2
    out = build_tiny_model(
        args.out,
        kind=args.kind,
        arch=args.arch,
        template_bos=args.template_bos,
        tokenizer_adds_bos=args.tokenizer_bos,
        pad=args.pad,
        seed=args.seed,
    )
    print(out)
    return 0
