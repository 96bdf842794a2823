"""MAPO-AT in the trainer (docs/method.md §5): the audio-ablated pass after verl's old log-probs, and the
attention loss's per-response inputs after the advantages.

* :meth:`MapoATPass.relevance_pass`: each response is scored once more with its audio dropped (one no-grad actor
  pass over twin trajectories, :mod:`verl_modality.trainer.relevance_pass`); dh = H(ablated) - H(full) gives the
  relevance weights, written as ``rollout_is_weights`` for the ``mapo_relevance`` policy loss, and (with the attention
  loss) dh and the content-token mask for the actor; ``mapo_at/*`` metrics.
* :meth:`MapoATPass.attention_loss_inputs`: the task reward and |A_i| per response, repeated over its tokens.
* :meth:`MapoATPass.update_settings`: what the actor reads from the update's ``extra_info`` (the relevance flag, the
  attention loss's settings).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from omegaconf import OmegaConf

from verl_modality import protocol
from verl_modality.algorithms.config import MapoATConfig
from verl_modality.algorithms.relevance import LOSS_MODE, relevance_metrics, relevance_weights


def _nested(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.nested.as_nested_tensor(values, layout=torch.jagged)


class MapoATPass:
    """``algorithm.mapo_at``: checked against the policy loss when the trainer is built."""

    label = "MAPO-AT"

    def __init__(self, config: Any):
        self.config = MapoATConfig.from_algorithm_config(config.algorithm)
        self.enabled = self.config.enabled
        self.attention_loss = self.config.attention_loss
        loss_mode = OmegaConf.select(config, "actor_rollout_ref.actor.policy_loss.loss_mode", default="vanilla")
        if self.config.relevance_mask != (loss_mode == LOSS_MODE):
            raise ValueError(
                f"algorithm.mapo_at.relevance_mask={self.config.relevance_mask} needs "
                f"actor_rollout_ref.actor.policy_loss.loss_mode={LOSS_MODE} and the other way round "
                f"(loss_mode is {loss_mode!r})"
            )
        if self.config.relevance_mask and OmegaConf.select(config, "algorithm.rollout_correction.rollout_is"):
            raise ValueError(
                "algorithm.mapo_at.relevance_mask passes its weights as rollout_is_weights; it cannot be combined "
                "with algorithm.rollout_correction.rollout_is"
            )

    @property
    def labels(self) -> list[str]:
        return [self.label] if self.enabled else []

    def ablated_entropies(
        self,
        store: Any,
        batch: Any,
        rows: list[dict],
        responses: list[torch.Tensor],
        masks: list[torch.Tensor],
        audio: list[int],
        compute_log_prob: Callable[[Any], Any],
        processor: Any,
        data_config: Any,
        temperature: float,
    ) -> list[torch.Tensor]:
        """Per-token entropies of every trajectory rebuilt without its audio (rows in ``audio``) or as it is (the
        others: verl's micro-batching needs the batch's size), from one ``compute_log_prob`` of the actor."""
        from transfer_queue import KVBatchMeta
        from verl.utils.tensordict_utils import list_of_dict_to_tensordict
        from verl.workers.utils.padding import response_from_nested

        from verl_modality.trainer import relevance_pass as rp

        cache: dict = {}
        with_audio = set(audio)
        twins = [
            rp.twin_trajectory(
                rows[i],
                responses[i].tolist(),
                masks[i],
                processor,
                data_config,
                self.config.ablation,
                cache,
                drop="A" if i in with_audio else "",
            )
            for i in range(len(rows))
        ]
        keys = list(batch.keys)
        tags = [{"status": "success"} for _ in keys]
        store.kv_batch_put(
            keys=keys, partition_id=rp.TWIN_PARTITION, fields=list_of_dict_to_tensordict(twins), tags=tags
        )
        try:
            extra = {"calculate_entropy": True, "compute_loss": False, "temperature": temperature}
            compute_log_prob(KVBatchMeta(keys=keys, tags=tags, partition_id=rp.TWIN_PARTITION, extra_info=extra))
            out = store.kv_batch_get(
                keys=keys, partition_id=rp.TWIN_PARTITION, select_fields=["entropy", "response_mask"]
            )
            return list(response_from_nested(out["entropy"], out["response_mask"]).unbind())
        finally:
            store.kv_clear(keys=keys, partition_id=rp.TWIN_PARTITION)

    def relevance_pass(
        self,
        store: Any,
        batch: Any,
        compute_log_prob: Callable[[Any], Any],
        processor: Any,
        tokenizer: Any,
        data_config: Any,
        temperature: float,
    ) -> dict[str, float]:
        """Writes the relevance weights (and the attention loss's dh and content mask) next to the step's
        trajectories; returns the ``mapo_at/*`` metrics."""
        from tensordict import TensorDict
        from verl.workers.utils.padding import response_to_nested

        from verl_modality.data import schema
        from verl_modality.trainer import relevance_pass as rp

        fields = [*rp.ROW_FIELDS, "responses", "response_mask", "entropy"]
        data = store.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        columns = {f: rp.as_list(data[f]) for f in rp.ROW_FIELDS}
        rows = [{f: columns[f][i] for f in rp.ROW_FIELDS} for i in range(len(batch))]
        responses = list(data["responses"].unbind())
        masks = list(data["response_mask"].unbind())
        h_full = data["entropy"].unbind()
        dh = [torch.zeros_like(h, dtype=torch.float32) for h in h_full]
        audio = [i for i, row in enumerate(rows) if "A" in str(row[schema.AVAILABLE])]
        if audio:
            h_ablated = self.ablated_entropies(
                store, batch, rows, responses, masks, audio, compute_log_prob, processor, data_config, temperature
            )
            for i in audio:
                dh[i] = (h_ablated[i].float() - h_full[i].float()).detach()
        mask_nested = data["response_mask"]
        dh_padded = _nested(dh).to_padded_tensor(0.0)
        mask_padded = mask_nested.to_padded_tensor(0)
        weights = relevance_weights(dh_padded, mask_padded, self.config.tau_base, self.config.c_mask)
        out = {}
        if self.config.relevance_mask:
            out[protocol.RELEVANCE_WEIGHTS] = response_to_nested(weights, mask_nested)
        if self.attention_loss:
            from verl_modality.models.content_tokens import content_token_mask

            responses_padded = data["responses"].to_padded_tensor(tokenizer.pad_token_id or 0)
            content = content_token_mask(responses_padded, tokenizer, mask_padded.bool()).float()
            out[protocol.MAPO_DH] = response_to_nested(dh_padded, mask_nested)
            out[protocol.MAPO_ATTN_CONTENT] = response_to_nested(content, mask_nested)
        store.kv_batch_put(
            keys=batch.keys, partition_id=batch.partition_id, fields=TensorDict(out, batch_size=len(batch))
        )
        metrics = relevance_metrics(dh_padded, weights, mask_padded)
        metrics["mapo_at/audio_fraction"] = len(audio) / max(1, len(batch))
        return metrics

    def attention_loss_inputs(self, store: Any, batch: Any) -> Any:
        """Task reward and |A_i| per response, repeated over its tokens; returns the batch meta that lists the new
        fields (the actor reads the fields a meta lists)."""
        from tensordict import TensorDict

        data = store.kv_batch_get(
            keys=batch.keys,
            partition_id=batch.partition_id,
            select_fields=[protocol.RM_SCORES, "advantages", "response_mask"],
        )
        reward = [float(r.sum()) for r in data[protocol.RM_SCORES].unbind()]
        adv = [float(a.abs().max()) if a.numel() else 0.0 for a in data["advantages"].unbind()]
        masks = data["response_mask"].unbind()
        fields = {
            protocol.MAPO_ATTN_REWARD: _nested(
                [torch.full((m.numel(),), r) for m, r in zip(masks, reward, strict=True)]
            ),
            protocol.MAPO_ATTN_ADV: _nested([torch.full((m.numel(),), a) for m, a in zip(masks, adv, strict=True)]),
        }
        return store.kv_batch_put(
            keys=batch.keys, partition_id=batch.partition_id, fields=TensorDict(fields, batch_size=len(batch))
        )

    def update_settings(self, tokenizer: Any) -> dict[str, Any]:
        """What the actor update's ``extra_info`` gets: the relevance flag (the engine then sums the mini-batch's
        weights for the ``token-mean`` weighted mean) and the attention loss's settings; nothing when MAPO-AT is off."""
        out: dict[str, Any] = {}
        if self.enabled and self.config.relevance_mask:
            out[protocol.MAPO_RELEVANCE] = True
        if self.attention_loss:
            out[protocol.MAPO_AT] = self.actor_settings(tokenizer)
        return out

    def actor_settings(self, tokenizer: Any) -> dict[str, Any]:
        """``extra_info[protocol.MAPO_AT]`` of the actor update: what :mod:`verl_modality.integrations.verl_workers`
        reads."""
        from verl_modality.models.omni import placeholder_token_ids

        at = self.config
        return {
            "layers": list(at.layers),
            "eta": at.eta,
            "kappa": at.kappa,
            "tau_base": at.tau_base,
            "c_mask": at.c_mask,
            "audio_token_id": placeholder_token_ids(tokenizer)["audio"],
            # keyword arguments of verl_modality.algorithms.attention_loss.attention_loss
            "loss_options": {
                "advantage_floor_eps": at.advantage_floor_eps,
                "reduction": at.attn_loss_reduction,
                "content_fallback": at.content_fallback,
            },
        }
