"""Changes to ``verl.workers``: the actor and its engine.

* ``config.model.HFModelConfig.__post_init__``: a full Omni checkpoint (thinker + talker + vocoder) is described to
  verl by its *thinker* config, so verl's own auto-class logic loads the thinker only.
* ``engine.fsdp.transformer_impl.FSDPEngine._build_module``: the thinker wraps its leaf layers (the family's
  :attr:`~verl_modality.models.family.OmniFamily.fsdp_layer_classes`); its default ``_no_split_modules`` names the
  encoder towers, which makes FSDP2 wrap a tower before its layers and breaks the audio encoder. The built thinker
  also runs every encoder in every forward (:mod:`verl_modality.models.encoder_lockstep`): without it, two ranks
  whose micro-batches hold different streams enter different FSDP collectives.
* ``engine.base`` / ``engine_workers``: modules that imported ``maybe_fix_3d_position_ids`` or
  ``initialize_global_process_group_ray`` by name get the wrapped ones (:mod:`verl_modality.integrations.verl_utils`).
* MAPO-AT's attention loss (docs/method.md §5), inert unless the update batch carries the ``mapo_at`` knob (set by the
  trainer's MAPO-AT feature when ``algorithm.mapo_at.attention_loss`` is on):
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
import functools
import logging
from typing import Any

logger = logging.getLogger(__name__)

#: the actor update's knob (``batch.extra_info``) and the per-token fields of MAPO-AT's attention loss
KNOB = "mapo_at"
#: the actor update's flag (``batch.extra_info``): the update's ``rollout_is_weights`` are MAPO-AT relevance weights
RELEVANCE_KNOB = "mapo_relevance"
#: what the actor adds to each mini-batch: the weight sum W of its relevance weights over all data-parallel ranks
WEIGHT_SUM = "mapo_relevance_weight_sum"
FIELDS = ("mapo_dh", "mapo_attn_content", "mapo_attn_reward", "mapo_attn_adv")
_ACTIVE: contextvars.ContextVar[Any] = contextvars.ContextVar("mapo_at_capture", default=None)


# ----------------------------------------------------------------------------------- verl.workers.config.model
def thinker_post_init(original):
    """``HFModelConfig.__post_init__`` that swaps a full Omni config for its thinker config."""
    from verl_modality.models.family import family_of
    from verl_modality.models.omni import to_thinker_config

    @functools.wraps(original)
    def __post_init__(self):
        original(self)
        family = family_of(self.hf_config)
        if family is None or self.hf_config.model_type != family.full_model_type:
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

    __post_init__.__verl_modality__ = True
    return __post_init__


def patch_model_config(module) -> None:
    """``HFModelConfig.__post_init__``, and the module's by-name ``hf_processor`` (the Omni processor)."""
    import verl.utils.tokenizer as tokenizer_mod

    from verl_modality.integrations.verl_utils import patch_tokenizer

    patch_tokenizer(tokenizer_mod)
    module.hf_processor = tokenizer_mod.hf_processor
    cls = module.HFModelConfig
    if not getattr(cls.__post_init__, "__verl_modality__", False):
        cls.__post_init__ = thinker_post_init(cls.__post_init__)


# ---------------------------------------------------------------------- verl.workers.engine.fsdp.transformer_impl
def leaf_layer_build_module(original):
    """``FSDPEngine._build_module`` that gives a thinker the leaf-layer ``_no_split_modules`` and makes every forward
    run each of its encoders (:mod:`verl_modality.models.encoder_lockstep`)."""
    from verl_modality.models import encoder_lockstep
    from verl_modality.models.family import family_of

    @functools.wraps(original)
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

    _build_module.__verl_modality__ = True
    return _build_module


def patch_fsdp_engine(module) -> None:
    engine = module.FSDPEngine
    if not getattr(engine._build_module, "__verl_modality__", False):
        engine._build_module = leaf_layer_build_module(engine._build_module)


def unpinned_offload_policy(original):
    """``CPUOffloadPolicy`` as verl's FSDP2 engine builds it, without pinned memory (cpu platform only)."""

    @functools.wraps(original, updated=())
    def CPUOffloadPolicy(*args: Any, pin_memory: bool = True, **kwargs: Any):  # noqa: N802 (verl's name)
        return original(*args, pin_memory=False, **kwargs)

    CPUOffloadPolicy.__verl_modality__ = True
    return CPUOffloadPolicy


def patch_offload_policy(module) -> None:
    """verl shards forward-only engines (the reference policy) with ``CPUOffloadPolicy(pin_memory=True)``; pinning
    needs a CUDA driver, and on the CPU the parameters are in host memory already."""
    if not getattr(module.CPUOffloadPolicy, "__verl_modality__", False):
        module.CPUOffloadPolicy = unpinned_offload_policy(module.CPUOffloadPolicy)


def _knob(data: Any) -> dict | None:
    from verl.utils import tensordict_utils as tu

    value = tu.get_non_tensor_data(data=data, key=KNOB, default=None)
    return dict(value) if value else None


