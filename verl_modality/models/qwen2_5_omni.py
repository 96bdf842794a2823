"""Qwen2.5-Omni thinker support for verl 0.9.1 (which knows no Omni model): the family's knowledge, as functions.

What verl needs, and what here provides it (the changes to verl itself that call these are declared in
:mod:`verl_modality.integrations.registry`):

* **Processor** - verl's ``hf_processor`` rejects ``Qwen2_5OmniProcessor``; :func:`load_omni_processor` builds it
  and :func:`configure_processor` gives it ``get_rope_index`` / ``get_rope_index_kwargs`` (multimodal RoPE with audio
  lengths) and the placeholder token ids verl's agent loop looks up.
* **Thinker-only loading** - a full Omni checkpoint (``Qwen2_5OmniModel``: thinker + talker + token2wav) is described
  to verl by its *thinker* config (:func:`to_thinker_config`), so verl's own auto-class logic loads
  ``Qwen2_5OmniThinkerForConditionalGeneration`` from it and the talker and token2wav weights are never built.
* **FSDP wrapping** - the thinker's default ``_no_split_modules`` names both encoders *and* their layers, which makes
  FSDP2 wrap a tower before its layers and breaks the audio encoder; :data:`FSDP_LAYER_CLASSES` wraps leaf layers.
* **Placeholders** - the prompt verl keeps has expanded ``<|AUDIO|>``/``<|VIDEO|>``/``<|IMAGE|>`` runs; vLLM needs
  one placeholder per item (:func:`collapse_placeholders`), and the policy must never sample a placeholder
  (:func:`never_sample_token_ids`).
* **Weight names** - the thinker's state dict has bare names (``model.*``); vLLM's Qwen2.5-Omni model loads the full
  checkpoint layout (``thinker.model.*``): :func:`vllm_weight_name`.
* **Position ids** - :func:`repack_equal_length_position_ids` undoes TransferQueue's packing of equal-length rows.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

FULL_MODEL_TYPE = "qwen2_5_omni"
THINKER_MODEL_TYPE = "qwen2_5_omni_thinker"
OMNI_MODEL_TYPES = (FULL_MODEL_TYPE, THINKER_MODEL_TYPE)
THINKER_ARCHITECTURE = "Qwen2_5OmniThinkerForConditionalGeneration"
# Submodules of the full model that a thinker-only actor never needs.
TALKER_MODULES = ("talker", "token2wav")
# Leaf layers of the three stacks; wrapping these (and not the towers) is what FSDP2 needs.
FSDP_LAYER_CLASSES = ("Qwen2_5OmniAudioEncoderLayer", "Qwen2_5OmniVisionBlock", "Qwen2_5OmniDecoderLayer")
PLACEHOLDER_TOKENS = {"audio": "<|AUDIO|>", "image": "<|IMAGE|>", "video": "<|VIDEO|>"}
# Tokens that must never appear in a response: each one pairs with a media item in the model's bookkeeping.
NEVER_SAMPLE_TOKENS = ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|IMAGE|>", "<|VIDEO|>")


# --------------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------------
def is_omni_config(config: Any) -> bool:
    """True for a full Qwen2.5-Omni config or its thinker config."""
    return getattr(config, "model_type", None) in OMNI_MODEL_TYPES


def thinker_config_of(config: Any) -> Any:
    """The thinker config of a full Omni config (returned unchanged if it already is one)."""
    if getattr(config, "model_type", None) == FULL_MODEL_TYPE:
        return config.thinker_config
    if getattr(config, "model_type", None) == THINKER_MODEL_TYPE:
        return config
    raise ValueError(f"not a Qwen2.5-Omni config: model_type={getattr(config, 'model_type', None)!r}")


def to_thinker_config(full_config: Any, overrides: dict[str, Any] | None = None) -> Any:
    """Thinker config that stands in for ``full_config`` inside verl (architectures, attention, token ids)."""
    thinker = thinker_config_of(full_config)
    thinker.architectures = [THINKER_ARCHITECTURE]
    attn = getattr(full_config, "_attn_implementation", None)
    if attn is not None:
        thinker._attn_implementation = attn
        for sub in ("text_config", "audio_config", "vision_config"):
            sub_cfg = getattr(thinker, sub, None)
            if sub_cfg is not None:
                sub_cfg._attn_implementation = attn
    for key, value in (overrides or {}).items():
        if value is not None:
            setattr(thinker, key, value)
    if not hasattr(thinker, "tie_word_embeddings"):
        thinker.tie_word_embeddings = bool(getattr(thinker.text_config, "tie_word_embeddings", False))
    return thinker


# --------------------------------------------------------------------------------------------------------------------
# Multimodal RoPE
# --------------------------------------------------------------------------------------------------------------------
class RopeIndexer:
    """Carries what the thinker's ``get_rope_index`` reads from ``self``.

    The method cannot be bound to the processor itself: the processor has its own, differently shaped
    ``get_chunked_index`` and no ``spatial_merge_size``.
    """

    def __init__(self, thinker_config: Any):
        from transformers.models.qwen2_5_omni import modeling_qwen2_5_omni as m

        base = m.Qwen2_5OmniPreTrainedModelForConditionalGeneration
        self.config = thinker_config
        self.spatial_merge_size = thinker_config.vision_config.spatial_merge_size
        self.get_llm_pos_ids_for_vision = types.MethodType(base.get_llm_pos_ids_for_vision, self)
        self.get_chunked_index = types.MethodType(base.get_chunked_index, self)
        self._get_rope_index = types.MethodType(base.get_rope_index, self)

    def get_rope_index(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        kwargs.pop("mm_token_type_ids", None)
        return self._get_rope_index(*args, **kwargs)


def rope_index_kwargs(mm_inputs: dict[str, Any], use_audio_in_video: bool = False) -> dict[str, Any]:
    """Extra ``get_rope_index`` inputs from a sample's processor outputs (audio lengths, seconds per video grid)."""
    kwargs: dict[str, Any] = {"use_audio_in_video": use_audio_in_video}
    mask = mm_inputs.get("feature_attention_mask")
    if mask is not None:
        kwargs["audio_seqlens"] = mask.sum(-1)
    seconds = mm_inputs.get("video_second_per_grid")
    if seconds is not None:
        kwargs["second_per_grids"] = torch.as_tensor(seconds, dtype=torch.float)
    return kwargs


