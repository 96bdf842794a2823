"""LoRA adapters on an Omni thinker's language model: which modules carry them, and their merged weights.

verl 0.9.1 builds the adapters itself (``FSDPEngine._build_lora_module``, PEFT's ``LoraConfig`` from
``actor_rollout_ref.model.lora_rank`` / ``lora_alpha`` / ``target_modules`` / ``exclude_modules``). verl's default
``target_modules="all-linear"`` would also adapt every linear layer of the audio and vision encoders; on a thinker
the plugin reads it as the language model's linear layers only (attention and dense-MLP projections of the decoder
layers; the encoders, the MoE router and the output head stay frozen). An explicit list or regex is used as given,
and verl's default ``exclude_modules`` (None) becomes the encoders, so that a list such as ``[q_proj, v_proj]`` does
not reach the audio encoder's own ``q_proj``; set ``exclude_modules`` to adapt an encoder.

A LoRA module ``W x + s * B (A x)`` equals the plain module with ``W' = W + s * B @ A`` (PEFT's merge), with
``s = lora_alpha / r`` (``lora_alpha / sqrt(r)`` under rsLoRA). The hf rollout serves adapters that way, and the
export writes merged weights (docs/lora.md).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

#: verl's default ``target_modules`` (PEFT: every linear layer but the output head)
ALL_LINEAR = "all-linear"
#: the thinker's language-model linear layers (both families' decoder layers name them so; an MoE layer's router
#: ``mlp.gate`` and its fused experts do not match). PEFT full-matches a string target against module names.
LANGUAGE_MODEL_LINEAR = (
    r"model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
)
#: the thinker's encoders (and their merger / projection layers): never adapted unless ``exclude_modules`` is set
ENCODERS = r"(audio_tower|visual)\..*"
#: the prefix PEFT gives the wrapped model's entries (``PeftModel.base_model.model``)
PEFT_PREFIX = "base_model.model."
_ADAPTER = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(\.[^.]+)?\.weight$")


def thinker_target_modules(target_modules: Any) -> Any:
    """``target_modules`` for an Omni thinker: verl's default ``"all-linear"`` becomes the language model's linear
    layers (:data:`LANGUAGE_MODEL_LINEAR`); anything else is the user's choice, returned unchanged."""
    return LANGUAGE_MODEL_LINEAR if target_modules == ALL_LINEAR else target_modules


def thinker_exclude_modules(exclude_modules: Any) -> Any:
    """``exclude_modules`` for an Omni thinker: verl's default (None) becomes the encoders (:data:`ENCODERS`), so that
    a list target such as ``[q_proj, v_proj]`` adapts the language model only; a value the user set is kept."""
    return ENCODERS if exclude_modules is None else exclude_modules


def encoder_adapters(names: Iterable[str]) -> list[str]:
    """The modules of adapter entries that sit in an encoder (vLLM applies adapters to the language model only)."""
    modules = {base_name(m["module"]) for m in map(_ADAPTER.match, names) if m is not None}
    return sorted(m for m in modules if re.fullmatch(ENCODERS, m))


def lora_scaling(peft_config: Mapping[str, Any]) -> float:
    """``s`` of ``W + s * B @ A`` for a PEFT LoRA config (``to_dict()`` form): ``lora_alpha / r``, or
    ``lora_alpha / sqrt(r)`` with ``use_rslora``. Per-module rank or alpha patterns and DoRA are refused: one scale
    for every module is what verl configures."""
    for key in ("rank_pattern", "alpha_pattern"):
        if peft_config.get(key):
            raise ValueError(f"LoRA config {key}={peft_config[key]!r}: per-module ranks or alphas are not supported")
    if peft_config.get("use_dora"):
        raise ValueError("LoRA config use_dora=True: DoRA adapters cannot be merged as W + s * B @ A")
    r = int(peft_config.get("r") or 0)
    if r <= 0:
        raise ValueError(f"LoRA config r={peft_config.get('r')!r}: expected a rank >= 1")
    alpha = float(peft_config.get("lora_alpha", r))
    return alpha / math.sqrt(r) if peft_config.get("use_rslora") else alpha / r


