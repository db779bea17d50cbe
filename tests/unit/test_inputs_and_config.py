"""Bad input and bad config get one of the closed set of errors, with a message naming the problem."""

from __future__ import annotations

import pytest
from helpers import CONVERSATIONS, REPO

from cluster import ConfigError, InvalidInput, ModelLoadError, ModelSpec, load_model
from cluster.core.errors import HTTP_STATUS, ScoringError, http_status

GOOD = CONVERSATIONS[0]


@pytest.fixture(scope="module")
def rm(reward_dir):
    return load_model(ModelSpec(name="rm", path=str(reward_dir("llama")), kind="reward"))


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([[]], r"conversations\[0\]: the conversation is empty"),
        ([GOOD, [{"role": "bot", "content": "hi"}]], r"conversations\[1\]\[0\]\.role: unknown role 'bot'"),
        (
            [[{"role": "user", "content": "q"}, {"role": "assistant", "content": 3}]],
            r"conversations\[0\]\[1\]\.content: must be a string, got int",
        ),
        (
            [[{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]],
            r"conversations\[0\]\[1\]\.content: must be a string, got NoneType",
        ),
        ([[{"role": "user", "content": "q"}]], r"conversations\[0\]: the last message must be the assistant's"),
        ([[{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]], r"got role 'user'"),
        ([["just a string in a list"]], r"conversations\[0\]\[0\]: a message must be an object"),
        ([""], r"conversations\[0\]: the text is empty"),
        ([42], r"conversations\[0\]: a conversation must be a list of messages, got int"),
        (GOOD, r"got a single conversation; pass a list of conversations"),
        ("some text", r"conversations: expected a list, got str"),
        ({"role": "user"}, r"conversations: expected a list, got dict"),
    ],
)
def test_bad_conversations_are_named(rm, inputs, message):
    with pytest.raises(InvalidInput, match=message):
        rm.score(inputs)


def test_template_rejection_becomes_invalid_input(reward_dir):
    gemma = load_model(ModelSpec(name="g", path=str(reward_dir("gemma2")), kind="reward"))
    with pytest.raises(InvalidInput, match=r"conversations\[0\]: the chat template rejected.*System role"):
        gemma.score([CONVERSATIONS[2]])


def test_extra_message_keys_are_ignored(rm):
    with_name = [{**m, "name": "x"} for m in GOOD]
    assert rm.score([with_name]) == rm.score([GOOD])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(temperature=0.1), r"ModelSpec: unknown field 'temperature'"),
        (
            dict(kind="embedding"),
            r"ModelSpec\.kind: Input should be 'reward', 'critic', 'prm', 'pointwise' or 'generative'",
        ),
        (dict(dtype="fp8"), r"ModelSpec\.dtype"),
        (dict(truncation="right"), r"ModelSpec\.truncation"),
        (dict(max_length=8192, max_batch_tokens=4096), r"max_batch_tokens \(4096\) must be >= max_length"),
        (dict(judge_template="{input}"), r"judge_template is only for kind='critic'"),
        (dict(kind="critic", judge_template="{input} {response_a}"), r"missing: \['response_b'\]"),
        (dict(kind="critic", judge_template="{input}{response_a}{response_b}{x}"), r"unexpected: \['x'\]"),
        (dict(kind="critic", padding_side="right"), r"padding_side must be left"),
        (dict(kind="critic", verdicts=("[[A]]", "[[A]]")), r"two different"),
        (dict(device="tpu"), r"ModelSpec\.device"),
        (dict(name=""), r"ModelSpec\.name"),
    ],
)
def test_bad_model_specs_are_named(fields, message):
    base = dict(name="m", path="/nowhere", kind="reward")
    with pytest.raises(ConfigError, match=message):
        ModelSpec(**{**base, **fields})


