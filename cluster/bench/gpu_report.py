"""The GPU check's results: one table row per (model, shape, method), the sections beside it
(attention trials, fp32 exactness, generation, placement), printed as text and written as JSON and
Markdown under --out after every model, so a run cut short still leaves what it measured."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

COLUMNS = (
    ("model", "model", "<"),
    ("shape", "shape", "<"),
    ("method", "method", "<"),
    ("tokens/s", "tokens_per_s", ">"),
    ("x card", "ratio_to_card", ">"),
    ("MFU", "mfu", ">"),
    ("max |diff|", "max_abs_diff", ">"),
    ("limit", "tolerance", ">"),
    ("attention", "attention", "<"),
    ("peak GB", "peak_memory_gb", ">"),
)


@dataclass(frozen=True)
class Row:
    model: str
    shape: str
    method: str
    items: int
    useful_tokens: int  # the sequences' lengths summed: what the card's loop computes
    computed_tokens: int  # what the method's forward passes computed: padding in, a shared prefix once
    seconds: float  # median over the rounds
    tokens_per_s: float  # useful tokens / seconds
    ratio_to_card: float  # tokens/s over the card loop's, same items, same run
    mfu: float  # forward FLOPs of the useful tokens / seconds / the measured matmul rate
    max_abs_diff: float  # max |value - the card loop's value| over the items
    tolerance: float
    attention: str
    peak_memory_gb: float

    @property
    def within(self) -> bool:
        return self.max_abs_diff <= self.tolerance


@dataclass
class Report:
    mode: str  # "full" or "smoke"
    device: dict[str, Any] = field(default_factory=dict)
    lengths: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    attention: dict[str, Any] = field(default_factory=dict)  # model -> trial timings, default, chosen
    fp32: list[dict[str, Any]] = field(default_factory=list)
    generation: list[dict[str, Any]] = field(default_factory=list)
    placement: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def failures(self) -> list[str]:
        bad = [
            f"{r.model} {r.shape} {r.method}: max |diff| {r.max_abs_diff:.2e} > {r.tolerance:.1e}"
            for r in self.rows
            if not r.within
        ]
        bad += [
            f"{f['model']} fp32: max |diff| {f['max_abs_diff']:.2e} > {f['tolerance']:.0e}"
            for f in self.fp32
            if f["max_abs_diff"] > f["tolerance"]
        ]
        return bad + self.errors

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows"] = [asdict(r) | {"within": r.within} for r in self.rows]
        out["ok"] = not self.failures()
        return out

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "gpu-check.json").write_text(json.dumps(self.to_json(), indent=2) + "\n", "utf-8")
        (folder / "gpu-check.md").write_text(self.markdown(), "utf-8")

    # ------------------------------------------------------------ text

    def header(self) -> list[str]:
        d = self.device
        rate = d.get("matmul", {})
        return [
            f"gpu-check ({self.mode}): {d.get('name')} ({d.get('type')}, {d.get('dtype')}); torch {d.get('torch')}, "
            f"transformers {d.get('transformers')}, Python {d.get('python')}",
            f"matmul rate: {rate.get('flops_per_s', 0) / 1e12:.2f} TFLOP/s ({rate.get('size')}^3 {rate.get('dtype')}, "
            f"median of {rate.get('runs')}); lengths: {self.lengths.get('rm_bench_source')}; "
            f"GRPO: {self.lengths.get('grpo')}",
        ]

    def table(self) -> list[list[str]]:
        return [[_cell(key, getattr(r, key)) for _, key, _ in COLUMNS] for r in self.rows]

    def text(self) -> str:
        cells = self.table()
        widths = [max([len(title)] + [len(row[i]) for row in cells]) for i, (title, _, _) in enumerate(COLUMNS)]

        def line(values: list[str]) -> str:
            return "  ".join(
                v.ljust(w) if align == "<" else v.rjust(w) for v, w, (_, _, align) in zip(values, widths, COLUMNS)
            )

        lines = self.header() + ["", line([title for title, _, _ in COLUMNS])]
        lines += [line(row) for row in cells]
        for title, body in self.sections():
            lines += ["", f"{title}:"] + [f"  {b}" for b in body]
        failures = self.failures()
        lines += ["", "gpu-check: ok" if not failures else "gpu-check: FAILED\n  " + "\n  ".join(failures)]
        return "\n".join(lines)

    def markdown(self) -> str:
        titles = [title.replace("|", "\\|") for title, _, _ in COLUMNS]
        lines = [f"# GPU check ({self.mode})", "", *[f"{h}  " for h in self.header()], ""]
        lines += ["| " + " | ".join(titles) + " |", "|" + "|".join("---" for _ in titles) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.table()]
        for title, body in self.sections():
            lines += ["", f"## {title}", ""] + [f"- {b}" for b in body]
        return "\n".join(lines) + "\n"

    def sections(self) -> list[tuple[str, list[str]]]:
        out = []
        if self.attention:
            title = "attention (one decoder pass a batch: the median, and the first round's, which met two new lengths)"
            out.append((title, _attention(self)))
        if self.fp32:
            out.append(("fp32 exactness (ours vs the card loop, first layers only)", [_fp32(f) for f in self.fp32]))
        if self.generation:
            out.append(("generation (greedy, the critic)", [_generation(g) for g in self.generation]))
        if self.placement:
            out.append(("placement (planned on meta tensors, no weights)", _placement(self.placement)))
        for title, items in (("skipped", self.skipped), ("errors", self.errors), ("notes", self.notes)):
            if items:
                out.append((title, list(items)))
        return out


def _cell(key: str, value: Any) -> str:
    if key == "tokens_per_s":
        return f"{value:,.0f}"
    if key == "ratio_to_card":
        return f"{value:.2f}x"
    if key == "mfu":
        return f"{value:.1%}"
    if key in ("max_abs_diff", "tolerance"):
        return f"{value:.1e}"
    if key == "peak_memory_gb":
        return f"{value:.1f}"
    return str(value)


def _attention(report: Report) -> list[str]:
    lines = []
    for model, trial in report.attention.items():
        timings = " | ".join(
            f"{impl} {t['steady_s'] * 1e3:.1f} ms (first round {t['first_round_s'] * 1e3:.1f} ms)"
            if isinstance(t, dict)
            else f"{impl}: {t}"
            for impl, t in trial["trials"].items()
        )
        lines.append(f"{model}: {timings}; chosen {trial['chosen']} (the cluster's default: {trial['default']})")
    return lines


def _fp32(f: dict[str, Any]) -> str:
    verdict = "ok" if f["max_abs_diff"] <= f["tolerance"] else "FAILED"
    return (
        f"{f['model']}: {f['layers']} layers, {f['items']} items ({f['shapes']}), {f['attention']}: "
        f"max |diff| {f['max_abs_diff']:.1e} (limit {f['tolerance']:.0e}) {verdict}"
    )


def _generation(g: dict[str, Any]) -> str:
    return (
        f"{g['model']} {g['method']}: {g['prompts']} prompts x {g['new_tokens']} new tokens, "
        f"{g['tokens']} generated in {g['seconds']:.2f} s: {g['tokens_per_s']:,.0f} tokens/s"
        + (f" ({g['ratio_to_card']:.2f}x card)" if "ratio_to_card" in g else "")
        + (f"; same tokens as the card's generate: {g['same_as_card']}" if "same_as_card" in g else "")
    )


def _placement(plans: list[dict[str, Any]]) -> list[str]:
    lines = []
    for p in plans:
        if "error" in p:
            lines.append(f"{p['model']} over {p['devices']} x {p['device_gb']:.0f} GB: {p['error']}")
            continue
        split = "; ".join(f"cuda:{d}: {desc}" for d, desc in p["per_device"].items())
        lines.append(f"{p['model']} over {p['devices']} x {p['device_gb']:.0f} GB ({p['weights_gb']:.1f} GB): {split}")
    return lines
