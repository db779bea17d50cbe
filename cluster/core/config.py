"""ModelSpec: what to load and how to run it (pydantic at the edge, unknown keys rejected)."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cluster.core.errors import ConfigError, location
from cluster.kinds import KINDS as KINDS_BY_NAME
from cluster.kinds import NAMES, kind_of

KINDS = NAMES
FIXED_PADDING = {
    "left": "a {kind} reads the last position and generates: padding_side must be left",
    "right": "a {kind} reads every step of a right-padded batch: padding_side must be auto or right",
}
STEP_AGGREGATES = ("min", "last", "mean", "product")
StepAggregate = Literal["min", "last", "mean", "product"]


def format_validation_error(err: ValidationError, what: str) -> str:
    """One line per problem, naming the field as every message does: `AppConfig.models[0].dtype: ...`."""
    lines = []
    for e in err.errors():
        # a discriminated union's member (`models[0].reward.dtype`) is not part of the body's shape
        parts = e["loc"]
        loc = location([p for i, p in enumerate(parts) if not (p in NAMES and i and isinstance(parts[i - 1], int))])
        # the one discriminated union is a config's served models: its errors read as a ServedModel's
        if e["type"] == "union_tag_invalid":
            lines.append(
                f"{what}.{loc}: ServedModel.kind: Input should be "
                f"{', '.join(repr(n) for n in NAMES[:-1])} or {NAMES[-1]!r}"
            )
        elif e["type"] == "union_tag_not_found":
            lines.append(f"{what}.{loc}: ServedModel.kind: Field required")
        elif e["type"] == "extra_forbidden":
            lines.append(f"{what}: unknown field '{loc}'")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{what}{'' if loc.startswith('[') else '.'}{loc}: {msg}" if loc else f"{what}: {msg}")
    return "; ".join(lines)


def deployment_name(kind: str, name: str) -> str:
    """The Serve deployment that serves model `name` (of kind 'reward', 'critic', 'prm' or 'pointwise')."""
    return f"{kind}-{name}".replace("/", "_").replace(":", "_")


class StrictModel(BaseModel):
    """Pydantic model that rejects unknown keys and raises ConfigError with field-named messages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(
                format_validation_error(err, getattr(type(self), "error_name", type(self).__name__))
            ) from None

    @classmethod
    def parse(cls, data: Any):
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
        return cls(**data)


