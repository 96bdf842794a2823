"""Changes to ``verl.workers``: the actor and its engine.

* ``config.model.HFModelConfig.__post_init__``: a full Omni checkpoint (thinker + talker + vocoder) is described to
  verl by its *thinker* config, so verl's own auto-class logic loads the thinker only. With LoRA
  (``lora_rank > 0``), verl's default ``target_modules="all-linear"`` becomes the thinker's language-model linear
  layers (:func:`~verl_modality.models.lora.thinker_target_modules`), and its default ``exclude_modules`` the
  encoders: they stay frozen unless the user sets ``exclude_modules``. A family whose vLLM model serves no adapters
  (Qwen3-Omni in vLLM 0.24) syncs merged weights (``lora.merge``).
* ``engine.fsdp.transformer_impl.FSDPEngine._build_module``: the thinker wraps its leaf layers (the family's
  :attr:`~verl_modality.models.family.OmniFamily.fsdp_layer_classes`); its default ``_no_split_modules`` names the
  encoder towers, which makes FSDP2 wrap a tower before its layers and breaks the audio encoder. The built thinker
  also runs every encoder in every forward (:mod:`verl_modality.models.encoder_lockstep`): without it, two ranks
  whose micro-batches hold different streams enter different FSDP collectives.
* ``engine.base`` / ``engine_workers``: modules that imported ``maybe_fix_3d_position_ids`` or
  ``initialize_global_process_group_ray`` by name get the wrapped ones (:mod:`verl_modality.integrations.verl_utils`).
* MAPO-AT's attention loss (docs/method.md §5), inert unless the update batch carries the ``mapo_at`` knob
  (:data:`verl_modality.protocol.MAPO_AT`, set by the trainer's MAPO-AT feature when
  ``algorithm.mapo_at.attention_loss``
  is on):
  ``FSDPEngineWithLMHead.forward_step`` runs training micro-batches inside
  :class:`~verl_modality.models.attention_capture.AudioAttentionCapture`, so the post-RoPE q/k of the chosen layers
  are recorded while the model's own attention runs as usual; ``engine_workers.ppo_loss`` adds eta * L_attn to
  verl's PPO loss, computed from the captured states per sequence (packed or padded layout alike) and the per-token
  fields the trainer wrote: ``mapo_dh`` (entropy difference), ``mapo_attn_content`` (content tokens),
  ``mapo_attn_reward`` and ``mapo_attn_adv`` (task reward and |A_i|, repeated over the response). The micro-batch's
  L_attn (by default the mean over its sequences of each sequence's mean over its content tokens; the reduction and
  the other release details come in the knob's ``loss_options``) is scaled by the micro-batch's share of the global
  batch (sequences) times the data-parallel size, so gradient accumulation over micro-batches and FSDP's averaging
  over ranks give the global batch mean.

Every wrapper hands calls that are not for an Omni model, or not for MAPO-AT, to verl's function unchanged.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from verl_modality import protocol
from verl_modality.integrations.patching import wrap

logger = logging.getLogger(__name__)

#: The training micro-batch's AudioAttentionCapture, from forward_step to the ppo_loss called inside it (set and reset
#: by patch_forward_step's wrapper, read by with_mapo_at; None outside a captured forward step): see
# verl_modality.protocol
_ACTIVE: contextvars.ContextVar[Any] = contextvars.ContextVar("mapo_at_capture", default=None)
#: _ACTIVE's value inside a forward-only step of a batch that carries the knob: no capture, and no attention loss
NO_CAPTURE = object()


# ----------------------------------------------------------------------------------- verl.workers.config.model
def thinker_post_init(original):
    """``HFModelConfig.__post_init__`` that swaps a full Omni config for its thinker config, and under LoRA points
    verl's default targets at the thinker's language model (docs/lora.md)."""
    from verl_modality.models.family import family_of
    from verl_modality.models.lora import thinker_exclude_modules, thinker_target_modules
    from verl_modality.models.omni import to_thinker_config

    def __post_init__(self):
        original(self)
        family = family_of(self.hf_config)
        if family is None:
            return
        if self.lora_rank > 0:
            # verl's default "all-linear" would adapt the encoders too: on a thinker, the language model only
            object.__setattr__(self, "target_modules", thinker_target_modules(self.target_modules))
            object.__setattr__(self, "exclude_modules", thinker_exclude_modules(self.exclude_modules))
            if not family.vllm_serves_lora and not self.lora.get("merge", False):
                logger.warning(
                    "verl-modality: vLLM serves no LoRA adapters on the %s thinker; the rollout gets the actor's "
                    "merged weights (actor_rollout_ref.model.lora.merge=true)",
                    family.title,
                )
                object.__setattr__(self, "lora", {**self.lora, "merge": True})
        if self.hf_config.model_type != family.full_model_type:
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
        logger.info("verl-modality: %s is a full %s checkpoint; the actor loads its thinker", self.path, family.title)

    return __post_init__


def patch_model_config(module) -> None:
    """``HFModelConfig.__post_init__``, and the module's by-name ``hf_processor`` (the Omni processor's wrapper,
    the same object as ``verl.utils.tokenizer``'s)."""
    from verl_modality.integrations.verl_utils import omni_hf_processor

    wrap(module, "hf_processor", omni_hf_processor)
    wrap(module.HFModelConfig, "__post_init__", thinker_post_init)