def test_spec_errors_are_also_value_errors():
    with pytest.raises(ValueError):
        ModelSpec(name="m", path="p", kind="reward", bogus=1)
    assert ModelSpec.parse({"name": "m", "path": "p", "kind": "reward"}).max_length == 4096
    with pytest.raises(ConfigError, match="expected a mapping"):
        ModelSpec.parse(["m"])


def test_path_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match=r"is not a model directory \(no config.json\)"):
        load_model(ModelSpec(name="m", path=str(tmp_path), kind="reward"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(ModelSpec(name="m", path=str(tmp_path / "missing"), kind="reward"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model({"name": "m", "path": "./not/here", "kind": "reward"})


def test_a_critic_checkpoint_is_not_a_reward_model(untaught_critic_dir):
    with pytest.raises(ModelLoadError, match=r"is a causal LM checkpoint \(LlamaForCausalLM\) with no reward head"):
        load_model(ModelSpec(name="m", path=str(untaught_critic_dir), kind="reward"))


def test_a_reward_checkpoint_is_not_a_critic(reward_dir):
    with pytest.raises(ModelLoadError, match=r"is a sequence classifier .*not a causal LM; use kind='reward'"):
        load_model(ModelSpec(name="m", path=str(reward_dir("llama")), kind="critic"))


def test_unsupported_device_settings_are_config_errors(reward_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        load_model(ModelSpec(name="m", path=str(reward_dir("llama")), kind="reward", device="cuda"))
    with pytest.raises(ConfigError, match="flash_attention_2' needs a CUDA device"):
        load_model(
            ModelSpec(name="m", path=str(reward_dir("llama")), kind="reward", attn_implementation="flash_attention_2")
        )


def test_max_length_beyond_the_model_is_rejected(reward_dir):
    with pytest.raises(ConfigError, match="exceeds the model's max_position_embeddings=4096"):
        load_model(
            ModelSpec(name="m", path=str(reward_dir("llama")), kind="reward", max_length=8192, max_batch_tokens=8192)
        )


def test_every_error_class_has_one_status():
    import cluster.core.errors as errors

    classes = [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, ScoringError) and c is not ScoringError
    ]
    assert set(classes) == set(HTTP_STATUS)
    assert http_status(errors.InputTooLong("x")) == 422
    assert http_status(errors.UnknownModel("x")) == 404
    assert http_status(errors.Overloaded("x")) == 503
    assert http_status(RuntimeError("x")) == 500


def test_ray_config_yaml_is_a_valid_serve_config_for_build_app():

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from cluster.core.config import AppConfig

    raw = yaml.safe_load((REPO / "ray_config.yaml").read_text())
    schema = ServeDeploySchema(**raw)
    [app] = schema.applications
    assert app.import_path == "deployments.app:build_app"
    config = AppConfig.parse(app.args)
    reward, critic = config.models
    assert (reward.path, reward.kind, reward.dtype) == ("Skywork/Skywork-Reward-Llama-3.1-8B", "reward", "bfloat16")
    assert (critic.path, critic.kind) == ("Skywork/Skywork-Critic-Llama-3.1-8B", "critic")
    assert reward.replicas.num_gpus == 1 and critic.replicas.num_gpus == 1
    assert reward.replicas.max_replicas > reward.replicas.min_replicas  # autoscaling


def test_the_all_seed_models_config_places_every_seed_model():
    """Five seed models, each planned onto the GPUs its replica asks for (80 GB cards, the file's
    stated target), from the real architectures' shapes (empty weights: nothing is allocated)."""

    import torch
    import yaml
    from ray.serve.schema import ServeDeploySchema
    from transformers import Gemma2Config, LlamaConfig, Qwen3Config

    from cluster.core.config import AppConfig
    from cluster.engine.placement import layers_per_device, plan_placement

    raw = yaml.safe_load((REPO / "ray_config.all-seed-models.yaml").read_text())
    [app] = ServeDeploySchema(**raw).applications
    models = {m.path: m for m in AppConfig.parse(app.args).models}
    llama8b = dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    )
    shapes = {
        "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2": LlamaConfig(**llama8b),
        "Skywork/Skywork-Reward-V2-Qwen3-8B": Qwen3Config(
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
        ),
        "Skywork/Skywork-Reward-Gemma-2-27B-v0.2": Gemma2Config(
            hidden_size=4608,
            intermediate_size=36864,
            num_hidden_layers=46,
            num_attention_heads=32,
            num_key_value_heads=16,
            head_dim=128,
            vocab_size=256000,
        ),
        "Skywork/Skywork-Critic-Llama-3.1-8B": LlamaConfig(**llama8b, tie_word_embeddings=False),
        "Skywork/Skywork-Critic-Llama-3.1-70B": LlamaConfig(
            hidden_size=8192,
            intermediate_size=28672,
            num_hidden_layers=80,
            num_attention_heads=64,
            num_key_value_heads=8,
            vocab_size=128256,
            tie_word_embeddings=False,
        ),
    }
    assert set(models) == set(shapes)
    gpu = 80 * 10**9
    for path, config in shapes.items():
        served = models[path]
        assert served.replicas.num_gpus >= served.devices
        plan = plan_placement(
            config, served.kind, served.devices, torch.bfloat16, max_memory={i: gpu for i in range(served.devices)}
        )
        layers = layers_per_device(plan)
        assert sorted(i for ids in layers.values() for i in ids) == list(range(config.num_hidden_layers)), path
        assert len(layers) == served.devices, path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"models": []}, r"AppConfig\.models"),
        ({"models": [{"name": "a", "path": "p", "kind": "reward"}], "extra": 1}, r"unknown field 'extra'"),
        ({"models": [{"name": "a", "path": "p", "kind": "reward"}] * 2}, r"repeated: \['a'\]"),
        (
            {"models": [{"name": "a", "path": "p", "kind": "reward", "replicas": {"gpus": 1}}]},
            r"AppConfig\.models\[0\]: ServedModel\.replicas: ReplicaSettings: unknown field 'gpus'",
        ),
        (
            {
                "models": [
                    {"name": "a", "path": "p", "kind": "reward", "replicas": {"min_replicas": 3, "max_replicas": 2}}
                ]
            },
            r"min_replicas \(3\) > max_replicas \(2\)",
        ),
    ],
)
def test_bad_app_configs_are_named(args, message):
    from cluster.core.config import AppConfig

    with pytest.raises(ConfigError, match=message):
        AppConfig.parse(args)