class ModelSpec(StrictModel):
    """One reward model, critic (pairwise judge), process reward model (per-step rewards) or
    pointwise judge (a rating on a scale).

    `path` is a hub id or a local directory written by `save_pretrained`. Defaults follow the model
    cards: raw logits, bf16 on GPU (fp32 on CPU), left truncation that keeps the end of the response.
    """

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    path: str = Field(min_length=1)
    kind: Literal[NAMES]
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = "auto"
    max_length: int = Field(4096, ge=8, description="tokens per item, BOS included")
    max_batch_tokens: int = Field(16384, ge=8, description="padded tokens per forward pass (longest item x batch size)")
    max_batch_size: int = Field(256, ge=1)
    truncation: Literal["left", "error"] = "left"
    padding_side: Literal["auto", "left", "right"] = "auto"
    # items that start with the same tokens (n responses to a prompt, a debiased judgement's two
    # orders) compute those tokens once; scores stay the card's (fp32, within 1e-4)
    share_prefixes: bool = True
    trust_remote_code: bool = False
    # where the weights live: one device, or `devices` GPUs with the layers balanced over them (a
    # 70B model in bf16 is ~141 GB); 8-bit / FP8 weights through transformers' quantization configs
    devices: int = Field(1, ge=1, le=64, description="GPUs one model replica spans")
    quantization: Literal["int8", "fp8"] | None = None
    # each kind's own fields: cluster/kinds/<kind>.py (`ModelSpec(kind=...)` builds that kind's class)

    _by_kind: ClassVar[dict[str, type]] = {}
    error_name: ClassVar[str] = "ModelSpec"

    @classmethod
    def of_kind(cls, kind: str) -> type[ModelSpec]:
        """The class `cls(kind=kind, ...)` builds: the shared fields and that kind's own."""
        return cls.__dict__["_by_kind"][kind_of(kind).name]

    def __new__(cls, *args: Any, **data: Any):
        concrete = cls.__dict__.get("_by_kind", {}).get(data.get("kind"))
        return super().__new__(concrete or cls)

    @model_validator(mode="before")
    @classmethod
    def _other_kinds_fields(cls, data: Any) -> Any:
        """A field of another kind set to other than its default is a mistake (it would be ignored): name
        it. Its default is dropped (a full dump of an older, all-kinds spec loads again)."""
        kind = KINDS_BY_NAME.get(data.get("kind")) if isinstance(data, dict) else None
        if kind is None or cls.__dict__.get("_by_kind"):  # not yet a kind's class: the kind's error comes
            return data
        kept, misplaced = {}, []
        for key, value in data.items():
            owners = [k for k in KINDS_BY_NAME.values() if key in k.fields]
            if key in cls.model_fields or not owners:
                kept[key] = value
            elif value != owners[0].spec_fields.model_fields[key].get_default(call_default_factory=True):
                if key in kind.refused:
                    raise ValueError(kind.refused[key])
                misplaced.append((key, owners))
        if misplaced:
            raise ValueError(
                "; ".join(f"{f} is for kind {' or '.join(repr(k.name) for k in owners)}" for f, owners in misplaced)
                + f", not {kind.name!r}"
            )
        return kept

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.max_batch_tokens < self.max_length:
            raise ValueError(
                f"max_batch_tokens ({self.max_batch_tokens}) must be >= max_length "
                f"({self.max_length}), or the longest item could never be scored"
            )
        if self.devices > 1 and self.device not in ("auto", "cuda"):
            raise ValueError(
                f"devices={self.devices} spreads the model over several GPUs; device must be "
                f"'auto' or 'cuda', got {self.device!r}"
            )
        kind = kind_of(self)
        if kind.fixed_padding and self.padding_side not in ("auto", kind.padding_side):
            raise ValueError(FIXED_PADDING[kind.padding_side].format(kind=kind.name))
        kind.check(self)
        return self

    @property
    def resolved_padding_side(self) -> str:
        if self.padding_side != "auto":
            return self.padding_side
        return kind_of(self).padding_side


# ---------------------------------------------------------------- the Serve app (deployments/)


# a replica's cross-request batching, live-tunable (user_config); the replica's decorators start here
BATCH_MAX_TOKENS = 32768
BATCH_WAIT_TIMEOUT_S = 0.005