def patch_forward_step(module) -> None:
    """``FSDPEngineWithLMHead.forward_step`` captures q/k for MAPO-AT's attention loss on training micro-batches."""
    from verl_modality.models.attention_capture import AudioAttentionCapture, usable_layers

    cls = module.FSDPEngineWithLMHead
    if getattr(cls.forward_step, "__verl_modality__", False):
        return
    original = cls.forward_step

    @functools.wraps(original)
    def forward_step(self, micro_batch, loss_function, forward_only):
        knob = None if forward_only else _knob(micro_batch)
        if knob is None:
            return original(self, micro_batch, loss_function, forward_only)
        with AudioAttentionCapture(self.module, usable_layers(self.module, knob["layers"])) as capture:
            token = _ACTIVE.set(capture)
            try:
                return original(self, micro_batch, loss_function, forward_only)
            finally:
                _ACTIVE.reset(token)
                capture.clear()

    forward_step.__verl_modality__ = True
    cls.forward_step = forward_step


def patch_forward_backward_batch(module) -> None:
    """``FSDPEngine.forward_backward_batch`` adds the mini-batch's relevance-weight sum over all ranks (the
    ``token-mean`` denominator of the ``mapo_relevance`` loss, :func:`~verl_modality.algorithms.relevance.
    global_token_weights`) when the update carries MAPO-AT relevance weights."""
    cls = module.FSDPEngine
    if getattr(cls.forward_backward_batch, "__verl_modality__", False):
        return
    original = cls.forward_backward_batch

    @functools.wraps(original)
    def forward_backward_batch(self, data, loss_function, forward_only=False):
        from verl.utils import tensordict_utils as tu

        if forward_only or not tu.get_non_tensor_data(data=data, key=RELEVANCE_KNOB, default=False):
            return original(self, data, loss_function, forward_only)
        import torch

        from verl_modality.algorithms.relevance import weight_sum

        total = torch.tensor([weight_sum(data["rollout_is_weights"])], dtype=torch.float64)
        group = self.get_data_parallel_group()
        if torch.distributed.is_initialized() and torch.distributed.get_world_size(group) > 1:
            from verl.utils.device import get_device_id

            total = total.to(get_device_id())
            torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM, group=group)
        tu.assign_non_tensor(data, **{WEIGHT_SUM: float(total.item())})
        return original(self, data, loss_function, forward_only)

    forward_backward_batch.__verl_modality__ = True
    cls.forward_backward_batch = forward_backward_batch


# ------------------------------------------------------------------------ verl.workers.engine.base, engine_workers
def rebind_position_id_fix(module) -> None:
    """Modules that imported ``maybe_fix_3d_position_ids`` by name get the fixed one."""
    from verl.utils import tensordict_utils

    from verl_modality.integrations.verl_utils import patch_tensordict_utils

    patch_tensordict_utils(tensordict_utils)
    if not getattr(getattr(module, "maybe_fix_3d_position_ids", None), "__verl_modality__", True):
        module.maybe_fix_3d_position_ids = tensordict_utils.maybe_fix_3d_position_ids


def rebind_gloo_process_group(module) -> None:
    """``engine_workers`` imported ``initialize_global_process_group_ray`` by name before it could be wrapped."""
    import verl.utils.distributed as dist_utils

    from verl_modality.integrations.verl_utils import patch_distributed

    patch_distributed(dist_utils)
    module.initialize_global_process_group_ray = dist_utils.initialize_global_process_group_ray


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
    if mode != LOSS_MODE or getattr(config, "loss_agg_mode", None) != "token-mean" or "rollout_is_weights" not in data:
        return data
    total = tu.get_non_tensor_data(data=data, key=WEIGHT_SUM, default=None)
    if total is None:
        raise RuntimeError(
            f"policy loss {LOSS_MODE!r} with loss_agg_mode=token-mean needs the mini-batch's relevance-weight sum, "
            f"which the actor's engine adds ({WEIGHT_SUM}); is the plugin's FSDPEngine.forward_backward_batch patch "
            "installed (see `verl-modality doctor`)?"
        )
    scaled = data.copy()
    scaled["rollout_is_weights"] = global_token_weights(data["rollout_is_weights"], data["batch_num_tokens"], total)
    return scaled


def with_mapo_at(ppo_loss):
    """verl's ``ppo_loss`` with MAPO-AT's relevance weights as one global weighted mean under ``token-mean``
    (:func:`relevance_token_weights`), plus eta * L_attn when the batch asks for it (see the module docstring)."""
    if getattr(ppo_loss, "__verl_modality__", False):
        return ppo_loss

    @functools.wraps(ppo_loss)
    def loss_fn(config, model_output, data, dp_group=None):
        data = relevance_token_weights(config, data)
        loss, metrics = ppo_loss(config, model_output, data, dp_group)
        capture = _ACTIVE.get()
        knob = _knob(data)
        if capture is None or knob is None:
            return loss, metrics
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
            _padded(data["mapo_attn_content"]).bool().to(a.device),
            _padded(data["mapo_dh"]).float().to(a.device),
            _padded(data["mapo_attn_reward"])[:, 0].float().to(a.device),
            _padded(data["mapo_attn_adv"])[:, 0].float().to(a.device),
            kappa=float(knob["kappa"]),
            tau_base=float(knob["tau_base"]),
            c_mask=float(knob["c_mask"]),
            **dict(knob.get("loss_options") or {}),
        )
        share = attention_loss_share(data, len(lengths))
        loss = loss + float(knob["eta"]) * share * l_attn.to(loss.dtype)
        metrics.update({f"mapo_at/{k.split('/', 1)[1]}": v for k, v in attn_metrics.items()})
        return loss, metrics

    loss_fn.__verl_modality__ = True
    return loss_fn


def patch_ppo_loss(module) -> None:
    module.ppo_loss = with_mapo_at(module.ppo_loss)
