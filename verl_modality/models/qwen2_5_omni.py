"""Qwen2.5-Omni thinker support for verl 0.9.1 (which knows no Omni model).

What verl needs, and where it is provided here:

* **Processor** - verl's ``hf_processor`` rejects ``Qwen2_5OmniProcessor``; :func:`omni_hf_processor` builds it and
  gives it ``get_rope_index`` / ``get_rope_index_kwargs`` (multimodal RoPE with audio lengths) and the placeholder
  token ids verl's agent loop looks up.
* **Thinker-only loading** - a full Omni checkpoint (``Qwen2_5OmniModel``: thinker + talker + token2wav) is described
  to verl by its *thinker* config (:func:`patch_hf_model_config`), so verl's own auto-class logic loads
  ``Qwen2_5OmniThinkerForConditionalGeneration`` from it and the talker and token2wav weights are never built.
* **FSDP wrapping** - the thinker's default ``_no_split_modules`` names both encoders *and* their layers, which makes
  FSDP2 wrap a tower before its layers and breaks the audio encoder; :data:`FSDP_LAYER_CLASSES` wraps leaf layers.
* **Placeholders** - the prompt verl keeps has expanded ``<|AUDIO|>``/``<|VIDEO|>``/``<|IMAGE|>`` runs; vLLM needs
  one placeholder per item (:func:`collapse_placeholders`), and the policy must never sample a placeholder.
* **Weight names** - the thinker's state dict has bare names (``model.*``); vLLM's Qwen2.5-Omni model loads the full
  checkpoint layout (``thinker.model.*``): :func:`vllm_weight_name`.

Everything that touches vLLM is applied lazily, when verl's vLLM modules are imported, and only changes behaviour for
Omni processors and models: other models go through verl's original functions.
"""

from __future__ import annotations

import functools
import logging
import re
import types
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

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


def omni_hf_processor(original):
    """Wrap verl's ``hf_processor`` so Omni checkpoints get a configured processor; others are untouched."""

    @functools.wraps(original)
    def hf_processor(name_or_path, **kwargs):
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=kwargs.get("trust_remote_code", False))
        except Exception:  # not a model directory we can read: verl's own function decides
            return original(name_or_path, **kwargs)
        if not is_omni_config(config):
            return original(name_or_path, **kwargs)
        return load_omni_processor(name_or_path, config=config, **kwargs)

    hf_processor.__verl_modality__ = True
    return hf_processor


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
# Patches into verl
# --------------------------------------------------------------------------------------------------------------------
def _patched_post_init(original):
    @functools.wraps(original)
    def __post_init__(self):
        original(self)
        if getattr(self.hf_config, "model_type", None) != FULL_MODEL_TYPE:
            return
        full = self.hf_config
        tok = self.tokenizer
        overrides = {}
        if tok is not None:
            overrides = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
            overrides["pad_token_id"] = tok.pad_token_id
        model_overrides = dict(self.override_config.get("model_config", self.override_config))
        model_overrides.pop("attn_implementation", None)
        overrides.update(model_overrides)
        thinker = to_thinker_config(full, overrides)
        # verl's config dataclasses freeze most fields after __post_init__; set them as __post_init__ would.
        object.__setattr__(self, "omni_full_config", full)
        object.__setattr__(self, "hf_config", thinker)
        object.__setattr__(
            self, "share_embeddings_and_output_weights", bool(getattr(thinker, "tie_word_embeddings", False))
        )
        object.__setattr__(self, "architectures", thinker.architectures)
        logger.info("verl-modality: %s is a full Qwen2.5-Omni checkpoint; the actor loads its thinker", self.path)

    __post_init__.__verl_modality__ = True
    return __post_init__


def _patched_build_module(original):
    @functools.wraps(original)
    def _build_module(self):
        module = original(self)
        if getattr(getattr(module, "config", None), "model_type", None) == THINKER_MODEL_TYPE:
            # verl reads this for its default FSDP wrap policy; an explicit wrap_policy still wins.
            module._no_split_modules = list(FSDP_LAYER_CLASSES)
        return module

    _build_module.__verl_modality__ = True
    return _build_module