def compute_position_ids(processor: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, mm_inputs: dict):
    """Position ids ``(4, L)`` for one sequence, as verl's agent loop builds them: text row + t/h/w rows.

    Shapes: ``input_ids``/``attention_mask`` ``(L,)``; ``mm_inputs`` the processor outputs for that sequence.
    """
    ids = input_ids.unsqueeze(0)
    mask = attention_mask.unsqueeze(0)
    kwargs = {"image_grid_thw": mm_inputs.get("image_grid_thw"), "video_grid_thw": mm_inputs.get("video_grid_thw")}
    kwargs.update(processor.get_rope_index_kwargs(mm_inputs))
    vision_pos, _ = processor.get_rope_index(input_ids=ids, attention_mask=mask, **kwargs)  # (3, 1, L)
    valid = mask[0].bool()
    text_pos = torch.ones((1, ids.shape[1]), dtype=torch.long)
    text_pos[0, valid] = torch.arange(int(valid.sum()))
    return torch.cat([text_pos, vision_pos[:, 0, :]], dim=0)


# --------------------------------------------------------------------------------------------------------------------
# Processor
# --------------------------------------------------------------------------------------------------------------------
def placeholder_token_ids(tokenizer: Any) -> dict[str, int]:
    """``{"audio": id, "image": id, "video": id}`` from the tokenizer."""
    out = {}
    for name, token in PLACEHOLDER_TOKENS.items():
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == getattr(tokenizer, "unk_token_id", -1):
            raise ValueError(f"tokenizer has no {token} token; is this a Qwen2.5-Omni tokenizer?")
        out[name] = int(token_id)
    return out


def never_sample_token_ids(processor: Any) -> list[int]:
    tok = processor.tokenizer
    return [int(tok.convert_tokens_to_ids(t)) for t in NEVER_SAMPLE_TOKENS]


def configure_processor(processor: Any, config: Any, use_audio_in_video: bool = False) -> Any:
    """Give a ``Qwen2_5OmniProcessor`` what verl's agent loop and rollout look up on processors."""
    thinker = thinker_config_of(config)
    indexer = RopeIndexer(thinker)
    processor.config = thinker
    processor.get_rope_index = indexer.get_rope_index
    processor.get_rope_index_kwargs = functools.partial(rope_index_kwargs, use_audio_in_video=use_audio_in_video)
    for name, token_id in placeholder_token_ids(processor.tokenizer).items():
        setattr(processor, f"{name}_token_id", token_id)
    processor.verl_modality_omni = True
    return processor


def is_omni_processor(processor: Any) -> bool:
    return processor is not None and processor.__class__.__name__ == "Qwen2_5OmniProcessor"


