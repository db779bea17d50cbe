"""`python -m cluster gpu-check`: the one prepared command that measures the seed models' shapes on
a GPU, within minutes, with no hub, no network and no Ray (cluster/bench/device_check.sh runs it on
the lent machine; `--smoke` runs the same code on tiny shapes on a CPU, in CI).

For each seed model (cluster/bench/seeds.py), one at a time: its architecture from its config,
random weights made directly on the device in bf16 (no weight files), loaded into the runner the
cluster serves it with (its ModelSpec from ray_config.all-seed-models.yaml, through
cluster/engine/loading.py's loaders), so "ours" is the production code path. Then:
- attention: sdpa, eager and flex_attention timed on batches of three lengths (gpu_measure.
  measure_attention); the fastest allowed runs the rest (Gemma-2: never SDPA, which would skip its
  soft-capping; a critic: one its generation loop runs);
- two shapes of token ids (no tokenizer travels): RM-Bench lengths, and GRPO groups (8 responses to
  each ~1.5k-token prompt); three methods each, taking turns within each timed round: the model
  card's one-at-a-time loop, fixed batches of 16 in arrival order (baselines.score_batch), and ours
  (`runner.run`: length-sorted token-budget passes, shared prefixes once). Columns: useful tokens/s,
  the ratio to the card loop, MFU, max |ours - card| against the tolerance (see `tolerance`), the
  attention implementation, peak memory. A critic's value is its one-pass verdict, P(A);
- the critic: 64 greedy new tokens per prompt on its continuous-batching loop, against
  `model.generate` one prompt at a time;
- fp32 exactness: the same code paths on the architecture's first two layers in fp32, where ours
  must equal the card's loop within SCORE_TOLERANCE (1e-4), as every parity test requires;
and once, the 70B critic's placement over 2 and 4 GPUs of 80 GB, planned on meta tensors.

The time budget (--budget; the default leaves room in 8 minutes on one H100) is shared among the
models by size; nothing starts once it is spent, a model's share sets how many timed rounds its
sections run, and the table is written after every model (`Times`). A part that fails is reported
and the next one runs; the exit status is 1 if any part failed or any difference is over its limit.
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import random
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from cluster.bench import seeds
from cluster.bench.baselines import generate_one_at_a_time, scalar, score_batch, verdicts_one_at_a_time
from cluster.bench.gpu_measure import (
    ATTENTION,
    AttentionTrial,
    Budget,
    Flops,
    matmul_rate,
    measure_attention,
    peak_memory_gb,
    reset_peak_memory,
    short_error,
    timed,
)
from cluster.bench.gpu_report import Report, Row
from cluster.bench.inprocess import score_one_at_a_time
from cluster.bench.seeds import GrpoShape
from cluster.core.results import SCORE_TOLERANCE
from cluster.kinds import Op, kind_of

CARD, FIXED, OURS = "card loop", "fixed batch 16", "ours"
FIXED_BATCH_SIZE = 16
BF16_RELATIVE_TOLERANCE = 2**-4
DEVICE_BYTES = 80 * 10**9  # the placement is planned for 80 GB GPUs (H100)
PLACEMENT_DEVICES = (2, 4)
SEED = 0


@dataclass(frozen=True)
class Plan:
    """How much the check measures: the GPU run's sizes (FULL) or --smoke's (SMOKE)."""

    tiny: bool  # the seeds' architectures shrunk (seeds.TINY)
    budget_s: float
    rm_bench_items: int
    grpo: GrpoShape
    rounds: int  # timed rounds per shape at most; the methods take turns in each; medians reported
    attention_s: float  # the run's time for trials of compiled attention (flex_attention)
    trial_items: int  # the attention trial's three batches: the first RM-Bench items, by length
    trial_runs: int
    generation_prompts: int
    card_generation_prompts: int
    new_tokens: int
    fp32_layers: int
    fp32_items: int
    matmul_size: int
    matmul_runs: int


# GPU, per 8B model about: RM-Bench 51k tokens and GRPO 64k per method and round, a few seconds on an
# H100; Gemma-2-27B 3.4x that. flex_attention's first compile (tens of seconds) is the wild card.
FULL = Plan(
    tiny=False,
    budget_s=420,
    rm_bench_items=128,
    grpo=GrpoShape(prompts=4),
    rounds=3,
    attention_s=120,
    trial_items=12,
    trial_runs=3,
    generation_prompts=16,
    card_generation_prompts=2,
    new_tokens=64,
    fp32_layers=2,
    fp32_items=8,
    matmul_size=8192,
    matmul_runs=10,
)
SMOKE = Plan(
    tiny=True,
    budget_s=45,
    rm_bench_items=16,
    grpo=GrpoShape(prompts=1, prompt_tokens=384, response_median=128),
    rounds=1,
    attention_s=15,
    trial_items=6,
    trial_runs=1,
    generation_prompts=4,
    card_generation_prompts=1,
    new_tokens=64,
    fp32_layers=2,
    fp32_items=4,
    matmul_size=512,
    matmul_runs=3,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("out/gpu-check"), help="folder for gpu-check.json and gpu-check.md"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny shapes of the same architectures (a CPU, CI)")
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds for the whole check (default 420; --smoke 45)"
    )
    parser.add_argument(
        "--models",
        default=None,
        help="comma-separated parts of the seeds' names to measure (default: all four), e.g. gemma,qwen3",
    )
    parser.add_argument(
        "--attention",
        type=attention_list,
        default=ATTENTION,
        help=f"comma-separated implementations to try (default: {','.join(ATTENTION)}); e.g. sdpa,eager to leave "
        "out flex_attention's compiles on a second try",
    )
    parser.add_argument(
        "--data", type=Path, default=seeds.RM_BENCH, help=f"RM-Bench folder for the lengths (default {seeds.RM_BENCH})"
    )


def attention_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = sorted(set(names) - set(ATTENTION))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{unknown or text!r}: choose from {', '.join(ATTENTION)}")
    return names


def run(args: argparse.Namespace) -> int:
    plan = SMOKE if args.smoke else FULL
    if args.budget is not None:
        plan = replace(plan, budget_s=args.budget)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not plan.tiny:
        print("error: gpu-check needs a CUDA device; on a CPU run `gpu-check --smoke`", file=sys.stderr)
        return 2
    # the served dtype on a GPU; a CPU computes in fp32 (what the cluster loads there: resolve_dtype)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    started = time.monotonic()
    budget = Budget(plan.budget_s)
    attention = Budget(plan.attention_s)
    report = Report("smoke" if plan.tiny else "full")
    report.device = describe_device(device, dtype, plan)
    specs = seeds.served_specs()
    report.placement = plan_placements(specs[seeds.PLANNED])

    rng = random.Random(SEED)
    lengths, source = seeds.rm_bench_lengths(plan.rm_bench_items, rng, args.data)
    shapes = {"rm-bench": [seeds.random_ids(rng, n) for n in lengths], "grpo": seeds.grpo_items(plan.grpo, rng)}
    report.lengths = {
        "rm_bench_source": source,
        "rm_bench_tokens": summary(lengths),
        "grpo": plan.grpo.describe(),
        "grpo_tokens": summary([len(s) for s in shapes["grpo"]]),
    }
    report.notes = notes(plan, device)
    chosen = selected(args.models)
    rate = report.device["matmul"]["flops_per_s"]
    for i, path in enumerate(chosen):
        spec = specs[path]
        if budget.spent():
            report.skipped.append(f"{spec.name}: the run's time budget was spent")
            continue
        share = weight(path) / sum(weight(p) for p in chosen[i:])
        progress(started, f"{spec.name}: {share:.0%} of the {budget.left():.0f} s left")
        times = Times(budget, budget.part(share), attention)
        try:
            measure_model(path, spec, plan, device, dtype, shapes, rate, report, times, started, args.attention)
        except Exception as err:  # noqa: BLE001 - one model's failure is reported; the others still run
            traceback.print_exc()
            report.errors.append(f"{spec.name}: {short_error(err)}")
        release(device)  # what the failed model's frames held
        report.seconds = time.monotonic() - started
        report.write(args.out)
    report.seconds = time.monotonic() - started
    report.write(args.out)
    print(report.text())
    print(f"written: {args.out / 'gpu-check.json'}, {args.out / 'gpu-check.md'} ({report.seconds:.0f} s)")
    return 1 if report.failures() else 0


def selected(models: str | None) -> list[str]:
    if not models:
        return list(seeds.MEASURED)
    parts = [p.strip().lower() for p in models.split(",") if p.strip()]
    chosen = [path for path in seeds.MEASURED if any(p in path.lower() for p in parts)]
    if not chosen:
        raise SystemExit(f"--models {models!r} names none of {', '.join(seeds.MEASURED)}")
    return chosen


@dataclass(frozen=True)
class Times:
    """The budgets a model's sections read. The run's is hard: nothing starts once it is spent. The
    model's share is soft: it sets how many timed rounds a section runs (one at least), so every
    model measured has all its rows. The attention allowance is the run's, for all trials."""

    run: Budget
    model: Budget
    attention: Budget