class ReplicaSettings(StrictModel):
    """How one model is deployed: Ray resources, autoscaling, backpressure, batching."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(4.0, gt=0)
    num_gpus: float = Field(0.0, ge=0, description="1 pins one replica per GPU")
    num_cpus: float = Field(1.0, ge=0)
    max_ongoing_requests: int = Field(64, ge=1, description="requests a replica holds at once (caps a batch)")
    max_queued_requests: int = Field(
        256,
        ge=-1,
        description="calls Serve queues per caller beyond what the replicas "
        "hold; the ingress keeps at most that many waiting and queues the rest itself "
        "(-1: unbounded)",
    )

    def window(self) -> int:
        """Calls one caller may have in flight without meeting Serve's back-pressure: what the
        replicas hold at most, plus the queue Serve keeps for that caller."""
        held = self.max_ongoing_requests * self.max_replicas
        return held + (self.max_queued_requests if self.max_queued_requests >= 0 else held)

    # live-tunable (user_config -> reconfigure): cross-request batching
    batch_max_tokens: int = Field(BATCH_MAX_TOKENS, ge=1, description="tokens gathered across requests per batch")
    batch_wait_timeout_s: float = Field(BATCH_WAIT_TIMEOUT_S, ge=0, le=10)
    cross_request_batching: bool = Field(True, description="false: one forward per request (baseline)")

    @model_validator(mode="after")
    def _check(self) -> ReplicaSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        return self

    def user_config(self) -> dict[str, Any]:
        return {"batch_max_tokens": self.batch_max_tokens, "batch_wait_timeout_s": self.batch_wait_timeout_s}


# ---------------------------------------------------------------- reward shaping (served models)
# What RL trainers ask for, per served model: normalization with a stored mean/std (`python -m
# cluster calibrate` measures them on a corpus with the Ray Data pipeline), optional clipping, and
# ensembles (a weighted mean of several reward models behind one name). Raw logits stay the
# default: a model without `shaping` is served exactly as its card says.


class Normalize(StrictModel):
    mean: float
    std: float = Field(gt=0)


class Shaping(StrictModel):
    """r -> (r - mean) / std, then clipped to [low, high]; each step optional."""

    normalize: Normalize | None = None
    clip: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _check(self) -> Shaping:
        if self.clip is not None and not self.clip[0] < self.clip[1]:
            raise ValueError(f"clip: the low bound must be below the high bound, got {list(self.clip)}")
        return self

    def apply(self, scores: Sequence[float]) -> list[float]:
        out = list(scores)
        if self.normalize is not None:
            out = [(s - self.normalize.mean) / self.normalize.std for s in out]
        if self.clip is not None:
            low, high = self.clip
            out = [min(high, max(low, s)) for s in out]
        return out


class EnsembleMember(StrictModel):
    model: str = Field(min_length=1)
    weight: float = Field(1.0, gt=0)


class Ensemble(StrictModel):
    """Several served reward models behind one name: each member's (shaped) reward, combined as a
    weighted mean (weights are relative), then this ensemble's own shaping."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    members: list[EnsembleMember] = Field(min_length=1)
    shaping: Shaping | None = None

    kind: Literal["reward"] = "reward"  # routes accept an ensemble wherever they accept a reward model

    @model_validator(mode="after")
    def _check(self) -> Ensemble:
        names = [m.model for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"ensemble '{self.name}': a member is listed twice: {names}")
        return self

    def combine(self, member_scores: Sequence[Sequence[float]]) -> list[float]:
        total = sum(m.weight for m in self.members)
        mixed = [
            sum(m.weight * scores[i] for m, scores in zip(self.members, member_scores)) / total
            for i in range(len(member_scores[0]))
        ]
        return self.shaping.apply(mixed) if self.shaping else mixed


class ServedModel(ModelSpec):
    """A ModelSpec plus how to deploy it."""

    error_name: ClassVar[str] = "ServedModel"

    replicas: ReplicaSettings = ReplicaSettings()
    shaping: Shaping | None = Field(None, description="reward models: normalize/clip what the routes return")
    aliases: list[Annotated[str, Field(min_length=1, max_length=1024)]] = Field(
        default_factory=list,
        description="other names requests may use (e.g. the path or hub id a client's "
        "config names); the model also answers to its `path`",
    )

    @model_validator(mode="after")
    def _fits(self) -> ServedModel:
        if self.shaping is not None and not kind_of(self).scalar_reward:
            raise ValueError("shaping applies to reward models only")
        if self.devices > 1 and self.replicas.num_gpus < self.devices:
            raise ValueError(
                f"devices={self.devices}: replicas.num_gpus ({self.replicas.num_gpus}) must be >= "
                f"{self.devices}, so that Ray gives each replica the GPUs its layers are spread over"
            )
        if self.replicas.batch_max_tokens < self.max_length:
            raise ValueError(
                f"replicas.batch_max_tokens ({self.replicas.batch_max_tokens}) must be >= "
                f"max_length ({self.max_length})"
            )
        return self

    def spec(self) -> ModelSpec:
        return ModelSpec(**self.model_dump(exclude={"replicas", "shaping", "aliases"}))