# ---------------------------------------------------------------------- verl.workers.engine.fsdp.transformer_impl
def leaf_layer_build_module(original):
    """``FSDPEngine._build_module`` that gives a thinker the leaf-layer ``_no_split_modules`` and makes every forward
    run each of its encoders (:mod:`verl_modality.models.encoder_lockstep`)."""
    from verl_modality.models import encoder_lockstep
    from verl_modality.models.family import family_of

    def _build_module(self):
        module = original(self)
        config = getattr(module, "config", None)
        family = family_of(config)
        if family is not None and config.model_type == family.thinker_model_type:
            # verl reads this for its default FSDP wrap policy; an explicit wrap_policy still wins.
            module._no_split_modules = list(family.fsdp_layer_classes)
            # the same FSDP collectives on every rank, whichever streams each rank's micro-batch holds
            encoder_lockstep.install(module)
        return module

    return _build_module


def patch_fsdp_engine(module) -> None:
    wrap(module.FSDPEngine, "_build_module", leaf_layer_build_module)


def unpinned_offload_policy(original):
    """``CPUOffloadPolicy`` as verl's FSDP2 engine builds it, without pinned memory (cpu platform only)."""

    def CPUOffloadPolicy(*args: Any, pin_memory: bool = True, **kwargs: Any):  # noqa: N802 (verl's name)
        return original(*args, pin_memory=False, **kwargs)

    return CPUOffloadPolicy


def patch_offload_policy(module) -> None:
    """verl shards forward-only engines (the reference policy) with ``CPUOffloadPolicy(pin_memory=True)``; pinning
    needs a CUDA driver, and on the CPU the parameters are in host memory already."""
    wrap(module, "CPUOffloadPolicy", unpinned_offload_policy)


def _knob(data: Any) -> dict | None:
    from verl.utils import tensordict_utils as tu

    value = tu.get_non_tensor_data(data=data, key=protocol.MAPO_AT, default=None)
    return dict(value) if value else None


def patch_forward_step(module) -> None:
    """``FSDPEngineWithLMHead.forward_step`` captures q/k for MAPO-AT's attention loss on training micro-batches."""
    wrap(module.FSDPEngineWithLMHead, "forward_step", capturing_forward_step)