def weight(path: str) -> float:
    """A model's share of the time: its decoder's matmul size (what its forward passes cost)."""
    c = seeds.SEED_CONFIGS[path]
    return c["num_hidden_layers"] * c["hidden_size"] * (c["intermediate_size"] + c["hidden_size"])


def progress(started: float, message: str) -> None:
    print(f"[{time.monotonic() - started:5.0f} s] {message}", flush=True)


def summary(lengths: list[int]) -> dict[str, int]:
    ordered = sorted(lengths)
    return {
        "items": len(ordered),
        "median": ordered[len(ordered) // 2],
        "p90": ordered[round(0.9 * (len(ordered) - 1))],
        "max": ordered[-1],
        "total": sum(ordered),
    }


# ---------------------------------------------------------------- one model


def measure_model(
    path, spec, plan: Plan, device, dtype, shapes, rate: float, report: Report, times, started, candidates
) -> None:
    """Every part of one seed model: the served model's (its own frames hold it, so it is freed
    when they return), then fp32 exactness on its first layers."""
    measure_served(path, spec, plan, device, dtype, shapes, rate, report, times, started, candidates)
    release(device)
    section(
        report,
        times,
        started,
        f"{spec.name} fp32 exactness",
        lambda: report.fp32.append(fp32_exactness(path, spec, plan, device, shapes)),
    )


def measure_served(
    path, spec, plan: Plan, device, dtype, shapes, rate: float, report: Report, times, started, candidates
) -> None:
    """The model as served, in `dtype`: the attention trial, then the timed parts, each with an
    even share of what the model's budget has left."""
    kind = kind_of(spec)
    generates = kind.head == "next_token"
    config = seeds.config_of(path, tiny=plan.tiny)
    model = build(spec, config, dtype, device)
    progress(started, f"{spec.name}: built ({sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters)")
    trials, chosen = measure_attention(
        model,
        trial_batches(shapes["rm-bench"][: plan.trial_items], config, device),
        plan.trial_runs,
        times.attention,
        generates=generates,
        candidates=candidates,
    )
    report.attention[spec.name] = {
        "trials": {impl: asdict(t) if isinstance(t, AttentionTrial) else t for impl, t in trials.items()},
        "chosen": chosen,
        "default": default_attention(config, device, dtype),
    }
    progress(started, f"{spec.name}: attention {chosen}")
    runner = make_runner(spec, config, model)
    if getattr(runner, "own_head", False):
        report.notes.append(f"{spec.name}: read through its own forward (its LM head differed from ours at load)")
    flops = Flops.of(model)
    sections = len(shapes) + generates
    for shape, seqs in shapes.items():
        share = times.model.part(1 / sections)
        sections -= 1
        section(
            report,
            times,
            started,
            f"{spec.name} {shape}",
            lambda s=seqs, n=shape, b=share: report.rows.extend(
                measure_shape(runner, kind.fast_op, s, spec.name, n, plan, flops, rate, dtype, b)
            ),
        )
    if generates:
        section(
            report,
            times,
            started,
            f"{spec.name} generation",
            lambda: report.generation.extend(measure_generation(runner, spec.name, shapes["rm-bench"], plan)),
        )


def section(report: Report, times: Times, started: float, what: str, part: Callable[[], object]) -> None:
    """One part of a model's check, unless the run's budget is spent; a part that fails is reported
    (with its traceback on stderr) and the next part runs."""
    if times.run.spent():
        report.skipped.append(f"{what}: the run's time budget was spent")
        return
    try:
        part()
    except Exception as err:  # noqa: BLE001 - one part's failure is a finding; the others still run
        traceback.print_exc()
        report.errors.append(f"{what}: {short_error(err)}")
        return
    progress(started, f"{what}: done")


def build(spec, config, dtype: torch.dtype, device: torch.device, attn: str | None = None):
    """The model of `config` with random weights made on `device` in `dtype`: the class the card
    loads it with (loading.auto_class), the attention the cluster would load it with unless `attn`."""
    from cluster.engine.loading import auto_class, check_head, resolve_attn

    check_head(spec, config)
    torch.manual_seed(SEED)
    attn = attn or resolve_attn("auto", config.model_type, device, dtype)
    with torch.device(device):
        model = auto_class(spec, config).from_config(config, dtype=dtype, attn_implementation=attn)
    return model.eval()


def default_attention(config, device: torch.device, dtype: torch.dtype) -> str:
    from cluster.engine.loading import resolve_attn

    return resolve_attn("auto", config.model_type, device, dtype) or "sdpa"


def trial_batches(seqs: list[list[int]], config, device: torch.device) -> list[torch.Tensor]:
    """The items by length in three batches (three padded lengths), right-padded."""
    from cluster.engine.runner import pad_batch

    ordered = sorted(seqs, key=len)
    step = math.ceil(len(ordered) / 3)
    return [pad_batch(ordered[i : i + step], pad_id(config)).input_ids.to(device) for i in range(0, len(ordered), step)]


def pad_id(config) -> int:
    """Any id pads (we pick the read positions ourselves): the declared pad, else the first EOS."""
    text = config.get_text_config()
    if text.pad_token_id is not None:
        return int(text.pad_token_id)
    eos = text.eos_token_id
    return int(eos[0] if isinstance(eos, list | tuple) else eos or 0)


@dataclass(frozen=True)
class IdsOnly:
    """The encoder a loader reads, where ids come without a tokenizer: a critic's verdict tokens.
    Stand-in ids for `[[`, `A` and `B` (which ids they are changes no cost)."""

    verdict_tokens: object


def make_runner(spec, config, model):
    """The runner the cluster serves `model` with: loading.py's loader for the spec's kind, given
    the in-memory model instead of a checkpoint (the served runner arguments, as load_model sets them)."""
    from cluster.core.inputs import VerdictTokens
    from cluster.engine.loading import LOADERS, Loaded, reward_head

    kind = kind_of(spec)
    runner_args = dict(
        name=spec.name,
        pad_id=pad_id(config),
        padding_side=spec.resolved_padding_side,
        max_batch_tokens=spec.max_batch_tokens,
        max_batch_size=spec.max_batch_size,
        share_prefixes=spec.share_prefixes,
    )
    head = reward_head(spec, config) if kind.head == "sequence" else None
    encoder = IdsOnly(VerdictTokens(prefix=[seeds.TOKEN_RANGE[0]], token_a=1001, token_b=1002))
    return LOADERS[kind.name](Loaded(spec, config, None, model, encoder, runner_args, head=head)).runner


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- the table's rows


def card_loop(runner, op: str, seqs: list[list[int]]) -> list[float]:
    if op == Op.VERDICTS:
        return verdicts_one_at_a_time(runner.model, seqs, runner.verdict)
    return score_one_at_a_time(runner.model, seqs)


def tolerance(dtype: torch.dtype, card: list[float]) -> float:
    """How far ours may be from the card loop. fp32: SCORE_TOLERANCE (1e-4), the project's parity
    bound. bf16: 2^-4 of the card values' root mean square. Why: bf16 keeps 8 significant bits, so
    each rounding moves a value by up to 2^-9 of its size. Ours and the card loop run the same
    weights through different kernels (a padded batch of many sequences against one sequence: other
    tile shapes, other reduction orders), so each rounding of the residual stream (two a layer) and
    of the head's bf16 output may land on the other neighbour; as independent errors they add like
    sqrt(2L + 1) x 2^-9 of the hidden state's size: 0.016 at L = 32, 0.019 at L = 46 (Gemma-2-27B).
    The bound leaves 3x that; a 16-layer random Llama in bf16 on a CPU, ours against the card, differs
    by 0.011 of the RMS. The RMS rather than each value: the error follows the size of the hidden
    state, which a value near zero has as much of as any other. (That the code paths are exact is
    checked apart, in fp32: `fp32_exactness`.)"""
    if dtype == torch.float32:
        return SCORE_TOLERANCE
    rms = math.sqrt(sum(v * v for v in card) / len(card))
    return max(SCORE_TOLERANCE, BF16_RELATIVE_TOLERANCE * rms)


def measure_shape(runner, op, seqs, model: str, shape: str, plan: Plan, flops, rate: float, dtype, budget) -> list[Row]:
    """The three methods on the same ids: a warm-up of each, then rounds in which they take turns
    (a slow spell falls on all of them), as many as `plan.rounds` and the budget allow."""
    device = runner.device
    lengths = [len(s) for s in seqs]
    chunks = [lengths[i : i + FIXED_BATCH_SIZE] for i in range(0, len(seqs), FIXED_BATCH_SIZE)]
    computed = {CARD: sum(lengths), FIXED: sum(max(c) * len(c) for c in chunks), OURS: 0}

    def ours(items):
        ran = runner.run(op, items)
        computed[OURS] = ran.computed
        return [scalar(out) for out in ran.outputs]

    def fixed(items):
        step = FIXED_BATCH_SIZE
        return [v for i in range(0, len(items), step) for v in score_batch(runner, items[i : i + step], op)]

    methods = {CARD: lambda items: card_loop(runner, op, items), FIXED: fixed, OURS: ours}
    # warm-up: first-call costs (kernel choice, allocations) out of the timed rounds
    for method in methods.values():
        method(seqs[:2])
    times: dict[str, list[float]] = {name: [] for name in methods}
    values: dict[str, list[float]] = {}
    peaks: dict[str, float] = {}
    for _ in range(plan.rounds):
        round_start = time.monotonic()
        for name, method in methods.items():
            reset_peak_memory(device)
            seconds, values[name] = timed(lambda m=method: m(seqs), device)
            times[name].append(seconds)
            peaks[name] = max(peaks.get(name, 0.0), peak_memory_gb(device))
        if budget.left() < time.monotonic() - round_start:
            break
    limit = tolerance(dtype, values[CARD])
    card_seconds = statistics.median(times[CARD])
    work = flops.of_lengths(lengths)
    attention = runner.model.config._attn_implementation
    rows = []
    for name in methods:
        seconds = statistics.median(times[name])
        rows.append(
            Row(
                model=model,
                shape=shape,
                method=name,
                items=len(seqs),
                useful_tokens=sum(lengths),
                computed_tokens=computed[name],
                seconds=seconds,
                tokens_per_s=sum(lengths) / seconds,
                ratio_to_card=card_seconds / seconds,
                mfu=work / seconds / rate,
                max_abs_diff=max(abs(a - b) for a, b in zip(values[name], values[CARD], strict=True)),
                tolerance=limit,
                attention=attention,
                peak_memory_gb=peaks[name],
            )
        )
    return rows


def measure_generation(runner, model: str, prompts: list[list[int]], plan: Plan) -> list[dict]:
    """Greedy generation of `plan.new_tokens` per prompt: ours on the model's continuous-batching
    loop (what a judge's generate mode and chat completions run), against `model.generate` one
    prompt at a time (the card's)."""
    device = runner.device
    prompts = prompts[: plan.generation_prompts]
    generator = runner.chat_runner.generator
    try:
        generator.generate([prompts[0]], 2)  # starts the loop and its cache
        seconds, generated = timed(lambda: generator.generate(prompts, plan.new_tokens), device)
    finally:
        generator.close()
    ours = generation_row(model, "ours (continuous batching)", [g.token_ids for g in generated], seconds, plan)
    few = prompts[: plan.card_generation_prompts]
    generate_one_at_a_time(runner.model, few[:1], 2, pad_id=runner.pad_id)
    card_seconds, card = timed(
        lambda: generate_one_at_a_time(runner.model, few, plan.new_tokens, pad_id=runner.pad_id), device
    )
    card_row = generation_row(model, "card (model.generate, one at a time)", card, card_seconds, plan)
    same = sum(list(g.token_ids) == c for g, c in zip(generated, card))
    ours["ratio_to_card"] = ours["tokens_per_s"] / card_row["tokens_per_s"]
    ours["same_as_card"] = f"{same}/{len(few)} prompts"
    return [card_row, ours]


def generation_row(model: str, method: str, answers: list, seconds: float, plan: Plan) -> dict:
    tokens = sum(map(len, answers))
    return dict(
        model=model,
        method=method,
        prompts=len(answers),
        new_tokens=plan.new_tokens,
        tokens=tokens,
        seconds=seconds,
        tokens_per_s=tokens / seconds,
    )


def fp32_exactness(path, spec, plan: Plan, device, shapes) -> dict:
    """Ours against the card loop in fp32 on the architecture's first `plan.fp32_layers` layers, with
    the attention the cluster loads it with: RM-Bench items and one GRPO group (its shared prefix
    computed once), within SCORE_TOLERANCE."""
    config = seeds.config_of(path, tiny=plan.tiny, layers=plan.fp32_layers)
    model = build(spec, config, torch.float32, device)
    try:
        runner = make_runner(spec, config, model)
        op = kind_of(spec).fast_op
        seqs = shapes["rm-bench"][: plan.fp32_items] + shapes["grpo"][: plan.grpo.n]
        card = card_loop(runner, op, seqs)
        ours = [scalar(out) for out in runner.run(op, seqs).outputs]
        del runner
    finally:
        del model
        release(device)
    return dict(
        model=spec.name,
        layers=plan.fp32_layers,
        items=len(seqs),
        shapes=f"{plan.fp32_items} RM-Bench, one GRPO group of {plan.grpo.n}",
        attention=default_attention(config, device, torch.float32),
        max_abs_diff=max(abs(a - b) for a, b in zip(ours, card, strict=True)),
        tolerance=SCORE_TOLERANCE,
    )


# ---------------------------------------------------------------- device, placement, notes


def describe_device(device: torch.device, dtype: torch.dtype, plan: Plan) -> dict:
    import accelerate
    import transformers

    info = {
        "type": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"name": props.name, "memory_gb": props.total_memory / 1e9, "capability": [props.major, props.minor]}
    else:
        info |= {"name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    info["matmul"] = asdict(matmul_rate(device, dtype, plan.matmul_size, plan.matmul_runs))
    return info


def plan_placements(spec) -> list[dict]:
    """The 70B critic's device map over 2 and 4 GPUs of 80 GB, as its replica would compute it
    (loading.weight_placement: plan_placement on the checkpoint's config, meta tensors only)."""
    from cluster.core.errors import ConfigError
    from cluster.engine.loading import placement_kind
    from cluster.engine.placement import layers_per_device, plan_placement, weights_bytes

    config = seeds.config_of(seeds.PLANNED)
    kind = placement_kind(spec, config)
    plans = []
    for n in PLACEMENT_DEVICES:
        where = dict(model=spec.name, devices=n, device_gb=DEVICE_BYTES / 1e9)
        try:
            memory = dict.fromkeys(range(n), DEVICE_BYTES)
            device_map = plan_placement(config, kind, n, torch.bfloat16, max_memory=memory)
        except ConfigError as err:
            plans.append(where | {"error": str(err)})
            continue
        layers = layers_per_device(device_map)
        per_device = {}
        for device, indices in layers.items():
            others = [name for name, d in device_map.items() if d == device and not name.split(".")[-1].isdigit()]
            span = f"layers {indices[0]}-{indices[-1]} ({len(indices)})" if indices else "no layers"
            per_device[device] = span + (f" + {', '.join(others)}" if others else "")
        plans.append(
            where
            | {
                "weights_gb": weights_bytes(config, kind, torch.bfloat16) / 1e9,
                "per_device": per_device,
                "device_map": device_map,
            }
        )
    return plans


def notes(plan: Plan, device: torch.device) -> list[str]:
    out = [
        "random weights: the shapes, kernels and code paths are the seeds'; the values are not their scores",
        "token ids are random (no tokenizer travels); RM-Bench lengths estimated from its text "
        "(cluster/bench/seeds.py)",
        "ours: the served runner (ray_config.all-seed-models.yaml's ModelSpec: its max_batch_tokens), "
        "length-sorted token-budget passes, shared prefixes once; fixed batch 16: our forward pass on 16 items "
        "at a time in arrival order; card loop: the HF model's forward, one item at a time",
        "critic rows: its one-pass verdict, P(A) after the verdict prefix (stand-in ids for [[, A, B)",
        "MFU: (2 x decoder parameters x n + 2 x layers x n^2 x heads x head_dim) summed over the items' "
        "lengths n, over the median seconds, over the matmul rate measured above: the same work credited to every "
        "method, so ours with shared prefixes (a prefix computed once) can pass 100%",
        f"limit: fp32 {SCORE_TOLERANCE:.0e}; bf16 2^-4 of the card values' RMS (gpu_check.tolerance says why)",
    ]
    if device.type == "cpu":
        out.append(
            "CPU: float32 throughout and the fp32 matmul rate; passes capped at 2,048 tokens "
            "(runner.CPU_PASS_TOKENS); peak memory is the process's largest resident size"
        )
    if plan.tiny:
        out.append(f"--smoke: tiny shapes of the same architectures ({seeds.TINY})")
    return out
