"""Serve a model too big for one GPU as one replica: layers over several GPUs, or 8-bit weights.

A 70B critic (Skywork-Critic-Llama3.1-70B: 141 GB of bf16 weights) fits no single GPU. Either its
decoder layers are spread over the GPUs of one node (2 x 141 GB H200, 4 x 80 GB H100) with the
`device_map` that `plan_placement` computes, or its linear weights are stored in one byte each
(`quantization_config("int8" | "fp8", ...)`) so that it fits one 80 GB GPU.

The plans are computed on an empty skeleton of the model (meta tensors, nothing allocated), so they
run in a fraction of a second on a CPU-only node, for GPUs that node does not have.

How `from_pretrained` takes a plan (transformers 5.23, read in its source):
- `device_map=<dict>` needs accelerate installed: `check_and_set_device_map` raises without it. A map
  naming more than one device makes transformers call accelerate's `dispatch_model`, whose hooks move
  activations from GPU to GPU layer by layer: one GPU computes at a time, so spreading buys memory,
  not speed.
- `max_memory` is only read to compute a map from a string ("auto", "balanced", ...); next to a dict
  it is ignored, so it need not be passed.
- the int8 and fp8 quantizers refuse a dict map with "cpu" or "disk" values when they quantize while
  loading; `plan_placement` never returns one.
- a model loaded with a map must not be moved afterwards: `model.to(device)` on a dispatched model only
  logs a warning, then pulls every layer onto that one GPU.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch

from cluster.core.errors import ConfigError, ModelLoadError
from cluster.kinds import kind_of

QUANTIZATIONS = ("int8", "fp8")
QUANT_EXTRA = "pip install '.[quant]'"

# Share of each GPU's memory kept free for what is not weights. 10% is 8 GB of an 80 GB H100 and
# 14 GB of a 141 GB H200. For the 70B critic at the default max_batch_tokens=16384 a forward pass
# needs about: the MLP's intermediate tensors of one layer (16384 x 28672 x 2 bytes x 3, 2.8 GB), a
# few copies of the hidden states (16384 x 8192 x 2 bytes each, 0.27 GB), the generation KV cache
# (320 KiB a token over all 80 layers: 5.4 GB, shared by the devices in proportion to their layers),
# plus the CUDA context and cuBLAS workspace (~1 GB) and the allocator's fragmentation. It is also the
# share transformers itself keeps free on a single GPU for device_map="auto". Raise it with
# max_batch_tokens.
DEFAULT_HEADROOM = 0.10

# A decoder layer's entry in the maps we return ends in its index: "model.layers.12".
_LAYER_INDEX = re.compile(r"\.(\d+)\Z")


def plan_placement(
    config,
    kind: str,
    n_devices: int,
    dtype: torch.dtype,
    max_memory: dict[int, int] | None = None,
    headroom: float = DEFAULT_HEADROOM,
    *,
    quantization: str | None = None,
) -> dict[str, int]:
    """The `device_map` (module name -> CUDA device index) that puts the model on devices 0..n_devices-1.

    `max_memory` is each device's memory in bytes; None reads the visible CUDA devices' total memory.
    Pass it to plan for GPUs this process cannot see (a CPU-only head node, tests). `headroom` is the
    share of each device kept free for activations (see DEFAULT_HEADROOM). `quantization` ("int8",
    "fp8") plans for 1-byte linear weights, as `weights_bytes` counts them.

    The model is cut, in order, into whole pieces: the embeddings, each decoder layer, the final norm,
    the head (score / lm_head). Device 0 gets the embeddings, the last device the norm and head (a
    head tied to the embeddings stays with them), and the decoder layers are spread in order so that
    the devices' bytes are as even as possible (least sum of squared fill ratios), each device within
    its budget. Every decoder layer has its own entry ("model.layers.12"), so `layers_per_device` can
    read the map. Sizes come from accelerate (`init_empty_weights`, `compute_module_sizes`); its own
    planner (`get_balanced_memory` + `infer_auto_device_map`) is not used: it keeps room on device 0
    for a largest module it would load back from CPU, and fills each device but the last up to
    1.25 layers past an even share, so it refuses budgets that fit and leaves devices light or empty
    (8 small layers over 4 devices: 0, 4, 4, 0 layers).

    Raises ConfigError when the weights do not fit the devices (with the bytes needed and offered);
    spilling to CPU or disk is never planned.
    """
    _check_kind(kind)
    _check_quantization_name(quantization)
    if isinstance(n_devices, bool) or not isinstance(n_devices, int) or n_devices < 1:
        raise ConfigError(f"n_devices must be a positive integer, got {n_devices!r}")
    if not 0 <= headroom < 1:
        raise ConfigError(f"headroom is the share of each device kept free, in [0, 1); got {headroom!r}")
    capacity = _device_capacity(n_devices, max_memory)
    budgets = [int(capacity[device] * (1 - headroom)) for device in range(n_devices)]

    model = _skeleton(config, kind, dtype)
    one_byte = _quantized_weights(model) if quantization else {}
    needed = _param_bytes(model, one_byte)
    offered = sum(budgets)
    what = _describe(model, kind, dtype, quantization)
    devices = _describe_devices(capacity, headroom)
    if needed > offered:
        raise ConfigError(
            f"{what} needs {needed} bytes ({_gb(needed)}) of weights but {devices} offer {offered} bytes "
            f"({_gb(offered)}); {_bigger_hint(quantization)}"
        )
    if n_devices > 1 and not _decoder_layers(model):
        raise ConfigError(
            f"{type(model).__name__} does not declare which modules must stay whole (_no_split_modules), so it "
            "cannot be spread over GPUs; use n_devices=1 (with quantization if it does not fit)"
        )

    from accelerate.utils import compute_module_sizes

    sizes = compute_module_sizes(model, special_dtypes=one_byte or None)
    pieces, pinned = _pieces(model)
    piece_bytes = [sizes.get(name, 0) for name in pieces]
    for name, partner in pinned.items():  # a tied head's own tensors (a bias) go with its partner
        piece_bytes[pieces.index(partner)] += sizes.get(name, 0)
    ends = _balance(piece_bytes, budgets)
    if ends is None:
        largest = max(range(len(pieces)), key=piece_bytes.__getitem__)
        raise ConfigError(
            f"{what} needs {needed} bytes ({_gb(needed)}) of weights and {devices} offer {offered} bytes "
            f"({_gb(offered)}), but not cut into whole decoder layers (the largest piece, {pieces[largest]}, is "
            f"{piece_bytes[largest]} bytes); {_bigger_hint(quantization)}, or lower headroom"
        )
    device_map: dict[str, int] = {}
    start = 0
    for device, end in enumerate(ends):
        for name in pieces[start:end]:
            device_map[name] = device
        start = end
    for name, partner in pinned.items():
        device_map[name] = device_map[partner]
    return device_map


def layers_per_device(device_map: dict[str, int]) -> dict[int, list[int]]:
    """Decoder layer indices on each device of `device_map`, in the map's device order.

    A decoder layer is an entry whose name ends in its index ("model.layers.12"), as in every map
    `plan_placement` returns. A device holding no layer (only the embeddings, say) maps to [].
    """
    layers: dict[int, list[int]] = {}
    for name, device in device_map.items():
        on_device = layers.setdefault(device, [])
        match = _LAYER_INDEX.search(name)
        if match:
            on_device.append(int(match.group(1)))
    return {device: sorted(indices) for device, indices in layers.items()}


def weights_bytes(config, kind: str, dtype: torch.dtype, quantization: str | None = None) -> int:
    """Bytes of the model's parameters in `dtype`, counted on an empty skeleton (tied weights once).

    With quantization ("int8" or "fp8") the weight of every linear layer inside a decoder layer counts
    1 byte per parameter; embeddings, norms, biases and the head (lm_head / score) stay in `dtype`.
    That is what transformers' bitsandbytes and fbgemm quantizers convert: every nn.Linear but the
    output head. Their scales (one float per output row; < 0.1% of the bytes) are not counted, nor
    are buffers (the rotary tables: a few hundred bytes).
    """
    _check_kind(kind)
    _check_quantization_name(quantization)
    model = _skeleton(config, kind, dtype)
    return _param_bytes(model, _quantized_weights(model) if quantization else {})


def quantization_config(name: str | None, device_type: str):
    """The transformers quantization config for `from_pretrained(quantization_config=...)`, or None.

    "int8": bitsandbytes LLM.int8 (`BitsAndBytesConfig(load_in_8bit=True)`), any recent CUDA GPU.
    "fp8": fbgemm's FP8 (`FbgemmFp8Config`): weights e4m3 with a scale per row, activations quantized
    per row on the fly; compute capability 9.0 (H100, H200); the dtype must be bfloat16
    (transformers overrides any other). Both quantize a bf16 checkpoint while loading it.

    Why not `FineGrainedFP8Config`, transformers' other FP8 config: its matmuls come from the
    `kernels` package (>= 0.18.2, < 0.19 for transformers 5.23; our registry has at most 0.17.2),
    which fetches a Triton kernel from the Hugging Face Hub at the first forward pass (an offline
    node fails then, not at load), and on a GPU older than compute capability 8.9 it silently keeps
    the weights in bf16 (twice the memory planned).
    """
    if name is None:
        return None
    _check_quantization_name(name)
    device_type = getattr(device_type, "type", str(device_type).split(":")[0])
    if device_type != "cuda":
        raise ConfigError(
            f"quantization={name!r} needs a CUDA GPU; the device is {device_type!r}. Use quantization=None "
            "there, or device='cuda' on a GPU node"
        )
    if not _backend_available(name):
        if name == "int8":
            raise ConfigError(f"quantization='int8' needs the bitsandbytes package (>= 0.46.1): {QUANT_EXTRA}")
        # Not in the extra: its wheels are built for one torch version each.
        raise ConfigError(
            f"quantization='fp8' needs the fbgemm-gpu-genai package, in the build for torch {torch.__version__}: "
            "pip install fbgemm-gpu-genai (the version paired with this torch; see pytorch.org/FBGEMM)"
        )
    if name == "int8":
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_8bit=True)
    # fbgemm's kernels need Hopper; transformers would raise a bare ValueError at load time.
    if torch.cuda.is_available() and torch.cuda.get_device_capability() < (9, 0):
        major, minor = torch.cuda.get_device_capability()
        raise ConfigError(
            f"quantization='fp8' needs a GPU of compute capability 9.0 or more (H100, H200); this one is "
            f"{major}.{minor}: use quantization='int8'"
        )
    from transformers import FbgemmFp8Config

    return FbgemmFp8Config()


def _check_kind(kind: str) -> None:
    try:
        kind_of(kind)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _check_quantization_name(name: str | None) -> None:
    if name is not None and name not in QUANTIZATIONS:
        raise ConfigError(f"quantization must be None, 'int8' or 'fp8'; got {name!r}")


def _backend_available(name: str) -> bool:
    """Whether the package behind `name` is installed: transformers' own checks, the ones its
    quantizers make at load time (versions included)."""
    from transformers.utils import is_bitsandbytes_available, is_fbgemm_gpu_available

    return is_bitsandbytes_available() if name == "int8" else is_fbgemm_gpu_available()


def _device_capacity(n_devices: int, max_memory: dict[int, int] | None) -> dict[int, int]:
    if max_memory is None:
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if visible < n_devices:
            raise ConfigError(
                f"n_devices={n_devices} but {visible} CUDA device(s) are visible; run where {n_devices} GPUs are "
                "visible, or pass max_memory={0: bytes, 1: bytes, ...} to plan for GPUs this process cannot see"
            )
        # Total, not free, memory: a replica's GPUs are its own (Ray hands them out whole), and free
        # memory would need a CUDA context on each and would count what a replica being replaced
        # has not yet released.
        return {i: torch.cuda.get_device_properties(i).total_memory for i in range(n_devices)}
    if sorted(max_memory) != list(range(n_devices)):
        raise ConfigError(
            f"max_memory must give the memory of devices 0..{n_devices - 1} (n_devices={n_devices}); "
            f"it has keys {sorted(max_memory, key=str)}"
        )
    for device, total in max_memory.items():
        if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
            raise ConfigError(f"max_memory[{device}] must be a positive number of bytes; got {total!r}")
    return dict(max_memory)


# Skeletons by (config class, config JSON, kind, dtype): building the 70B one takes ~0.5 s of Python,
# and a plan, its weights_bytes and a retry with other devices all want the same one. Meta tensors
# hold no memory, so a few cost next to nothing; nothing here modifies a skeleton.
_SKELETONS: dict[tuple[str, str, str, str], torch.nn.Module] = {}
_SKELETONS_KEPT = 4


def _skeleton(config, kind: str, dtype: torch.dtype) -> torch.nn.Module:
    key = (type(config).__qualname__, config.to_json_string(use_diff=False), kind, str(dtype))
    if key not in _SKELETONS:
        while len(_SKELETONS) >= _SKELETONS_KEPT:
            del _SKELETONS[next(iter(_SKELETONS))]
        _SKELETONS[key] = _build_skeleton(config, kind, dtype)
    return _SKELETONS[key]


def _build_skeleton(config, kind: str, dtype: torch.dtype) -> torch.nn.Module:
    """The model of `kind` built from `config` with meta tensors: parameter shapes and dtypes, no memory."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    # a skeleton has a sequence classifier's head or an LM head (a prm's token classifier: as small)
    auto_cls = AutoModelForSequenceClassification if kind_of(kind).head != "next_token" else AutoModelForCausalLM
    try:
        # from_config writes into the config it is given (dtype, attention implementation): keep the
        # caller's clean for the from_pretrained that follows.
        with init_empty_weights():
            model = auto_cls.from_config(copy.deepcopy(config), dtype=dtype)
    except Exception as err:
        raise ModelLoadError(
            f"cannot build a {kind} model ({auto_cls.__name__}) from a {getattr(config, 'model_type', '?')!r} "
            f"config: {err}"
        ) from None
    # init_empty_weights re-creates each parameter assigned to a module, which unties a head tied to
    # the embeddings (lm_head.weight stops being embed_tokens.weight). Tie them again, so they are
    # counted once and kept on one device, as from_pretrained will have them.
    model.tie_weights()
    return model