def capturing_forward_step(original):
    from verl_modality.models.attention_capture import AudioAttentionCapture, usable_layers

    def forward_step(self, micro_batch, loss_function, forward_only):
        knob = _knob(micro_batch)
        if knob is None:
            return original(self, micro_batch, loss_function, forward_only)
        if forward_only:  # no gradient: a loss verl computes here (compute_loss) leaves L_attn out
            token = _ACTIVE.set(NO_CAPTURE)
            try:
                return original(self, micro_batch, loss_function, forward_only)
            finally:
                _ACTIVE.reset(token)
        with AudioAttentionCapture(self.module, usable_layers(self.module, knob["layers"])) as capture:
            token = _ACTIVE.set(capture)
            try:
                return original(self, micro_batch, loss_function, forward_only)
            finally:
                _ACTIVE.reset(token)
                capture.clear()

    return forward_step


def patch_forward_backward_batch(module) -> None:
    """``FSDPEngine.forward_backward_batch`` adds the mini-batch's relevance-weight sum over all ranks (the
    ``token-mean`` denominator of the ``mapo_relevance`` loss, :func:`~verl_modality.algorithms.relevance.
    global_token_weights`) when the update carries MAPO-AT relevance weights."""
    wrap(module.FSDPEngine, "forward_backward_batch", weight_sum_forward_backward_batch)


def weight_sum_forward_backward_batch(original):
    def forward_backward_batch(self, data, loss_function, forward_only=False):
        from verl.utils import tensordict_utils as tu

        if forward_only or not tu.get_non_tensor_data(data=data, key=protocol.MAPO_RELEVANCE, default=False):
            return original(self, data, loss_function, forward_only)
        import torch

        from verl_modality.algorithms.relevance import weight_sum

        total = torch.tensor([weight_sum(data[protocol.RELEVANCE_WEIGHTS])], dtype=torch.float64)
        group = self.get_data_parallel_group()
        if torch.distributed.is_initialized() and torch.distributed.get_world_size(group) > 1:
            from verl.utils.device import get_device_id

            total = total.to(get_device_id())
            torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM, group=group)
        tu.assign_non_tensor(data, **{protocol.MAPO_RELEVANCE_WEIGHT_SUM: float(total.item())})
        return original(self, data, loss_function, forward_only)

    return forward_backward_batch


# ------------------------------------------------------------------------ verl.workers.engine.base, engine_workers
def rebind_position_id_fix(module) -> None:
    """Modules that imported ``maybe_fix_3d_position_ids`` by name get the fixed one (the same wrapper as
    ``verl.utils.tensordict_utils``'s)."""
    from verl_modality.integrations.verl_utils import fixed_3d_position_ids

    wrap(module, "maybe_fix_3d_position_ids", fixed_3d_position_ids)


def rebind_gloo_process_group(module) -> None:
    """``engine_workers`` imported ``initialize_global_process_group_ray`` by name before it could be wrapped."""
    from verl_modality.integrations.verl_utils import gloo_process_group

    wrap(module, "initialize_global_process_group_ray", gloo_process_group)


def _padded(nested: Any, fill: float = 0.0) -> Any:
    return nested.to_padded_tensor(fill) if nested.is_nested else nested


def attention_loss_share(data: Any, sequences: int) -> float:
    """The weight of one micro-batch's L_attn (a mean over its ``sequences``) in the update's loss: its share of the
    global mini-batch, times the data-parallel size, as verl's ``agg_loss`` scales its own losses, because FSDP
    averages gradients over the ranks. The ranks' contributions then add up to the mean over the global mini-batch.
    """
    from verl.utils import tensordict_utils as tu

    global_bsz = data["global_batch_size"] if "global_batch_size" in data.keys() else None
    global_bsz = tu.get_non_tensor_data(data=data, key="global_batch_size", default=None) or global_bsz
    dp_size = tu.get_non_tensor_data(data=data, key="dp_size", default=None) or 1
    return sequences / float(global_bsz) * int(dp_size) if global_bsz else 1.0


