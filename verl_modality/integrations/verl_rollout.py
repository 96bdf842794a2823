"""Changes to ``verl.workers.rollout.vllm_rollout`` for the Omni families (other processors and models go through
verl's functions unchanged):

* ``vllm_async_server``: the prompt verl keeps has expanded audio / video / image placeholder runs; vLLM needs one
  placeholder per item (:func:`~verl_modality.models.omni.collapse_placeholders`), and the policy must never sample a
  placeholder.
* ``vllm_async_server.vLLMHttpServer.collective_rpc``: a failed engine call is recorded for the trainer's watchdog
  (:func:`record_engine_call_failures`; any model).
* ``vllm_rollout.ServerAdapter.update_weights``: the thinker's state dict has bare names (``model.*``); vLLM's Omni
  models load the full checkpoint layout (``thinker.model.*``, experts one by one). Unmerged LoRA adapters keep
  PEFT's prefix in front of that name (``base_model.model.thinker.model.*.lora_A.weight``), which vLLM maps onto its
  language model's modules; adapters on an encoder, which vLLM would drop, are refused.
"""

from __future__ import annotations

from verl_modality.integrations.patching import add, wrap

#: the engine call the trainer's watchdog makes to see whether an engine is alive (vLLM workers' ``check_health``)
PROBE = "check_health"


def patch_vllm_server(module) -> None:
    """verl's vLLM server: collapse Omni placeholder runs, and never sample Omni placeholders."""
    wrap(module, "qwen2_5_vl_dedup_image_tokens", omni_dedup)
    wrap(module, "get_vision_placeholder_token_ids", omni_never_sampled)


def omni_dedup(dedup):
    """verl's placeholder dedup; an Omni processor's placeholder runs collapse to one per item."""
    from verl_modality.models.omni import collapse_placeholders

    def qwen2_5_vl_dedup_image_tokens(prompt_ids, processor):
        if getattr(processor, "verl_modality_omni", False):
            # Ids were resolved once by configure_processor; this runs on every rollout request.
            ids = (processor.audio_token_id, processor.image_token_id, processor.video_token_id)
            return collapse_placeholders(prompt_ids, ids)
        return dedup(prompt_ids, processor)

    return qwen2_5_vl_dedup_image_tokens


def omni_never_sampled(banned):
    """verl's never-sampled token ids; an Omni processor's are all its placeholders."""
    from verl_modality.models.omni import never_sample_token_ids

    def get_vision_placeholder_token_ids(processor):
        if getattr(processor, "verl_modality_omni", False):
            return never_sample_token_ids(processor)
        return banned(processor)

    return get_vision_placeholder_token_ids


def patch_vllm_adapter(module) -> None:
    """verl's vLLM rollout adapter: send thinker weights under the full-checkpoint names vLLM loads."""
    wrap(module.ServerAdapter, "update_weights", thinker_weight_names)


def thinker_weight_names(original):
    """``ServerAdapter.update_weights`` that renames a full Omni checkpoint's thinker weights for vLLM."""
    from verl_modality.models.family import family_of
    from verl_modality.models.omni import vllm_weights

    async def update_weights(self, weights, *args, **kwargs):
        hf_config = getattr(self.model_config, "hf_config", None)
        family = family_of(hf_config)
        if family is not None and hf_config.model_type == family.thinker_model_type:
            if kwargs.get("peft_config") and kwargs.get("base_sync_done"):
                weights = list(weights)  # adapters only: small, and checked before vLLM starts receiving
                refuse_encoder_adapters(name for name, _ in weights)
            if hasattr(self.model_config, "omni_full_config"):
                weights = vllm_weights(weights, hf_config)
        return await original(self, weights, *args, **kwargs)

    return update_weights


def refuse_encoder_adapters(names) -> None:
    """vLLM applies LoRA adapters to an Omni thinker's language model only; adapters on an encoder would be dropped
    without a word, and the rollout would sample from another policy than the actor's."""
    from verl_modality.models.lora import encoder_adapters

    encoders = encoder_adapters(names)
    if encoders:
        raise ValueError(
            f"LoRA adapters on the thinker's encoders ({', '.join(encoders[:3])}, {len(encoders)} modules) are not "
            "applied by vLLM: send merged weights (actor_rollout_ref.model.lora.merge=true) or keep the encoders "
            "out of actor_rollout_ref.model.exclude_modules' reach (its default on an Omni thinker)"
        )


def record_engine_call_failures(module) -> None:
    """verl's vLLM server remembers the last engine call (``collective_rpc``) that failed, and answers
    ``engine_call_failure()`` with it (None while none has), for the trainer's watchdog.

    A weight sync runs such a call (``update_weights_from_ipc``) beside a sender that waits for every bucket to be
    received: when the call fails in vLLM's worker, verl's sender waits forever, and neither the server nor the
    engine dies. The failure is re-raised unchanged.
    """
    wrap(module.vLLMHttpServer, "collective_rpc", recorded_failures)
    add(module.vLLMHttpServer, "engine_call_failure", engine_call_failure)


async def engine_call_failure(self) -> str | None:
    """The last failed engine call of this server (the watchdog's probe aside), None while none has failed."""
    return getattr(self, "_verl_modality_failure", None)


def recorded_failures(original):
    """``vLLMHttpServer.collective_rpc`` that remembers a failed call for :func:`engine_call_failure`."""

    async def collective_rpc(self, method, *args, **kwargs):
        try:
            return await original(self, method, *args, **kwargs)
        except BaseException as err:
            name = method if isinstance(method, str) else getattr(method, "__name__", repr(method))
            if name != PROBE:  # the watchdog reads its own probe's failure from the probe
                self._verl_modality_failure = f"{name} failed: {type(err).__name__}: {err}"
            raise

    return collective_rpc