def _decoder_layers(model: torch.nn.Module) -> list[str]:
    """Names of the modules that must stay whole on one device: the decoder layers."""
    classes = set(getattr(model, "_no_split_modules", None) or ())
    return [name for name, module in model.named_modules() if type(module).__name__ in classes]


def _quantized_weights(model: torch.nn.Module) -> dict[str, torch.dtype]:
    """Weight name -> torch.int8 (1 byte) for the linear layers inside decoder layers."""
    one_byte = {}
    for layer_name in _decoder_layers(model):
        for name, module in model.get_submodule(layer_name).named_modules():
            if isinstance(module, torch.nn.Linear):
                one_byte[f"{layer_name}.{name}.weight"] = torch.int8
    return one_byte


def _param_bytes(model: torch.nn.Module, one_byte: dict[str, Any]) -> int:
    # named_parameters() lists a tied parameter once.
    return sum(p.numel() * (1 if name in one_byte else p.element_size()) for name, p in model.named_parameters())


def _pieces(model: torch.nn.Module) -> tuple[list[str], dict[str, str]]:
    """The model cut into what is placed whole, in registration order: each decoder layer, and each
    module or tensor beside the path down to them (embeddings, final norm, rotary tables, head).

    Returns the pieces to place and, apart, the pieces tied to an earlier one (a head sharing the
    embeddings' weight), each with that partner: they must sit on its device.
    """
    ancestors = set()
    for layer in _decoder_layers(model):
        parts = layer.split(".")
        ancestors.update(".".join(parts[:i]) for i in range(len(parts)))
    found: list[tuple[str, Any]] = []

    def walk(name: str, module: torch.nn.Module) -> None:
        if name not in ancestors:
            found.append((name, module))
            return
        prefix = f"{name}." if name else ""
        found.extend((prefix + n, t) for n, t in module.named_parameters(recurse=False))
        found.extend((prefix + n, t) for n, t in module.named_buffers(recurse=False))
        for child, submodule in module.named_children():
            walk(prefix + child, submodule)

    walk("", model)
    owner: dict[int, str] = {}
    pieces, pinned = [], {}
    for name, piece in found:
        if isinstance(piece, torch.Tensor):
            tensors = [piece]
        else:
            tensors = [t for _, t in piece.named_parameters(remove_duplicate=False)]
        partner = next((owner[id(t)] for t in tensors if id(t) in owner), None)
        if partner is not None:
            pinned[name] = partner
            continue
        owner.update((id(t), name) for t in tensors)
        pieces.append(name)
    return pieces, pinned


