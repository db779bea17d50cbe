"""cluster.engine.placement: device maps for one replica over several GPUs, weight bytes, 8-bit configs.

CPU only and fast: every model here is an empty skeleton (meta tensors), GPUs are just keys of
`max_memory`, so the real Llama-3.1-70B shape is planned in well under a second.
"""

from __future__ import annotations

import pytest
import torch
from accelerate import init_empty_weights
from accelerate.utils import compute_module_sizes
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.integrations.accelerate import expand_device_map

from cluster.core.errors import ConfigError
from cluster.engine import placement
from cluster.engine.placement import layers_per_device, plan_placement, quantization_config, weights_bytes

# nvidia-smi's totals for an H100 80GB (81559 MiB) and an H200 (143771 MiB); torch's total_memory is a
# little lower (~0.5 GB on an H100), which changes none of the results below.
H100 = 81559 * 2**20
H200 = 143771 * 2**20
HEADS = {"reward": "score", "critic": "lm_head"}

# Llama-3.1 as in its config.json (Skywork-Critic-Llama3.1-70B and Skywork-Reward-Llama-3.1-8B share it).
LLAMA31 = dict(
    vocab_size=128256,
    max_position_embeddings=131072,
    num_key_value_heads=8,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=False,
    bos_token_id=128000,
    eos_token_id=[128001, 128008, 128009],
    rope_scaling={
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
)


def llama_70b() -> LlamaConfig:
    return LlamaConfig(
        hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64, **LLAMA31
    )


def llama_8b() -> LlamaConfig:
    return LlamaConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_labels=1, **LLAMA31
    )


def tiny(vocab_size: int = 512, tie: bool = False) -> LlamaConfig:
    # vocab 512: the embeddings weigh about one decoder layer (36992 parameters), as in the 70B (1.2).
    return LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        tie_word_embeddings=tie,
        num_labels=1,
    )


def skeleton(config, kind, dtype):
    # The planner's own (cached) skeleton; test_skeleton_is_what_from_config_builds checks it.
    return placement._skeleton(config, kind, dtype)


def device_bytes(model, device_map, quantization=None) -> dict[int, int]:
    one_byte = placement._quantized_weights(model) if quantization else None
    sizes = compute_module_sizes(model, special_dtypes=one_byte)
    loads: dict[int, int] = {}
    for name, device in device_map.items():
        loads[device] = loads.get(device, 0) + sizes.get(name, 0)
    return loads


def check_map(config, kind, dtype, device_map, n_devices, quantization=None) -> dict[int, list[int]]:
    """The invariants of every plan; returns the layers on each device."""
    model = skeleton(config, kind, dtype)
    assert all(isinstance(d, int) and 0 <= d < n_devices for d in device_map.values()), device_map
    # from_pretrained resolves each weight with this very function, falling back to "cpu" for a weight
    # no key matches: every weight and buffer must match one.
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    resolved = expand_device_map(device_map, names)
    assert all(isinstance(d, int) for d in resolved.values()), [n for n, d in resolved.items() if d == "cpu"]

    per_device = layers_per_device(device_map)
    n_layers = config.num_hidden_layers
    assert list(per_device) == list(range(n_devices))  # every device used, in order
    flat = [i for layers in per_device.values() for i in layers]
    assert flat == list(range(n_layers))  # each layer once, contiguous, in device order
    assert all(per_device.values()), per_device  # no device without a decoder layer

    last = n_devices - 1
    assert device_map["model.embed_tokens"] == 0
    assert device_map["model.norm"] == last
    head = device_map[HEADS[kind]]
    assert head == (0 if config.tie_word_embeddings and kind == "critic" else last)

    # Balanced by bytes: adjacent devices differ by at most one decoder layer.
    loads = device_bytes(model, device_map, quantization)
    sizes = compute_module_sizes(model)
    layer = max(sizes[f"model.layers.{i}"] for i in range(n_layers))
    ordered = [loads[d] for d in range(n_devices)]
    assert all(abs(a - b) <= layer for a, b in zip(ordered, ordered[1:])), (ordered, layer)
    return per_device


def counts(per_device):
    return [len(layers) for layers in per_device.values()]