class TokenizerSettings(StrictModel):
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(2, ge=1)
    num_cpus: float = Field(1.0, ge=0)


class IngressSettings(StrictModel):
    """The HTTP ingress (routes, auth, gathering of concurrent requests): CPU only, autoscaled on
    the requests each replica holds, as the tokenizer is. Each ingress replica gathers the
    requests it holds into shared flows (one tokenizer call per model, then the replica calls)."""

    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(128.0, gt=0, description="requests held per replica the autoscaler aims at")
    num_cpus: float = Field(0.0, ge=0)
    max_ongoing_requests: int = Field(1024, ge=1, description="requests one ingress replica holds at once")
    gather_max_requests: int = Field(256, ge=1, description="requests gathered into one flow at most")
    gather_max_flows: int = Field(
        2, ge=1, description="flows in flight per ingress replica; more requests queue and join the next flow"
    )
    gather_wait_timeout_s: float = Field(
        0.0,
        ge=0,
        le=1,
        description="how long a flow that is not full waits for "
        "more requests before it starts (0: it starts at once; under load the "
        "queue fills while the flows in flight run)",
    )
    admission_timeout_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="how long a request's call may wait for a "
        "model replica to take it (a request larger than the replicas hold at once "
        "is fed to them as they free up); then 503 naming this limit",
    )
    fast_path: bool = Field(
        True,
        description="false: the per-request path before issue 13 (@serve.batch of 64, "
        "2 ms wait, 4 flows), kept as bench-serve's baseline",
    )

    @model_validator(mode="after")
    def _check(self) -> IngressSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        return self


class AppConfig(StrictModel):
    """`build_app(args)`: what `ray_config.yaml` passes as `args`."""

    models: list[AnyServedModel] = Field(min_length=1)
    api_keys: list[Annotated[str, Field(min_length=1, pattern=r"\S")]] = Field(
        default_factory=list,
        description="a key or 'sha256:<hex digest of the key>' (keeps the key itself out of "
        "the config Serve stores); also from api_keys_file, SCORING_API_KEYS (comma-separated) and "
        "SCORING_API_KEYS_FILE in the environment of the cluster's nodes (see api_key_digests)",
    )
    api_keys_file: str | None = Field(
        None,
        min_length=1,
        description="a file of keys, one per line (a key or "
        "sha256:<hex>; # comments), read where the ingress runs: present on every node",
    )
    docs: bool = Field(
        False, description="serve /docs, /redoc and /openapi.json (behind the API key, as every route); off by default"
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="the whole request body must arrive within this; "
        "a slower one is answered 408 and its connection slot freed",
    )
    trusted_networks: list[str] = Field(
        default_factory=list, description="client networks (CIDRs, e.g. 10.0.0.0/8) whose requests need no API key"
    )
    max_items_per_request: int = Field(4096, ge=1)
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    tokenizer: TokenizerSettings = TokenizerSettings()
    ingress: IngressSettings = IngressSettings()
    ensembles: list[Ensemble] = Field(default_factory=list, description="reward models combined under one name")

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if key.startswith("sha256:") and not re.fullmatch(r"[0-9a-fA-F]{64}", key[7:]):
                raise ValueError(
                    "api_keys: a 'sha256:' key must be followed by the 64 hex digits of the key's SHA-256 digest"
                )
        return keys

    @field_validator("trusted_networks")
    @classmethod
    def _networks(cls, networks: list[str]) -> list[str]:
        for net in networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_networks: {net!r} is not a network (CIDR such as 10.0.0.0/8 or an address)"
                ) from None
        return networks

    @model_validator(mode="after")
    def _check(self) -> AppConfig:
        names = [m.name for m in self.models] + [e.name for e in self.ensembles]
        names += [a for m in self.models for a in m.aliases]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"model and ensemble names and aliases must be unique; repeated: {duplicated}")
        kinds = {m.name: m.kind for m in self.models}
        for ensemble in self.ensembles:
            for member in ensemble.members:
                if kinds.get(member.model) != "reward":
                    problem = "is not served here" if member.model not in kinds else "is a critic"
                    raise ValueError(
                        f"ensemble '{ensemble.name}': member '{member.model}' {problem}; "
                        "members must be reward models listed under models"
                    )
        return self

    def default_model(self, kind: str) -> ServedModel | None:
        return next((m for m in self.models if m.kind == kind), None)