def relevance_token_weights(config: Any, data: Any) -> Any:
    """``data`` with its relevance weights scaled by N / W for the ``mapo_relevance`` loss under ``token-mean``
    (:func:`~verl_modality.algorithms.relevance.global_token_weights`); ``data`` itself for any other loss."""
    from verl.utils import tensordict_utils as tu

    from verl_modality.algorithms.relevance import LOSS_MODE, global_token_weights

    policy_loss = getattr(config, "policy_loss", None)
    mode = policy_loss.get("loss_mode", "vanilla") if policy_loss is not None else "vanilla"
    if (
        mode != LOSS_MODE
        or getattr(config, "loss_agg_mode", None) != "token-mean"
        or protocol.RELEVANCE_WEIGHTS not in data
    ):
        return data
    total = tu.get_non_tensor_data(data=data, key=protocol.MAPO_RELEVANCE_WEIGHT_SUM, default=None)
    if total is None:
        raise RuntimeError(
            f"policy loss {LOSS_MODE!r} with loss_agg_mode=token-mean needs the mini-batch's relevance-weight sum, "
            f"which the actor's engine adds ({protocol.MAPO_RELEVANCE_WEIGHT_SUM}); is the plugin's FSDPEngine.forward_backward_batch patch "
            "installed (see `verl-modality doctor`)?"
        )
    scaled = data.copy()
    scaled[protocol.RELEVANCE_WEIGHTS] = global_token_weights(
        data[protocol.RELEVANCE_WEIGHTS], data["batch_num_tokens"], total
    )
    return scaled


def with_mapo_at(ppo_loss):
    """verl's ``ppo_loss`` with MAPO-AT's relevance weights as one global weighted mean under ``token-mean``
    (:func:`relevance_token_weights`), plus eta * L_attn when the batch asks for it (see the module docstring)."""

    def loss_fn(config, model_output, data, dp_group=None):
        data = relevance_token_weights(config, data)
        loss, metrics = ppo_loss(config, model_output, data, dp_group)
        knob = _knob(data)
        if knob is None:
            return loss, metrics
        capture = _ACTIVE.get()
        if capture is NO_CAPTURE:
            return loss, metrics
        if capture is None:  # without it the attention loss would silently be left out
            raise RuntimeError(
                f"the actor update carries {protocol.MAPO_AT!r} (MAPO-AT's attention loss) but verl's ppo_loss ran "
                "outside a captured forward step: is the plugin's FSDPEngineWithLMHead.forward_step patch installed "
                "(see `verl-modality doctor`)?"
            )
        from verl.utils import tensordict_utils as tu

        from verl_modality.algorithms.attention_loss import attention_loss
        from verl_modality.models.attention_capture import nested_response_audio_mass

        response_mask = _padded(data["response_mask"]).float()
        lengths = data["response_mask"].offsets().diff().tolist()
        packed = bool(tu.get_non_tensor_data(data=data, key="use_remove_padding", default=True))
        a = nested_response_audio_mass(capture, data["input_ids"], lengths, int(knob["audio_token_id"]), packed)
        l_attn, attn_metrics = attention_loss(
            a,
            response_mask.to(a.device),
            _padded(data[protocol.MAPO_ATTN_CONTENT]).bool().to(a.device),
            _padded(data[protocol.MAPO_DH]).float().to(a.device),
            _padded(data[protocol.MAPO_ATTN_REWARD])[:, 0].float().to(a.device),
            _padded(data[protocol.MAPO_ATTN_ADV])[:, 0].float().to(a.device),
            kappa=float(knob["kappa"]),
            tau_base=float(knob["tau_base"]),
            c_mask=float(knob["c_mask"]),
            **dict(knob.get("loss_options") or {}),
        )
        share = attention_loss_share(data, len(lengths))
        loss = loss + float(knob["eta"]) * share * l_attn.to(loss.dtype)
        metrics.update({f"mapo_at/{k.split('/', 1)[1]}": v for k, v in attn_metrics.items()})
        return loss, metrics

    return loss_fn


def patch_ppo_loss(module) -> None:
    wrap(module, "ppo_loss", with_mapo_at)
