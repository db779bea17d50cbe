"""What `python -m cluster gpu-check` measures with, apart from the models: time budgets, the
device's matmul rate, a model's forward FLOPs, peak memory, and the attention implementations."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

ATTENTION = ("sdpa", "eager", "flex_attention")
COMPILED = ("flex_attention",)  # compiled at first use (tens of seconds): tried while the allowance lasts
# implementations a continuous-batching generation loop runs (transformers' switch_to_cb_friendly_attn
# refuses the others); a judge that generates is served on one loaded model, so it keeps one of these
GENERATION_ATTENTION = ("sdpa", "eager")


class Budget:
    """Seconds for a section of the run. Sections check it between steps and stop cleanly when it
    is spent, so the run ends with what it has instead of running into the caller's timeout."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def spent(self) -> bool:
        return self.left() <= 0

    def part(self, share: float) -> Budget:
        """A sub-budget: `share` of what is left now (what it does not use stays with this one)."""
        return Budget(self.left() * share)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


@dataclass(frozen=True)
class MatmulRate:
    """The device's dense matmul rate, measured in this run: MFU's denominator."""

    flops_per_s: float
    dtype: str
    size: int
    runs: int


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int, runs: int) -> MatmulRate:
    """Median rate of `size`^3 matmuls (2 size^3 FLOPs each) in `dtype`, after a warm-up."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b)
    seconds = [timed(lambda: torch.mm(a, b), device)[0] for _ in range(runs)]
    return MatmulRate(2 * size**3 / statistics.median(seconds), str(dtype).removeprefix("torch."), size, runs)


@dataclass(frozen=True)
class Flops:
    """Forward FLOPs of a decoder, per sequence of n tokens: 2 x body parameters x n (every weight
    of the decoder layers one multiply-add per token) + 2 x layers x n^2 x heads x head_dim (the
    score and value matmuls, 2 n^2 d each, halved by the causal mask). The embeddings are a lookup,
    and the head is left out: ours applies it at the read position only (the card's loop applies a
    critic's LM head at every position, work the comparison does not credit it with). Gemma-2's
    sliding window (4,096) is no shorter than any sequence here."""

    body_params: int
    layers: int
    attention_width: int

    @classmethod
    def of(cls, model) -> Flops:
        base = getattr(model, model.base_model_prefix)
        embeddings = base.get_input_embeddings().weight.numel()
        config = model.config.get_text_config()
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        body = sum(p.numel() for p in base.parameters()) - embeddings
        return cls(body, config.num_hidden_layers, config.num_attention_heads * head_dim)

    def of_lengths(self, lengths: Sequence[int]) -> float:
        return float(sum(2 * self.body_params * n + 2 * self.layers * n * n * self.attention_width for n in lengths))


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float:
    """CUDA: the most memory allocated since the last reset (weights included). CPU: the process's
    largest resident size so far (never reset; the smoke's figure is indicative only)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: kilobytes


def attention_refusal(impl: str, model_type: str, generates: bool) -> str | None:
    """Why `impl` may not serve this model (None: it may)."""
    from cluster.engine.loading import NO_SDPA_MODEL_TYPES

    if impl == "sdpa" and model_type in NO_SDPA_MODEL_TYPES:
        return "not allowed: attention soft-capping, which SDPA would skip"
    if generates and impl not in GENERATION_ATTENTION:
        return "measured, not eligible: the model's generation loop cannot run it"
    return None


def short_error(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first[:200]}"


@dataclass(frozen=True)
class AttentionTrial:
    """One implementation's trial: seconds a batch (median of the rounds after the first), the
    first round's seconds a batch (two lengths it had not seen: recompiles land there), and the
    total, by which the fastest is chosen."""

    steady_s: float
    first_round_s: float
    total_s: float


def measure_attention(
    model,
    batches: list[torch.Tensor],
    runs: int,
    allowance: Budget,
    *,
    generates: bool,
    candidates: Sequence[str] = ATTENTION,
) -> tuple[dict[str, AttentionTrial | str], str]:
    """Each attention implementation on the decoder pass ours runs (right-padded, no mask), over
    batches of three lengths: a warm-up on the first (flex_attention compiles there), then `runs`
    rounds over all three. A replica meets a new length at nearly every pass, so an implementation
    that recompiles for one pays for it in the first round, as it would there. The fastest allowed
    in total is chosen and the model left set to it. `allowance` is the run's time for compiling:
    a compiled implementation (flex_attention: tens of seconds at its first use) is not started once
    it is spent; the others always run."""
    base = getattr(model, model.base_model_prefix)
    model_type = model.config.model_type
    device = batches[0].device
    trials: dict[str, AttentionTrial | str] = {}
    for impl in ATTENTION:
        refusal = attention_refusal(impl, model_type, generates)
        if refusal and refusal.startswith("not allowed"):
            trials[impl] = refusal
            continue
        if impl not in candidates:
            trials[impl] = "not tried (--attention)"
            continue
        if impl in COMPILED and allowance.spent():
            trials[impl] = "skipped: the run's time for compiling attention was spent"
            continue
        try:
            model.set_attn_implementation(impl)
            with torch.inference_mode():
                base(input_ids=batches[0], use_cache=False)
                order = batches[1:] + batches[:1]
                rounds = [
                    [timed(lambda b=b: base(input_ids=b, use_cache=False), device)[0] for b in order]
                    for _ in range(runs)
                ]
            later = [t for r in rounds[1:] for t in r] or rounds[0]
            trials[impl] = AttentionTrial(
                statistics.median(later), sum(rounds[0]) / len(rounds[0]), sum(map(sum, rounds))
            )
        except Exception as err:  # noqa: BLE001 - an implementation this install lacks is a finding, not a failure
            trials[impl] = f"unavailable: {short_error(err)}"
    eligible = {
        impl: t.total_s
        for impl, t in trials.items()
        if isinstance(t, AttentionTrial) and attention_refusal(impl, model_type, generates) is None
    }
    if not eligible:
        raise RuntimeError(f"no attention implementation ran: {trials}")
    chosen = min(eligible, key=eligible.__getitem__)
    model.set_attn_implementation(chosen)
    return trials, chosen
