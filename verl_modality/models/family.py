"""The model-family interface: what the plugin must know of an Omni model family, and the registry of families.

verl 0.9.1 and this plugin's code above ``models/`` never name a family. They ask this registry for the family of a
config (:func:`family_of`) or a tokenizer (:func:`family_of_tokenizer`) and use the answer's attributes and methods.
One module per family (``models/<family>.py``) subclasses :class:`OmniFamily` and registers it with
:func:`register_family`; :data:`FAMILY_MODULES` lists those modules, the one place a new family is added.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

import torch

from verl_modality.models.lora import PEFT_PREFIX

#: the modules that register a family, imported on first use of the registry
FAMILY_MODULES = ("verl_modality.models.qwen2_5_omni", "verl_modality.models.qwen3_omni")

_FAMILIES: dict[str, OmniFamily] = {}


class UnknownFamilyError(ValueError):
    """A checkpoint, config or tokenizer of no known Omni family."""


class OmniFamily:
    """One Omni model family: thinker + talker checkpoints whose thinker the plugin trains.

    Subclasses fill the class attributes; every method works from them.
    """

    name: ClassVar[str]  # registry key and ``make-tiny-model --family`` value
    title: ClassVar[str]  # how people write it
    full_model_type: ClassVar[str]  # ``model_type`` of the full checkpoint's config
    thinker_model_type: ClassVar[str]  # ``model_type`` of its thinker config
    full_architectures: ClassVar[tuple[str, ...]]  # what hub configs declare (the name vLLM registers first)
    thinker_class_name: ClassVar[str]  # transformers class of the thinker
    processor_class_name: ClassVar[str]  # transformers class of the processor
    modeling_module: ClassVar[str]  # transformers module of the thinker (RoPE helpers, attention)
    rope_owner_class: ClassVar[str]  # class in ``modeling_module`` whose ``get_rope_index`` the processor borrows
    #: leaf layers of the three stacks (audio encoder, vision blocks, decoder); wrapping these, not the towers, is what
    #: verl's FSDP2 engine needs (a thinker's default ``_no_split_modules`` names the towers)
    fsdp_layer_classes: ClassVar[tuple[str, ...]]
    placeholder_tokens: ClassVar[Mapping[str, str]]  # {"audio": ..., "image": ..., "video": ...}
    #: tokens the policy must never sample: each pairs with a media item in the model's bookkeeping
    never_sample_tokens: ClassVar[tuple[str, ...]]
    hub_ids: ClassVar[tuple[str, ...]]  # checkpoints the real loading path serves
    moe: ClassVar[bool] = False  # mixture-of-experts text decoder (fused experts in transformers 5)
    #: whether vLLM's model of the family serves LoRA adapters (``SupportsLoRA``); if not, verl syncs merged weights
    vllm_serves_lora: ClassVar[bool] = True
    #: RoPE function of the modeling module that the text attention applies to q/k (MAPO-AT's capture redoes it)
    rotary_function: ClassVar[str]
    rotary_takes_mrope_section: ClassVar[bool]  # True: the function splits cos/sin by the config's mrope_section

    # -- configs ------------------------------------------------------------------------------------------------
    @property
    def model_types(self) -> tuple[str, str]:
        return self.full_model_type, self.thinker_model_type

    def thinker_config_of(self, config: Any) -> Any:
        """The thinker config of a full config (returned unchanged if it already is one)."""
        model_type = getattr(config, "model_type", None)
        if model_type == self.full_model_type:
            return config.thinker_config
        if model_type == self.thinker_model_type:
            return config
        raise UnknownFamilyError(f"not a {self.title} config: model_type={model_type!r}")

    def thinker_class(self) -> type:
        import transformers

        return getattr(transformers, self.thinker_class_name)

    def rope_owner(self) -> type:
        return getattr(importlib.import_module(self.modeling_module), self.rope_owner_class)

    # -- tokens -------------------------------------------------------------------------------------------------
    def placeholder_token_ids(self, tokenizer: Any) -> dict[str, int]:
        """``{"audio": id, "image": id, "video": id}``; raises if the tokenizer lacks one of the family's tokens."""
        out = {}
        for kind, token in self.placeholder_tokens.items():
            token_id = _token_id(tokenizer, token)
            if token_id is None:
                raise UnknownFamilyError(f"tokenizer has no {token} token; is this a {self.title} tokenizer?")
            out[kind] = token_id
        return out

    def never_sample_token_ids(self, tokenizer: Any) -> list[int]:
        return [int(tokenizer.convert_tokens_to_ids(t)) for t in self.never_sample_tokens]

    # -- weights ------------------------------------------------------------------------------------------------
    def checkpoint_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """Thinker state-dict entries (bare names, ``model.*``) under the full checkpoint's names (``thinker.*``), in
        the hub's layout; vLLM loads the same names. PEFT adapter entries (``base_model.model.model.*.lora_A.weight``,
        what verl sends for an unmerged LoRA) keep PEFT's prefix in front of the checkpoint name: vLLM strips it,
        maps the rest with the model's checkpoint mapper and drops an adapter whose module it does not find."""
        for name, tensor in weights:
            peft, bare = (PEFT_PREFIX, name[len(PEFT_PREFIX) :]) if name.startswith(PEFT_PREFIX) else ("", name)
            yield peft + (bare if bare.startswith("thinker.") else f"thinker.{bare}"), tensor

    def module_weights(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The inverse of :meth:`checkpoint_weights` minus the prefix: entries as the thinker module's state dict
        names them (what verl's weight sync sends, experts split, back into the module's layout)."""
        return dict(weights)

    # -- MAPO-AT ------------------------------------------------------------------------------------------------
    def query_key_states(
        self, module: torch.nn.Module, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Post-RoPE ``(q (B, H, L, D), k (B, Hk, L, D))`` of a text attention module, as its forward makes them:
        q/k projections, the per-head q/k norms where the module has them, then the family's
        :attr:`rotary_function` of the module's own source file (given ``mrope_section`` when
        :attr:`rotary_takes_mrope_section`)."""
        shape = (*hidden_states.shape[:-1], -1, module.head_dim)
        q = module.q_proj(hidden_states).view(shape)
        k = module.k_proj(hidden_states).view(shape)
        q_norm, k_norm = getattr(module, "q_norm", None), getattr(module, "k_norm", None)
        if q_norm is not None and k_norm is not None:
            q, k = q_norm(q), k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        cos, sin = position_embeddings
        rotary = module_function(module, self.rotary_function)
        if self.rotary_takes_mrope_section:
            return rotary(q, k, cos, sin, module.config.rope_parameters["mrope_section"])
        return rotary(q, k, cos, sin)

    def __repr__(self) -> str:
        return f"<{self.title} family>"


def module_function(module: torch.nn.Module, name: str) -> Any:
    """A function of the source file that defines ``module``'s class (the one its forward calls)."""
    function = getattr(sys.modules[type(module).__module__], name, None)
    if function is None:
        raise TypeError(f"{type(module).__name__}: its module has no {name}")
    return function


def _token_id(tokenizer: Any, token: str) -> int | None:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == getattr(tokenizer, "unk_token_id", -1):
        return None
    return int(token_id)


def register_family(cls: type[OmniFamily]) -> type[OmniFamily]:
    """Class decorator: add one instance of ``cls`` to the registry under ``cls.name``."""
    if cls.name in _FAMILIES and type(_FAMILIES[cls.name]) is not cls:
        raise ValueError(f"model family {cls.name!r} is registered twice")
    _FAMILIES[cls.name] = cls()
    return cls


def families() -> tuple[OmniFamily, ...]:
    """Every known family, in :data:`FAMILY_MODULES` order."""
    for module in FAMILY_MODULES:
        if module not in sys.modules:
            importlib.import_module(module)
    return tuple(_FAMILIES.values())


def known_names() -> str:
    return ", ".join(f"{f.name} ({f.title})" for f in families())


def family_named(name: str) -> OmniFamily:
    for family in families():
        if family.name == name:
            return family
    raise UnknownFamilyError(f"unknown model family {name!r}; known: {known_names()}")


def family_of(config: Any) -> OmniFamily | None:
    """The family of a full or thinker config; None for any other model (plain verl handles those)."""
    model_type = getattr(config, "model_type", None)
    for family in families():
        if model_type in family.model_types:
            return family
    return None


def require_family(config: Any, source: Any = "the checkpoint") -> OmniFamily:
    """:func:`family_of`, or an error naming ``source``'s architecture and model type and the known families."""
    family = family_of(config)
    if family is None:
        arch = ", ".join(getattr(config, "architectures", None) or []) or "none declared"
        raise UnknownFamilyError(
            f"{source}: architecture {arch} (model_type {getattr(config, 'model_type', None)!r}) is not an Omni model "
            f"family this plugin knows; known: {known_names()}"
        )
    return family


def family_of_tokenizer(tokenizer: Any) -> OmniFamily:
    """The family whose placeholder tokens the tokenizer has; an error naming the known families otherwise."""
    for family in families():
        if all(_token_id(tokenizer, t) is not None for t in family.placeholder_tokens.values()):
            return family
    raise UnknownFamilyError(
        f"{type(tokenizer).__name__} has the placeholder tokens of no known Omni family; known: {known_names()}"
    )


def family_of_processor(processor: Any) -> OmniFamily | None:
    """The family of a processor instance (by its class), or None."""
    name = type(processor).__name__ if processor is not None else None
    for family in families():
        if family.processor_class_name == name:
            return family
    return None
