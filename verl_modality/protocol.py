"""The names that cross between the plugin's sides: dataset, rollout, reward, trainer (driver) and actor (worker).

One constant per key, each with its meaning and, in :data:`SIDES`, the modules that write and read it (checked by
tests/test_protocol.py). The values are wire names: checkpoints, TransferQueue fields and verl's own keys depend on
them, so they never change. ``docs/sample_route.md`` follows one sample through all of them.

* The dataset columns themselves (``modality_tag``, ``available``, ``stratum``, ``id``, ...) are the parquet schema's:
  :mod:`verl_modality.data.schema` names them (docs/data_schema.md). verl keeps every column next to each trajectory
  (``non_tensor_batch``, TransferQueue fields), so the trainer reads them as ``schema.MODALITY_TAG`` etc.
* Plain Python, no imports: the bottom of the import graph next to :mod:`verl_modality.vocabulary`, importable from
  the trainer, ``integrations/`` (worker processes), rewards, the rollout and data alike. Algorithms (pure math)
  take tensors, never keys.

Captured attention (MAPO-AT's attention loss, docs/method.md §5) does not travel by key: inside the actor's
``FSDPEngineWithLMHead.forward_step`` (patched by :func:`verl_modality.integrations.verl_workers.patch_forward_step`)
the training micro-batch's :class:`~verl_modality.models.attention_capture.AudioAttentionCapture` is set in the
ContextVar ``verl_workers._ACTIVE`` for exactly the duration of verl's forward step (set before, reset and cleared
after, in the same worker thread); verl's ``ppo_loss``, called inside that forward step, reads it
(:func:`verl_modality.integrations.verl_workers.with_mapo_at`). Only micro-batches whose update carries
:data:`MAPO_AT` are captured (a forward-only step of such a batch sets ``verl_workers.NO_CAPTURE``: no L_attn); a
training loss that gets :data:`MAPO_AT` but finds no capture raises instead of adding nothing.
"""

from __future__ import annotations

# ------------------------------------------------------------------ trainer -> actor: the update's settings
# (``KVBatchMeta.extra_info`` of the actor update; verl hands them to the worker as non-tensor data of the batch)

#: dict of MAPO-AT's attention-loss settings (layers, eta, kappa, tau_base, c_mask, audio_token_id, loss_options)
MAPO_AT = "mapo_at"
#: True when the update's ``rollout_is_weights`` are MAPO-AT relevance weights (loss mode ``mapo_relevance``)
MAPO_RELEVANCE = "mapo_relevance"
#: float added by the actor's engine to each mini-batch: the relevance-weight sum over all data-parallel ranks
MAPO_RELEVANCE_WEIGHT_SUM = "mapo_relevance_weight_sum"

# ------------------------------------------------------------- trainer -> actor: per-token trajectory fields
# (TransferQueue fields written next to each trajectory by the trainer, read by the actor's loss)

#: verl's importance-weight field; under MAPO-AT it carries the relevance weights w (docs/method.md §5)
RELEVANCE_WEIGHTS = "rollout_is_weights"
#: per response token: dh = H(audio-ablated) - H(full input), 0 for responses without audio
MAPO_DH = "mapo_dh"
#: per response token: 1.0 on content tokens (those L_attn averages over)
MAPO_ATTN_CONTENT = "mapo_attn_content"
#: per response token: the response's task reward, repeated
MAPO_ATTN_REWARD = "mapo_attn_reward"
#: per response token: the response's |A_i|, repeated
MAPO_ATTN_ADV = "mapo_attn_adv"

# ------------------------------------------------------------------- verl's own keys the plugin reads or sets

#: a prompt group's id (``non_tensor_batch`` / TransferQueue field); verl sets it after the loader, the curriculum
#: sets it on the batches it builds
UID = "uid"
#: per-token reward (TransferQueue field), summed to a response's score
RM_SCORES = "rm_scores"
#: per-trajectory dict (TransferQueue field) from the agent loop and the reward loop
EXTRA_FIELDS = "extra_fields"
#: the reward function's result dict, inside :data:`EXTRA_FIELDS` and a reward manager's output
REWARD_EXTRA_INFO = "reward_extra_info"
#: TransferQueue tag of a row verl added to fill a batch; True rows are left out of statistics
IS_PADDING = "is_padding"

# ---------------------------------------------------------------- dataset / rollout -> reward: extra_info keys
# (the reward function receives only ``extra_info``, so the row's facts it needs are copied there)

#: the row's id (repeats the ``id`` column)
INFO_ID = "id"
#: the row's required modality tag (repeats the ``modality_tag`` column)
INFO_MODALITY_TAG = "modality_tag"
#: the row's task, ``qa`` or ``caption`` (repeats the ``task`` column)
INFO_TASK = "sample_task"
#: the option texts (repeats the ``choices`` column)
INFO_CHOICES = "choices"
#: 0-based index of the none-answer option, -1 for none (written by ``augment-qa``)
INFO_NONE_INDEX = "none_index"
#: the correct option's text (written by the converters)
INFO_ANSWER_TEXT = "answer_text"
#: ``{stream: caption}`` uni-modal references of a caption row
INFO_REFERENCE_CAPTIONS = "reference_captions"
#: the response's valid length in tokens (set by the ``modality`` reward manager)
INFO_RESPONSE_TOKENS = "response_tokens"
#: the deficit twin's response (``modality_agent`` agent loop), the contrastive reward's negative; None when skipped
DEFICIT_RESPONSE = "deficit_response"
#: the streams the deficit twin showed, or None
DEFICIT_STREAMS = "deficit_streams"
#: why a row has no deficit response, or None
DEFICIT_SKIP_REASON = "deficit_skip_reason"