# --- tiny Llama over fake devices -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["reward", "critic"])
@pytest.mark.parametrize("n_devices", [2, 4])
def test_tiny_model_is_spread_evenly(kind, n_devices):
    config = tiny()
    # 30% over an even share: the weights cannot fit on one device fewer, so all n must be used.
    per_device = int(weights_bytes(config, kind, torch.float32) / n_devices * 1.3)
    device_map = plan_placement(
        config, kind, n_devices, torch.float32, {i: per_device for i in range(n_devices)}, headroom=0
    )
    per_layer = check_map(config, kind, torch.float32, device_map, n_devices)
    assert counts(per_layer) == [8 // n_devices] * n_devices


def test_spread_is_by_bytes_so_heavy_embeddings_displace_layers():
    # vocab 1000: embeddings and lm_head weigh 1.7 layers each; the end devices get fewer layers.
    config = tiny(vocab_size=1000)
    n = 4
    per_device = int(weights_bytes(config, "critic", torch.float32) / n * 1.05)
    device_map = plan_placement(config, "critic", n, torch.float32, {i: per_device for i in range(n)}, headroom=0)
    assert counts(check_map(config, "critic", torch.float32, device_map, n)) == [1, 3, 3, 1]


def test_tied_head_stays_with_the_embeddings():
    config = tiny(tie=True)
    device_map = plan_placement(config, "critic", 2, torch.float32, {0: 10**9, 1: 10**9})
    check_map(config, "critic", torch.float32, device_map, 2)
    assert device_map["lm_head"] == device_map["model.embed_tokens"] == 0
    # counted once: the tied head adds no bytes
    untied = weights_bytes(tiny(tie=False), "critic", torch.float32)
    assert weights_bytes(config, "critic", torch.float32) == untied - 512 * 64 * 4


def test_one_device_gets_everything_with_each_layer_named():
    device_map = plan_placement(tiny(), "reward", 1, torch.float32, {0: 10**9})
    assert set(device_map.values()) == {0}
    assert layers_per_device(device_map) == {0: list(range(8))}


def test_a_budget_the_weights_fit_only_in_total_is_refused_not_offloaded():
    # 5% over an even share of 4 devices is enough bytes, but no cut into whole layers fits.
    config = tiny(vocab_size=256)
    need = weights_bytes(config, "reward", torch.float32)
    with pytest.raises(ConfigError, match="whole decoder layers"):
        plan_placement(config, "reward", 4, torch.float32, {i: int(need / 4 * 1.05) for i in range(4)}, headroom=0)


def test_skeleton_is_what_from_config_builds():
    config = tiny(tie=True)
    model = skeleton(config, "critic", torch.bfloat16)
    assert model is skeleton(config, "critic", torch.bfloat16)  # cached
    with init_empty_weights():
        reference = AutoModelForCausalLM.from_config(tiny(tie=True), dtype=torch.bfloat16)
    shapes = {n: (p.shape, p.dtype) for n, p in model.named_parameters(remove_duplicate=False)}
    assert shapes == {n: (p.shape, p.dtype) for n, p in reference.named_parameters(remove_duplicate=False)}
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing allocated
    # init_empty_weights unties lm_head from the embeddings; the skeleton ties them back
    assert reference.lm_head.weight is not reference.model.embed_tokens.weight
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert type(skeleton(config, "reward", torch.bfloat16)).__name__ == "LlamaForSequenceClassification"


def test_from_pretrained_takes_the_map(tmp_path):
    # No GPU here: the planned map with every device replaced by "cpu" has the same keys, and
    # from_pretrained must load through it what it loads without one (tied head included).
    config = tiny(tie=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    device_map = plan_placement(config, "critic", 2, torch.float32, {0: 10**9, 1: 10**9})
    placed = AutoModelForCausalLM.from_pretrained(tmp_path, device_map=dict.fromkeys(device_map, "cpu"))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.tensor([[1, 5, 7, 9]])
    torch.testing.assert_close(placed(ids).logits, plain(ids).logits, rtol=0, atol=0)
    assert placed.lm_head.weight is placed.model.embed_tokens.weight


def test_plan_leaves_the_config_alone():
    config = tiny()
    before = dict(config.__dict__)
    plan_placement(config, "reward", 2, torch.float32, {0: 10**9, 1: 10**9})
    assert config.__dict__ == before


def test_plan_argument_errors():
    config = tiny()
    with pytest.raises(ConfigError, match="devices 0..1"):
        plan_placement(config, "reward", 2, torch.float32, {0: 10**9})
    with pytest.raises(ConfigError, match="positive number of bytes"):
        plan_placement(config, "reward", 1, torch.float32, {0: "80GB"})
    with pytest.raises(ConfigError, match="headroom"):
        plan_placement(config, "reward", 1, torch.float32, {0: 10**9}, headroom=1.0)
    with pytest.raises(ConfigError, match="kind"):
        plan_placement(config, "judge", 1, torch.float32, {0: 10**9})
    with pytest.raises(ConfigError, match="n_devices"):
        plan_placement(config, "reward", 0, torch.float32, {})
    with pytest.raises(ConfigError, match="quantization"):
        plan_placement(config, "reward", 1, torch.float32, {0: 10**9}, quantization="int4")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path")
def test_without_cuda_max_memory_must_be_given():
    with pytest.raises(ConfigError, match="0 CUDA device.*max_memory"):
        plan_placement(tiny(), "reward", 2, torch.float32)


# --- the real shapes ----------------------------------------------------------------------------


def test_70b_weights_are_141_gb_in_bf16_and_under_80_gb_in_8_bits():
    config = llama_70b()
    bf16 = weights_bytes(config, "critic", torch.bfloat16)
    assert bf16 == pytest.approx(141.1e9, rel=0.01)  # 70.55e9 parameters x 2 bytes
    # int8 / fp8: 68.5e9 decoder-layer linear weights at 1 byte, embeddings and lm_head (4.2 GB) in bf16
    for name in ("int8", "fp8"):
        eight_bit = weights_bytes(config, "critic", torch.bfloat16, quantization=name)
        assert eight_bit == pytest.approx(72.7e9, rel=0.01)
        assert eight_bit < 80e9


@pytest.mark.parametrize("n_devices, memory, expected", [(2, H200, [40, 40]), (4, H100, [19, 21, 21, 19])])
def test_70b_critic_spreads_over_h200s_and_h100s(n_devices, memory, expected):
    config = llama_70b()
    device_map = plan_placement(config, "critic", n_devices, torch.bfloat16, {i: memory for i in range(n_devices)})
    per_device = check_map(config, "critic", torch.bfloat16, device_map, n_devices)
    # The end devices also hold the embeddings / lm_head (2.1 GB, 1.2 layers): one or two layers fewer.
    assert counts(per_device) == expected
    assert max(device_bytes(skeleton(config, "critic", torch.bfloat16), device_map).values()) < memory * 0.9


def test_70b_in_bf16_does_not_fit_one_h100():
    with pytest.raises(ConfigError) as err:
        plan_placement(llama_70b(), "critic", 1, torch.bfloat16, {0: H100})
    message = str(err.value)
    assert "141107412992 bytes" in message and "76968728985 bytes" in message
    assert "n_devices" in message and "quantization='int8'" in message


def test_70b_in_int8_fits_one_h100():
    config = llama_70b()
    device_map = plan_placement(config, "critic", 1, torch.bfloat16, {0: H100}, quantization="int8")
    assert set(device_map.values()) == {0}
    assert layers_per_device(device_map) == {0: list(range(80))}


def test_headroom_decides_whether_70b_fits_two_h100s():
    config = llama_70b()
    two = {0: H100, 1: H100}
    check_map(config, "critic", torch.bfloat16, plan_placement(config, "critic", 2, torch.bfloat16, two), 2)
    with pytest.raises(ConfigError, match="less 20% headroom"):
        plan_placement(config, "critic", 2, torch.bfloat16, two, headroom=0.2)


def test_8b_reward_fits_one_device():
    config = llama_8b()
    assert 14.5e9 < weights_bytes(config, "reward", torch.bfloat16) < 16.5e9
    device_map = plan_placement(config, "reward", 1, torch.bfloat16, {0: H100})
    assert set(device_map.values()) == {0}
    assert device_map["score"] == 0 and layers_per_device(device_map) == {0: list(range(32))}


# --- quantization configs -----------------------------------------------------------------------


def test_no_quantization_is_none():
    assert quantization_config(None, "cpu") is None


@pytest.mark.parametrize("device_type", ["cpu", "mps"])
def test_quantization_needs_cuda(device_type):
    with pytest.raises(ConfigError, match=f"needs a CUDA GPU; the device is '{device_type}'"):
        quantization_config("int8", device_type)


def test_unknown_quantization_is_named():
    with pytest.raises(ConfigError, match="'int4'"):
        quantization_config("int4", "cuda")


@pytest.mark.parametrize(
    "name, install",
    [("int8", r"bitsandbytes.*pip install '\.\[quant\]'"), ("fp8", r"fbgemm-gpu-genai.*pip install fbgemm-gpu-genai")],
)
def test_missing_backend_says_what_to_install(monkeypatch, name, install):
    monkeypatch.setattr(placement, "_backend_available", lambda _: False)
    with pytest.raises(ConfigError, match=install):
        quantization_config(name, "cuda")


def test_configs_are_transformers_own(monkeypatch):
    from transformers import BitsAndBytesConfig, FbgemmFp8Config

    monkeypatch.setattr(placement, "_backend_available", lambda _: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # skip the compute capability check
    int8 = quantization_config("int8", "cuda:0")
    assert isinstance(int8, BitsAndBytesConfig) and int8.load_in_8bit and not int8.load_in_4bit
    assert isinstance(quantization_config("fp8", "cuda"), FbgemmFp8Config)


def test_fp8_refuses_pre_hopper_gpus(monkeypatch):
    monkeypatch.setattr(placement, "_backend_available", lambda _: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    with pytest.raises(ConfigError, match="compute capability 9.0.*8.0.*'int8'"):
        quantization_config("fp8", "cuda")