def _balance(sizes: list[int], budgets: list[int]) -> list[int] | None:
    """Cut the ordered piece `sizes` into len(budgets) consecutive groups, one a device, the first and
    the last group not empty, each within its device's budget, with the least sum of squared fill
    ratios (sum of (bytes / budget) ** 2: an even spread, by bytes). Returns the end index of each
    group, or None when no cut fits.

    Exact dynamic programme: cost[d][i] is the least cost of pieces[:i] on devices 0..d, O(devices x
    pieces^2) steps, well under a second for 80 layers on 8 devices.
    """
    n, k = len(budgets), len(sizes)
    prefix = [0]
    for size in sizes:
        prefix.append(prefix[-1] + size)
    inf = float("inf")
    cost = [[inf] * (k + 1) for _ in range(n)]
    cut = [[0] * (k + 1) for _ in range(n)]
    for i in range(1, k + 1):
        if prefix[i] <= budgets[0]:
            cost[0][i] = (prefix[i] / budgets[0]) ** 2
    for d in range(1, n):
        last = d == n - 1
        for i in [k] if last else range(k + 1):
            # j: where device d's group starts; the last device's group must hold the last piece.
            for j in range(i - 1 if last else i, -1, -1):
                load = prefix[i] - prefix[j]
                if load > budgets[d]:
                    break
                candidate = cost[d - 1][j] + (load / budgets[d]) ** 2
                if candidate < cost[d][i]:
                    cost[d][i], cut[d][i] = candidate, j
    if cost[n - 1][k] == inf:
        return None
    ends = [k]
    for d in range(n - 1, 0, -1):
        ends.append(cut[d][ends[-1]])
    return ends[::-1]


def _describe(model: torch.nn.Module, kind: str, dtype: torch.dtype, quantization: str | None) -> str:
    dtype_name = str(dtype).removeprefix("torch.")
    weights = f"{quantization} linear weights, {dtype_name} elsewhere" if quantization else dtype_name
    return f"the {kind} model {type(model).__name__} in {weights}"


def _describe_devices(capacity: dict[int, int], headroom: float) -> str:
    sizes = ", ".join(f"{device}: {_gb(total)}" for device, total in capacity.items())
    return f"{len(capacity)} device(s) ({sizes}) less {headroom:.0%} headroom"


def _bigger_hint(quantization: str | None) -> str:
    if quantization:
        return "use more GPUs (n_devices)"
    return "use more GPUs (n_devices) or 8-bit weights (quantization='int8' or 'fp8')"


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"