def base_name(name: str) -> str:
    """A PEFT model's entry name as the plain model names it: no ``base_model.model.`` prefix, no ``.base_layer``."""
    return name.removeprefix(PEFT_PREFIX).replace(".base_layer", "")


def is_adapter_name(name: str) -> bool:
    """Whether a state-dict entry is a LoRA adapter matrix (``...lora_A.weight`` / ``...lora_B.default.weight``)."""
    return _ADAPTER.match(name) is not None


def adapter_pairs(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Adapter matrices grouped by the plain module name: ``{module: (A (r, in), B (out, r))}``.

    Names as PEFT writes them, with or without the adapter name (``lora_A.weight``, ``lora_A.default.weight``) and
    the ``base_model.model.`` prefix. A module with only one of A and B, or another entry, is an error."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        match = _ADAPTER.match(name)
        if match is None:
            raise ValueError(f"LoRA adapter entry {name!r}: expected <module>.lora_A.weight or <module>.lora_B.weight")
        module = base_name(match["module"])
        parts.setdefault(module, {})[match["part"]] = tensor
    incomplete = sorted(m for m, p in parts.items() if set(p) != {"A", "B"})
    if incomplete:
        raise ValueError(f"LoRA adapter: modules without both lora_A and lora_B: {incomplete[:5]}")
    return {module: (p["A"], p["B"]) for module, p in parts.items()}


def lora_delta(a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """``s * B @ A``: A ``(r, in)``, B ``(out, r)`` -> ``(out, in)``, computed in float32 or wider."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return scaling * (b.to(dtype) @ a.to(dtype))


def merged_weights(
    base: Mapping[str, torch.Tensor], adapters: Mapping[str, torch.Tensor], peft_config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """``{module.weight: W + s * B @ A}`` for every adapted module, in each base weight's dtype.

    ``base`` holds the plain module's weights by plain name (``model.layers.0.self_attn.q_proj.weight``);
    ``adapters`` the adapter matrices by PEFT name. An adapter whose module has no base weight is an error."""
    scaling = lora_scaling(peft_config)
    out = {}
    for module, (a, b) in adapter_pairs(adapters).items():
        key = f"{module}.weight"
        if key not in base:
            raise KeyError(f"LoRA adapter for {module!r}: the model has no weight {key!r}")
        weight = base[key]
        if (b.shape[0], a.shape[1]) != tuple(weight.shape):
            raise ValueError(f"{module}: adapter shape {(b.shape[0], a.shape[1])} != weight {tuple(weight.shape)}")
        out[key] = (weight.to(torch.promote_types(weight.dtype, torch.float32)) + lora_delta(a, b, scaling)).to(
            weight.dtype
        )
    return out


def merge_peft_state(state: Mapping[str, torch.Tensor], peft_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A PEFT model's full state dict (``...q_proj.base_layer.weight`` and ``...q_proj.lora_A.default.weight``) as
    the plain model's, adapters merged into their weights."""
    adapters = {name: tensor for name, tensor in state.items() if is_adapter_name(name)}
    plain = {base_name(name): tensor for name, tensor in state.items() if name not in adapters}
    if adapters:
        plain.update(merged_weights(plain, adapters, peft_config))
    return plain


def is_peft_state(names: Iterable[str]) -> bool:
    """Whether state-dict names are a PEFT model's (the prefix on every entry)."""
    names = list(names)
    return bool(names) and all(name.startswith(PEFT_PREFIX) for name in names)


__all__ = [
    "ALL_LINEAR",
    "LANGUAGE_MODEL_LINEAR",
    "PEFT_PREFIX",
    "ENCODERS",
    "adapter_pairs",
    "encoder_adapters",
    "base_name",
    "is_adapter_name",
    "is_peft_state",
    "lora_delta",
    "lora_scaling",
    "merge_peft_state",
    "merged_weights",
    "thinker_exclude_modules",
    "thinker_target_modules",
]