KEYS_ENV, KEYS_FILE_ENV = "SCORING_API_KEYS", "SCORING_API_KEYS_FILE"


def key_digest(key: str) -> str:
    """A key as 'sha256:<hex>' (a digest given so stays as it is)."""
    return key.lower() if key.startswith("sha256:") else "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _read_key_file(path: str, where: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except OSError as err:
        raise ConfigError(
            f"{where}: cannot read the API key file {path!r} ({err.strerror or err}); it must exist "
            "where the ingress runs (on every node of a cluster)"
        ) from None
    keys = [line for line in lines if line and not line.startswith("#")]
    if not keys:
        raise ConfigError(
            f"{where}: the API key file {path!r} holds no key; an empty key file would leave the app open"
        )
    return keys


def api_key_digests(config: AppConfig, environ: Mapping[str, str]) -> list[str]:
    """Every accepted key as 'sha256:<hex>', from the config, its key file, and the environment
    where this runs (the ingress replica: the environment of the `ray start` that started its node,
    not of the shell that ran `serve run`). A source that is set but holds no key is an error, never
    an open app."""
    keys = list(config.api_keys)
    if config.api_keys_file:
        keys += _read_key_file(config.api_keys_file, "api_keys_file")
    if environ.get(KEYS_ENV) is not None:
        env_keys = [k.strip() for k in environ[KEYS_ENV].split(",") if k.strip()]
        if not env_keys:
            raise ConfigError(f"{KEYS_ENV} is set but holds no key ({environ[KEYS_ENV]!r}); unset it or give keys")
        keys += env_keys
    if environ.get(KEYS_FILE_ENV):
        keys += _read_key_file(environ[KEYS_FILE_ENV], KEYS_FILE_ENV)
    for key in keys:
        if key.startswith("sha256:") and not re.fullmatch(r"[0-9a-fA-F]{64}", key[7:]):
            raise ConfigError(
                "API keys: a 'sha256:' key must be followed by the 64 hex digits of the key's SHA-256 digest"
            )
    return list(dict.fromkeys(key_digest(k) for k in keys))


# ---------------------------------------------------------------- each kind's classes
# `ModelSpec(kind=...)` and `ServedModel(kind=...)` build these: the shared fields plus the kind's
# own (cluster/kinds/<kind>.py); a config's `models` list is their union, told apart by `kind`.


def _kind_class(base: type, kind: Any) -> type:
    """`base` with `kind`'s own fields and `kind: Literal[<its name>]` (e.g. CriticSpec, ServedCritic)."""
    name = kind.name.title() + ("Spec" if base is ModelSpec else base.__name__)
    namespace = {"__annotations__": {"kind": Literal[kind.name]}, "__module__": __name__, "__qualname__": name}
    return type(name, (base, kind.spec_fields), namespace)


ModelSpec._by_kind = {name: _kind_class(ModelSpec, kind) for name, kind in KINDS_BY_NAME.items()}
ServedModel._by_kind = {name: _kind_class(ServedModel, kind) for name, kind in KINDS_BY_NAME.items()}
AnyServedModel = Annotated[Union[tuple(ServedModel._by_kind.values())], Field(discriminator="kind")]  # noqa: UP007
AppConfig.model_rebuild()
