"""verl reward manager ``modality``: verl's naive reward manager plus the response length, and loud non-finite scores.

verl 0.9.1 builds the reward manager in each reward-loop worker with
``verl.trainer.ppo.reward.load_reward_manager``: ``reward.reward_manager.source=register`` (the default) looks
``reward.reward_manager.name`` (default ``naive``) up in ``verl.experimental.reward_loop.reward_manager``'s registry.
Select this one with the override::

    reward.reward_manager.name=modality

The plugin registers it when verl imports that registry (``verl_modality/_register.py``), so it exists in every
worker process. Compared with ``naive`` it

* puts the valid response length in tokens (the response's attention-mask sum, what the naive manager decodes)
  into ``extra_info["response_tokens"]`` before calling ``compute_score`` (on a copy: rows repeated for the n
  responses of one prompt share one ``extra_info`` dict), and into the returned ``reward_extra_info`` as
  ``response_tokens``, so that it reaches verl's logged reward extras (docs/method.md §7: accuracy by response length);
* raises ``FloatingPointError`` naming the sample (``extra_info["id"]``) and ``data_source`` when the score is NaN or
  infinite, except when the result dict carries ``judge_failed == 1.0`` (the caption judge's ``mark`` policy: the
  trainer handles those samples).

Everything else (decoding, ``compute_score`` arguments, sync/async score functions, the reward router) is the naive
manager's own code.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from verl import DataProto
from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager

from verl_modality import protocol
from verl_modality.data import schema

NAME = "modality"


def valid_response_length(data: DataProto) -> int:
    """Valid tokens of the last item's response: the response part of its attention mask, summed (as verl's naive
    manager computes it). ``data.batch["responses"]``: (B, R); ``data.batch["attention_mask"]``: (B, P + R)."""
    item = data[-1]
    response_length = item.batch["responses"].shape[-1]
    return int(item.batch["attention_mask"][-response_length:].sum())


class ModalityRewardManager(NaiveRewardManager):
    """``naive`` plus ``extra_info["response_tokens"]`` and an error on non-finite scores (see the module doc)."""

    async def run_single(self, data: DataProto) -> dict:
        item = data[-1:]  # the naive manager scores the last sequence only
        n_tokens = valid_response_length(item)
        info = item.non_tensor_batch.get(schema.EXTRA_INFO)
        extra_info = dict(info[0]) if info is not None and info[0] is not None else {}
        extra_info[protocol.INFO_RESPONSE_TOKENS] = n_tokens
        item.non_tensor_batch[schema.EXTRA_INFO] = np.array([extra_info], dtype=object)

        out = await super().run_single(item)
        out[protocol.REWARD_EXTRA_INFO][protocol.INFO_RESPONSE_TOKENS] = n_tokens
        _check_finite(out, extra_info, item.non_tensor_batch[schema.DATA_SOURCE][0])
        return out


def _check_finite(out: dict[str, Any], extra_info: dict[str, Any], data_source: Any) -> None:
    score = out["reward_score"]
    try:
        finite = math.isfinite(float(score))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"reward of sample {extra_info.get(protocol.INFO_ID)!r} (data_source {data_source!r}) is not a number: {score!r}"
        ) from exc
    if finite:
        return
    judge_failed = out[protocol.REWARD_EXTRA_INFO].get(protocol.REWARD_JUDGE_FAILED)
    if judge_failed is not None and float(judge_failed) == 1.0:
        return
    raise FloatingPointError(
        f"reward of sample {extra_info.get(protocol.INFO_ID)!r} (data_source {data_source!r}) is {score}: the reward function "
        f"returned a non-finite score without judge_failed=1.0"
    )


def register_manager(module=None) -> str:
    """Register :class:`ModalityRewardManager` as ``modality`` in verl's reward-loop registry (idempotent)."""
    register(NAME)(ModalityRewardManager)
    return NAME


register_manager()
