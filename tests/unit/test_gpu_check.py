"""The GPU check's pieces that need no model weights: the seeds' configs against the served app,
RM-Bench's lengths with and without ../shared, the GRPO shape, the tolerance, the FLOPs formula,
the attention rules, the report's text, and the command's refusal without a GPU. The command itself
runs in tests/parity/test_gpu_check_smoke.py."""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights

from cluster.bench import seeds
from cluster.bench.gpu_check import BF16_RELATIVE_TOLERANCE, attention_list, tolerance
from cluster.bench.gpu_measure import Flops, attention_refusal
from cluster.bench.gpu_report import Report, Row
from cluster.core.results import SCORE_TOLERANCE
from cluster.engine.loading import auto_class, check_head
from cluster.kinds import kind_of


def test_every_seed_config_is_served_and_builds_as_its_kind():
    specs = seeds.served_specs()
    assert set(specs) == set(seeds.SEED_CONFIGS) == {*seeds.MEASURED, seeds.PLANNED}
    for path, spec in specs.items():
        config = seeds.config_of(path)
        check_head(spec, config)  # a classifier for a reward model, a causal LM for a critic
        assert config.architectures[0].startswith(type(config).__name__.removesuffix("Config"))
        tiny = seeds.config_of(path, tiny=True)
        assert (tiny.hidden_size, tiny.num_hidden_layers, tiny.vocab_size) == (64, 2, config.vocab_size)
        assert seeds.config_of(path, layers=2).num_hidden_layers == 2
        if kind_of(spec).head == "sequence":
            assert config.num_labels == 1 and auto_class(spec, config).__name__.endswith("SequenceClassification")
    gemma = seeds.config_of("Skywork/Skywork-Reward-Gemma-2-27B-v0.2")
    assert (gemma.attn_logit_softcapping, gemma.final_logit_softcapping, gemma.sliding_window) == (50.0, 30.0, 4096)


def test_random_ids_avoid_every_seeds_special_tokens():
    low, high = seeds.TOKEN_RANGE
    for config in seeds.SEED_CONFIGS.values():
        specials = [config.get("pad_token_id"), config.get("bos_token_id")]
        specials += config["eos_token_id"] if isinstance(config["eos_token_id"], list) else [config["eos_token_id"]]
        assert all(s is None or not low <= s < high for s in specials)
        assert high <= config["vocab_size"]


def test_embedded_quantiles_are_rm_bench_s():
    if not seeds.RM_BENCH.is_dir():
        pytest.skip("../shared/data/rm-bench is not beside this checkout")
    lengths = [seeds.estimated_tokens(p, r) for p, r in seeds.rm_bench_pairs(seeds.RM_BENCH)]
    assert seeds.quantiles(lengths) == seeds.RM_BENCH_QUANTILES


def test_lengths_without_shared_follow_the_quantiles(tmp_path):
    lengths, source = seeds.rm_bench_lengths(4000, random.Random(0), tmp_path / "absent")
    assert "no ../shared" in source
    assert min(lengths) >= seeds.RM_BENCH_QUANTILES[0] and max(lengths) <= seeds.RM_BENCH_QUANTILES[-1]
    assert abs(statistics.median(lengths) - seeds.RM_BENCH_QUANTILES[10]) < 15
    assert abs(sorted(lengths)[int(0.9 * 4000)] - seeds.RM_BENCH_QUANTILES[18]) < 30


def test_rm_bench_folder_lengths_are_estimated_from_its_text(tmp_path):
    record = {"prompt": "What is two plus two?", "chosen": ["Four."] * 3, "rejected": ["Five, surely."] * 3}
    (tmp_path / "chat.json").write_text(f"[{json.dumps(record)}]")
    lengths, source = seeds.rm_bench_lengths(10, random.Random(0), tmp_path)
    assert str(tmp_path) in source and len(lengths) == 6
    assert set(lengths) == {
        seeds.estimated_tokens(record["prompt"], "Four."),
        seeds.estimated_tokens(record["prompt"], "Five, surely."),
    }