def _patch_vllm_server(module) -> None:
    """verl's vLLM server: collapse Omni placeholder runs, and never sample Omni placeholders."""
    if getattr(module.qwen2_5_vl_dedup_image_tokens, "__verl_modality__", False):
        return
    dedup = module.qwen2_5_vl_dedup_image_tokens
    banned = module.get_vision_placeholder_token_ids

    @functools.wraps(dedup)
    def qwen2_5_vl_dedup_image_tokens(prompt_ids, processor):
        if getattr(processor, "verl_modality_omni", False):
            # Ids were resolved once by configure_processor; this runs on every rollout request.
            ids = (processor.audio_token_id, processor.image_token_id, processor.video_token_id)
            return collapse_placeholders(prompt_ids, ids)
        return dedup(prompt_ids, processor)

    @functools.wraps(banned)
    def get_vision_placeholder_token_ids(processor):
        if getattr(processor, "verl_modality_omni", False):
            return never_sample_token_ids(processor)
        return banned(processor)

    qwen2_5_vl_dedup_image_tokens.__verl_modality__ = get_vision_placeholder_token_ids.__verl_modality__ = True
    module.qwen2_5_vl_dedup_image_tokens = qwen2_5_vl_dedup_image_tokens
    module.get_vision_placeholder_token_ids = get_vision_placeholder_token_ids


def _patch_vllm_adapter(module) -> None:
    """verl's vLLM rollout adapter: send thinker weights under the full-checkpoint names vLLM loads."""
    cls = module.ServerAdapter
    original = cls.update_weights
    if getattr(original, "__verl_modality__", False):
        return

    @functools.wraps(original)
    async def update_weights(self, weights, *args, **kwargs):
        hf_config = getattr(self.model_config, "hf_config", None)
        if getattr(hf_config, "model_type", None) == THINKER_MODEL_TYPE and hasattr(
            self.model_config, "omni_full_config"
        ):
            weights = vllm_weights(weights)
        return await original(self, weights, *args, **kwargs)

    update_weights.__verl_modality__ = True
    cls.update_weights = update_weights


def _patch_tokenizer_module(module) -> None:
    if getattr(module.hf_processor, "__verl_modality__", False):
        return
    wrapped = omni_hf_processor(module.hf_processor)
    module.hf_processor = wrapped
    import verl.utils as verl_utils

    if hasattr(verl_utils, "hf_processor"):
        verl_utils.hf_processor = wrapped


def _patch_model_config_module(module) -> None:
    import verl.utils.tokenizer as tokenizer_mod

    _patch_tokenizer_module(tokenizer_mod)
    module.hf_processor = tokenizer_mod.hf_processor
    cls = module.HFModelConfig
    if not getattr(cls.__post_init__, "__verl_modality__", False):
        cls.__post_init__ = _patched_post_init(cls.__post_init__)


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


def _fixed_3d_position_ids(original):
    @functools.wraps(original)
    def maybe_fix_3d_position_ids(data):
        if "position_ids" in data.keys():
            repacked = repack_equal_length_position_ids(data["position_ids"])
            if repacked is not None:
                data["position_ids"] = repacked
                return None
        return original(data)

    maybe_fix_3d_position_ids.__verl_modality__ = True
    maybe_fix_3d_position_ids.__wrapped_original__ = original
    return maybe_fix_3d_position_ids


def _patch_tensordict_utils(module) -> None:
    if not getattr(module.maybe_fix_3d_position_ids, "__verl_modality__", False):
        module.maybe_fix_3d_position_ids = _fixed_3d_position_ids(module.maybe_fix_3d_position_ids)


def _rebind_position_id_fix(module) -> None:
    """Modules that imported ``maybe_fix_3d_position_ids`` by name get the fixed one."""
    from verl.utils import tensordict_utils

    _patch_tensordict_utils(tensordict_utils)
    if not getattr(getattr(module, "maybe_fix_3d_position_ids", None), "__verl_modality__", True):
        module.maybe_fix_3d_position_ids = tensordict_utils.maybe_fix_3d_position_ids


# The talker's text-token ids index the *thinker's* vocabulary by design. transformers 5.9 checks them against the
# talker's own (8,448 codes) whenever it formats a Qwen2_5OmniConfig type check, which builds a default talker config:
# seven warnings per process about ids no checkpoint holds.
_TALKER_TOKEN_WARNING = re.compile(
    r"^Model config: (tts_text_(start|end|pad)|audio_(start|end)|vision_(start|end))_token_id must be `None` or an "
    r"integer within the vocabulary"
)


class TalkerTokenIdFilter(logging.Filter):
    """Drops transformers' vocabulary warnings about the talker's thinker-vocabulary token ids (and nothing else)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _TALKER_TOKEN_WARNING.match(record.getMessage())


def _quiet_talker_token_ids(module) -> None:
    log = logging.getLogger(module.__name__)
    if not any(isinstance(f, TalkerTokenIdFilter) for f in log.filters):
        log.addFilter(TalkerTokenIdFilter())


def _patch_fsdp_engine_module(module) -> None:
    engine = module.FSDPEngine
    if not getattr(engine._build_module, "__verl_modality__", False):
        engine._build_module = _patched_build_module(engine._build_module)