# ---------------------------------------------------------------- dataset -> rollout: keys of a media item

#: the row's id on each video / audio item, so a decoding error in an agent-loop worker names the sample
MEDIA_SAMPLE_ID = "sample_id"
#: True on a video / audio item whose content is replaced by silence / black frames (``data.modality`` blank)
MEDIA_BLANK = "blank"

# ----------------------------------------------------------------- reward -> trainer: reward_extra_info keys

#: the response's correctness (QA) or judge score (caption); None when the judge failed
REWARD_ACC = "acc"
#: 1.0 when the caption judge failed (the score is then NaN, handled by the trainer), else 0.0
REWARD_JUDGE_FAILED = "judge_failed"

_T = "verl_modality.trainer"
_R = "verl_modality.rewards"
#: ``{constant: (writers, readers)}``: the modules on each side ("verl" for verl's own code); every named module
#: uses the constant (tests/test_protocol.py)
SIDES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "MAPO_AT": ((f"{_T}.features.mapo_at_pass",), ("verl_modality.integrations.verl_workers",)),
    "MAPO_RELEVANCE": ((f"{_T}.features.mapo_at_pass",), ("verl_modality.integrations.verl_workers",)),
    "MAPO_RELEVANCE_WEIGHT_SUM": (
        ("verl_modality.integrations.verl_workers",),
        ("verl_modality.integrations.verl_workers",),
    ),
    "RELEVANCE_WEIGHTS": ((f"{_T}.features.mapo_at_pass",), ("verl_modality.integrations.verl_workers",)),
    "MAPO_DH": ((f"{_T}.features.mapo_at_pass",), ("verl_modality.integrations.verl_workers",)),
    "MAPO_ATTN_CONTENT": ((f"{_T}.features.mapo_at_pass",), ("verl_modality.integrations.verl_workers",)),
    "MAPO_ATTN_REWARD": ((f"{_T}.features.mapo_at_pass",), ("verl_modality.integrations.verl_workers",)),
    "MAPO_ATTN_ADV": ((f"{_T}.features.mapo_at_pass",), ("verl_modality.integrations.verl_workers",)),
    "UID": (
        ("verl", f"{_T}.features.curriculum_steps"),
        (f"{_T}.features.tag_validation", "verl_modality.rollout.deficit_agent_loop"),
    ),
    "RM_SCORES": (
        ("verl", f"{_T}.features.failed_rewards"),
        (f"{_T}.features.tag_flow", f"{_T}.features.mapo_at_pass", f"{_T}.features.zero_variance"),
    ),
    "EXTRA_FIELDS": (("verl", f"{_T}.features.failed_rewards"), (f"{_T}.features.zero_variance",)),
    "REWARD_EXTRA_INFO": (
        ("verl", f"{_T}.features.failed_rewards"),
        (f"{_R}.reward_manager", f"{_T}.features.zero_variance"),
    ),
    "IS_PADDING": (("verl",), (f"{_T}.features.tag_flow",)),
    "INFO_ID": (
        ("verl_modality.data.schema",),
        (f"{_R}.score", f"{_R}.choice", f"{_R}.caption_judge", f"{_R}.reward_manager"),
    ),
    "INFO_MODALITY_TAG": (("verl_modality.data.schema",), (f"{_R}.caption_judge",)),
    "INFO_TASK": (
        ("verl_modality.data.schema",),
        (f"{_R}.score", f"{_R}.choice", f"{_R}.caption_judge", "verl_modality.rollout.deficit_agent_loop"),
    ),
    "INFO_CHOICES": (("verl_modality.data.schema",), (f"{_R}.choice",)),
    "INFO_NONE_INDEX": (("verl_modality.data.augmentation",), (f"{_R}.choice",)),
    "INFO_ANSWER_TEXT": (("verl_modality.data.converters.fields",), (f"{_R}.choice",)),
    "INFO_REFERENCE_CAPTIONS": (("verl_modality.data.synthetic",), (f"{_R}.caption_judge",)),
    "INFO_RESPONSE_TOKENS": ((f"{_R}.reward_manager",), ("verl",)),
    "DEFICIT_RESPONSE": (("verl_modality.rollout.deficit_agent_loop",), (f"{_R}.score",)),
    "DEFICIT_STREAMS": (("verl_modality.rollout.deficit_agent_loop",), ("verl",)),
    "DEFICIT_SKIP_REASON": (("verl_modality.rollout.deficit_agent_loop",), ("verl",)),
    "MEDIA_SAMPLE_ID": (
        ("verl_modality.data.dataset", "verl_modality.rollout.deficit_agent_loop"),
        ("verl_modality.data.dataset",),
    ),
    "MEDIA_BLANK": (("verl_modality.data.modality_view",), ("verl_modality.data.dataset",)),
    "REWARD_ACC": ((f"{_R}.score", f"{_R}.choice"), (f"{_T}.features.tag_validation",)),
    "REWARD_JUDGE_FAILED": (
        (f"{_R}.score", f"{_R}.caption_judge"),
        (
            f"{_R}.reward_manager",
            f"{_T}.features.failed_rewards",
            f"{_T}.features.tag_validation",
        ),
    ),
}