def test_grpo_groups_share_their_prompt():
    shape = seeds.GrpoShape(prompts=3, n=8)
    items = seeds.grpo_items(shape, random.Random(0))
    assert len(items) == 24
    prefixes = []
    for g in range(3):
        group = items[g * 8 : (g + 1) * 8]
        shared = next(k for k in range(len(group[0])) if len({tuple(i[: k + 1]) for i in group}) > 1)
        assert 0.9 * 1500 <= shared <= 1.1 * 1500 + 1  # a random response may start like another, by chance
        prefixes.append(group[0][:1000])
    assert len({tuple(p) for p in prefixes}) == 3


def test_tolerance_is_exact_in_fp32_and_relative_to_the_values_in_bf16():
    assert tolerance(torch.float32, [3.0, -5.0]) == SCORE_TOLERANCE
    assert tolerance(torch.bfloat16, [3.0, -4.0, 3.0, -4.0]) == pytest.approx(BF16_RELATIVE_TOLERANCE * 12.5**0.5)
    assert tolerance(torch.bfloat16, [0.0, 0.0]) == SCORE_TOLERANCE


def test_flops_count_the_decoder_and_causal_attention():
    config = seeds.config_of("Skywork/Skywork-Reward-Llama-3.1-8B-v0.2")
    with init_empty_weights():
        model = auto_class(seeds.served_specs()[seeds.MEASURED[0]], config).from_config(config)
    flops = Flops.of(model)
    # Llama-3.1-8B: 8.03B parameters, 0.53B of them the embeddings; 32 layers of 32 x 128 attention
    assert 6.9e9 < flops.body_params < 7.0e9 and (flops.layers, flops.attention_width) == (32, 4096)
    n = 1000
    assert flops.of_lengths([n, n]) == 2 * (2 * flops.body_params * n + 2 * 32 * n * n * 4096)


def test_attention_rules():
    assert attention_refusal("sdpa", "gemma2", generates=False).startswith("not allowed")
    assert attention_refusal("flex_attention", "gemma2", generates=False) is None
    assert attention_refusal("sdpa", "llama", generates=True) is None
    assert attention_refusal("flex_attention", "llama", generates=True).startswith("measured, not eligible")
    assert attention_list("sdpa, eager") == ("sdpa", "eager")
    with pytest.raises(argparse.ArgumentTypeError, match="choose from"):
        attention_list("flash")


def test_report_text_and_markdown_name_every_column_and_the_failures(tmp_path):
    row = dict(items=2, useful_tokens=10, computed_tokens=12, seconds=0.5, tokens_per_s=20.0, ratio_to_card=1.5)
    row |= dict(mfu=0.42, tolerance=1e-4, attention="sdpa", peak_memory_gb=16.3)
    report = Report("full", device={"name": "GPU", "matmul": {"flops_per_s": 8e14, "size": 8192, "dtype": "bfloat16"}})
    report.rows = [
        Row(model="rm", shape="grpo", method="ours", max_abs_diff=0.0, **row),
        Row(model="rm", shape="grpo", method="fixed batch 16", max_abs_diff=1e-3, **row),
    ]
    text = report.text()
    assert "42.0%" in text and "1.50x" in text and "16.3" in text and "800.00 TFLOP/s" in text
    assert "gpu-check: FAILED" in text and "rm grpo fixed batch 16: max |diff| 1.00e-03" in text
    report.write(tmp_path)
    md = (tmp_path / "gpu-check.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model"))
    assert header.count(" | ") == 9 and "max \\|diff\\|" in header  # the pipes in a title do not split it
    assert not json.loads((tmp_path / "gpu-check.json").read_text())["ok"]


def test_the_full_check_refuses_a_machine_without_cuda(capsys, monkeypatch, tmp_path):
    from cluster.cli.main import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["gpu-check", "--out", str(tmp_path)]) == 2
    assert "--smoke" in capsys.readouterr().err
    assert not Path(tmp_path / "gpu-check.json").exists()