def test_a_model_spread_over_n_gpus_asks_ray_for_n(tmp_path):
    """devices: N -> the replica must be given N GPUs (num_gpus >= N), and asks Ray for them."""
    from cluster.core.config import ServedModel
    from deployments.app import replica_options

    fields = {"name": "critic-70b", "path": "Skywork/Skywork-Critic-Llama-3.1-70B", "kind": "critic", "devices": 4}
    options = replica_options(ServedModel(**fields, replicas={"num_gpus": 4}))
    assert options["ray_actor_options"]["num_gpus"] == 4 and options["name"] == "critic-critic-70b"
    with pytest.raises(ConfigError, match=r"devices=4: replicas.num_gpus \(1.0\) must be >= 4"):
        ServedModel(**fields, replicas={"num_gpus": 1})
    with pytest.raises(ConfigError, match="device must be 'auto' or 'cuda'"):
        ModelSpec(name="m", path="x", kind="reward", devices=2, device="cpu")


def test_spreading_or_quantizing_without_gpus_is_a_clear_error(reward_dir):
    with pytest.raises(ConfigError, match=r"devices=2 but 0 CUDA device\(s\) are visible"):
        load_model(ModelSpec(name="m", path=str(reward_dir("llama")), kind="reward", devices=2))
    with pytest.raises(ConfigError, match="int8.*CUDA"):
        load_model(ModelSpec(name="m", path=str(reward_dir("llama")), kind="reward", quantization="int8"))
