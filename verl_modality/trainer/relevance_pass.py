"""The audio-ablated pass of MAPO-AT (docs/method.md §5): the step's responses scored once more with the audio dropped.

Each trajectory that shows audio is rebuilt from its dataset columns without the audio
(:func:`verl_modality.models.twin_inputs.twin_row`; removed, or silenced with ``ablation="blank"``), laid out exactly
as verl's agent loop lays out a trajectory, and put into a separate TransferQueue partition; one no-grad
``compute_log_prob`` of the actor (the old policy) gives its per-token entropies. dh = H(ablated) - H(full input)
then feeds the relevance weights. Trajectories without audio go through the same pass unchanged (verl's micro-batching wants the whole batch) and
keep dh = 0, i.e. uniform weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from verl_modality.data import schema
from verl_modality.models.omni import compute_position_ids
from verl_modality.models.twin_inputs import encode_row, shown_row, twin_row

TWIN_PARTITION = "verl_modality_twin"
#: Dataset columns a twin is rebuilt from (verl stores every dataset column next to each trajectory).
ROW_FIELDS = (
    schema.ID,
    schema.DATA_SOURCE,
    schema.PROMPT,
    schema.SUBTITLE,
    schema.QUESTION,
    schema.CHOICES,
    schema.ANSWER,
    schema.MODALITY_TAG,
    schema.MEDIA_STREAMS,
    schema.AVAILABLE,
    schema.STRATUM,
    schema.TASK,
    schema.MEDIA,
    schema.EXTRA_INFO,
)


def as_list(value: Any) -> list:
    """A TransferQueue non-tensor column (NonTensorStack, numpy array, list) as a plain list."""
    if hasattr(value, "tolist"):
        return list(value.tolist())
    return list(value)


def twin_trajectory(
    row: Mapping[str, Any],
    response_ids: Sequence[int],
    response_mask: torch.Tensor,
    processor: Any,
    data_config: Any = None,
    ablation: str = "remove",
    cache: dict | None = None,
    drop: str = "A",
) -> dict[str, Any]:
    """One trajectory's fields, as verl's agent loop stores them, for ``row`` without ``drop`` and the same response
    (``drop=""``: the row as it is).

    ``cache`` (keyed by sample id, shown streams and drop) shares the encoded prompt among the responses of a group.
    """
    key = (str(row[schema.ID]), str(row[schema.AVAILABLE]), ablation, drop)
    encoded = cache.get(key) if cache is not None else None
    if encoded is None:
        encoded = encode_row(twin_row(row, drop, ablation) if drop else shown_row(row), processor, data_config)
        if cache is not None:
            cache[key] = encoded
    prompts = encoded.input_ids.long()
    responses = torch.as_tensor(list(response_ids), dtype=torch.long)
    input_ids = torch.cat([prompts, responses])
    attention_mask = torch.ones_like(input_ids)
    position_ids = compute_position_ids(processor, input_ids, attention_mask, encoded.multi_modal_inputs)
    mask = response_mask.long()
    return {
        "prompts": prompts,
        "responses": responses,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "multi_modal_inputs": dict(encoded.multi_modal_inputs),
        "response_mask": mask,
        "loss_mask": mask,
    }