def load_processor(path_or_id: str | Path, **kwargs: Any) -> Any:
    """Load the Omni processor of a local directory or hub id (``AutoProcessor``)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path_or_id, **kwargs)


def load_thinker(
    path_or_id: str | Path,
    torch_dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    **kwargs: Any,
) -> Any:
    """Load only the thinker of a full Qwen2.5-Omni checkpoint (local dir or hub id); talker/token2wav are skipped.

    Extra ``kwargs`` go to ``from_pretrained`` (e.g. ``local_files_only=True``). Raises if a thinker weight is missing.
    """
    from transformers import AutoConfig, Qwen2_5OmniThinkerForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hub_keys = ("local_files_only", "revision", "cache_dir", "token", "force_download", "subfolder")
    config = AutoConfig.from_pretrained(path_or_id, **{k: v for k, v in kwargs.items() if k in hub_keys})
    thinker_config = getattr(config, "thinker_config", config)
    # The load report lists every talker/token2wav key as unexpected; missing keys are checked below instead.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
            path_or_id,
            config=thinker_config,
            dtype=torch_dtype,
            attn_implementation=attn_implementation,
            output_loading_info=True,
            **kwargs,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    if info.get("missing_keys"):
        raise RuntimeError(f"{path_or_id}: thinker weights missing from the checkpoint: {sorted(info['missing_keys'])}")
    return model


def load_omni_processor(name_or_path: str, config: Any = None, **kwargs: Any) -> Any:
    """Load and configure the processor of a Qwen2.5-Omni checkpoint (hub id or local path)."""
    from transformers import AutoConfig, AutoProcessor

    kwargs.pop("use_fast", None)
    processor = AutoProcessor.from_pretrained(name_or_path, **kwargs)
    if not is_omni_processor(processor):
        raise ValueError(f"{name_or_path}: expected a Qwen2_5OmniProcessor, got {processor.__class__.__name__}")
    if config is None:
        config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    return configure_processor(processor, config)


# --------------------------------------------------------------------------------------------------------------------
# Placeholders between rollout and re-tokenisation
# --------------------------------------------------------------------------------------------------------------------
def collapse_placeholders(prompt_ids: Iterable[int], placeholder_ids: Iterable[int]) -> list[int]:
    """Collapse each run of a placeholder token to one token (the form vLLM expands per media item).

    Shapes: ``prompt_ids`` list of L ints -> list of L' <= L ints. Only consecutive repeats of the *same*
    placeholder are merged, so adjacent items of different kinds stay apart.
    """
    keep = set(int(i) for i in placeholder_ids)
    out: list[int] = []
    prev = None
    for token in prompt_ids:
        token = int(token)
        if token in keep and token == prev:
            continue
        out.append(token)
        prev = token
    return out


def vllm_weight_name(name: str) -> str:
    """Map a thinker state-dict name to the full-checkpoint name vLLM's Qwen2.5-Omni loader expects."""
    return name if name.startswith("thinker.") else f"thinker.{name}"


def vllm_weights(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    for name, tensor in weights:
        yield vllm_weight_name(name), tensor


# --------------------------------------------------------------------------------------------------------------------
# Position ids between TransferQueue and verl's engine
# --------------------------------------------------------------------------------------------------------------------
def repack_equal_length_position_ids(position_ids: torch.Tensor) -> torch.Tensor | None:
    """Multimodal RoPE position ids ``(bs, 4, j)`` packed with the wrong ragged dimension, repacked; else None.

    TransferQueue packs per-row ``(4, L_i)`` tensors with ``torch.nested.as_nested_tensor``. When every row of a
    batch has the same length L, torch makes the *first* component dimension (the 4) the ragged one: values
    ``(4 * bs, L)``, offsets ``0, 4, 8, ...``. verl's ``maybe_fix_3d_position_ids`` then only relabels the ragged
    dimension as 2, and the mini-batch split fails (``split_with_sizes expects split_sizes to sum exactly to L``).
    """
    if not (position_ids.is_nested and position_ids.dim() == 3 and getattr(position_ids, "_ragged_idx", 2) == 1):
        return None
    values, offsets = position_ids.values(), position_ids.offsets()
    if values.dim() != 2 or int(offsets[-1]) != values.shape[0]:
        return None  # ragged along the sequence already (e.g. only the label was lost in pickling)
    from verl.utils.tensordict_utils import nested_tensor_from_tensor_list

    return nested_tensor_from_tensor_list(list(position_ids.unbind()), ragged_idx=2)
