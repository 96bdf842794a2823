"""What every Omni family shares, as functions that look the family up (:mod:`verl_modality.models.family`).

verl 0.9.1 knows no Omni model. What it needs, and what here provides it (the changes to verl itself that call these
are declared in :mod:`verl_modality.integrations.registry`):

* **Processor** - verl's ``hf_processor`` rejects the Omni processors; :func:`load_omni_processor` builds one and
  :func:`configure_processor` gives it ``get_rope_index`` / ``get_rope_index_kwargs`` (multimodal RoPE with audio
  lengths) and the placeholder token ids verl's agent loop looks up.
* **Thinker-only loading** - a full Omni checkpoint (thinker + talker + vocoder) is described to verl by its
  *thinker* config (:func:`to_thinker_config`), so verl's own auto-class logic loads the thinker and the talker and
  vocoder weights are never built.
* **Placeholders** - the prompt verl keeps has expanded audio/image/video placeholder runs; vLLM needs one
  placeholder per item (:func:`collapse_placeholders`), and the policy must never sample a placeholder
  (:func:`never_sample_token_ids`).
* **Weight names** - the thinker's state dict has bare names (``model.*``); the full checkpoint and vLLM's Omni
  models use ``thinker.model.*`` (:func:`vllm_weights`).
* **Position ids** - :func:`repack_equal_length_position_ids` undoes TransferQueue's packing of equal-length rows.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from verl_modality.models.family import (
    OmniFamily,
    UnknownFamilyError,
    family_named,
    family_of,
    family_of_processor,
    family_of_tokenizer,
    known_names,
    require_family,
)

HUB_KEYS = ("local_files_only", "revision", "cache_dir", "token", "force_download", "subfolder")


# --------------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------------
def is_omni_config(config: Any) -> bool:
    """True for the full config or the thinker config of a known Omni family."""
    return family_of(config) is not None


def thinker_config_of(config: Any) -> Any:
    """The thinker config of a full Omni config (returned unchanged if it already is one)."""
    return require_family(config, "config").thinker_config_of(config)


def to_thinker_config(full_config: Any, overrides: dict[str, Any] | None = None) -> Any:
    """Thinker config that stands in for ``full_config`` inside verl (architectures, attention, token ids)."""
    family = require_family(full_config, "config")
    thinker = family.thinker_config_of(full_config)
    thinker.architectures = [family.thinker_class_name]
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

    def __init__(self, thinker_config: Any, family: OmniFamily):
        owner = family.rope_owner()
        self.config = thinker_config
        self.spatial_merge_size = thinker_config.vision_config.spatial_merge_size
        self.get_llm_pos_ids_for_vision = types.MethodType(owner.get_llm_pos_ids_for_vision, self)
        self.get_chunked_index = types.MethodType(owner.get_chunked_index, self)
        self._get_rope_index = types.MethodType(owner.get_rope_index, self)

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
    return torch.cat([text_pos, vision_pos[:, 0, :].to(torch.long)], dim=0)


# --------------------------------------------------------------------------------------------------------------------
# Processor
# --------------------------------------------------------------------------------------------------------------------
def placeholder_token_ids(tokenizer: Any) -> dict[str, int]:
    """``{"audio": id, "image": id, "video": id}`` of the tokenizer's family."""
    return family_of_tokenizer(tokenizer).placeholder_token_ids(tokenizer)


def never_sample_token_ids(processor: Any) -> list[int]:
    """Ids the policy must never sample; a configured processor names its family (the vLLM server asks per
    request), any other is recognised by its tokenizer."""
    tok = processor.tokenizer
    name = getattr(processor, "verl_modality_family", None)
    family = family_named(name) if name else family_of_tokenizer(tok)
    return family.never_sample_token_ids(tok)


def configure_processor(processor: Any, config: Any, use_audio_in_video: bool = False) -> Any:
    """Give an Omni processor what verl's agent loop and rollout look up on processors."""
    family = require_family(config, "config")
    thinker = family.thinker_config_of(config)
    indexer = RopeIndexer(thinker, family)
    processor.config = thinker
    processor.get_rope_index = indexer.get_rope_index
    processor.get_rope_index_kwargs = functools.partial(rope_index_kwargs, use_audio_in_video=use_audio_in_video)
    for name, token_id in family.placeholder_token_ids(processor.tokenizer).items():
        setattr(processor, f"{name}_token_id", token_id)
    processor.verl_modality_omni = True
    processor.verl_modality_family = family.name
    return processor


def is_omni_processor(processor: Any) -> bool:
    return family_of_processor(processor) is not None


def load_processor(path_or_id: str | Path, **kwargs: Any) -> Any:
    """Load the processor of a local directory or hub id (``AutoProcessor``), unconfigured."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path_or_id, **kwargs)


def load_config(path_or_id: str | Path, **kwargs: Any) -> Any:
    """The config of a checkpoint (local dir or hub id); a local path that does not exist is an error naming it."""
    from transformers import AutoConfig

    if _looks_local(path_or_id) and not Path(path_or_id).is_dir():
        raise FileNotFoundError(f"{path_or_id}: no such model directory")
    return AutoConfig.from_pretrained(path_or_id, **{k: v for k, v in kwargs.items() if k in HUB_KEYS})


def _looks_local(path_or_id: str | Path) -> bool:
    text = str(path_or_id)
    return isinstance(path_or_id, Path) or text.startswith((".", "/", "~")) or text.count("/") != 1


def load_thinker(
    path_or_id: str | Path,
    torch_dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    **kwargs: Any,
) -> Any:
    """Load only the thinker of a full Omni checkpoint (local dir or hub id); the talker and vocoder are skipped.

    Extra ``kwargs`` go to ``from_pretrained`` (e.g. ``local_files_only=True``). Raises if a thinker weight is missing
    or the checkpoint belongs to no known family (naming its architecture).
    """
    from transformers.utils import logging as hf_logging

    config = load_config(path_or_id, **kwargs)
    family = require_family(config, path_or_id)
    thinker_config = family.thinker_config_of(config)
    # The load report lists every talker/vocoder key as unexpected; missing keys are checked below instead.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = family.thinker_class().from_pretrained(
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
    """Load and configure the processor of an Omni checkpoint (hub id or local path)."""
    kwargs.pop("use_fast", None)
    if config is None:
        config = load_config(name_or_path, **kwargs)
    family = require_family(config, name_or_path)
    processor = load_processor(name_or_path, **kwargs)
    if type(processor).__name__ != family.processor_class_name:
        raise UnknownFamilyError(
            f"{name_or_path}: a {family.title} checkpoint needs a {family.processor_class_name}, "
            f"got {type(processor).__name__}"
        )
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


def vllm_weights(weights: Iterable[tuple[str, torch.Tensor]], config: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """Thinker weights under the names vLLM's model of ``config``'s family loads (full-checkpoint layout)."""
    return require_family(config, "config").checkpoint_weights(weights)


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


__all__ = [
    "UnknownFamilyError",
    "collapse_placeholders",
    "compute_position_ids",
    "configure_processor",
    "is_omni_config",
    "is_omni_processor",
    "known_names",
    "load_config",
    "load_omni_processor",
    "load_processor",
    "load_thinker",
    "never_sample_token_ids",
    "placeholder_token_ids",
    "repack_equal_length_position_ids",
    "rope_index_kwargs",
    "thinker_config_of",
    "to_thinker_config",
    "vllm_weights",
]
