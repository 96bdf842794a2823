"""Model inputs for an Omni thinker, built the way verl's agent loop builds them.

A prompt is rendered with the processor's chat template and run through verl's own
``build_multimodal_processor_inputs`` (so placeholder expansion, audio features and video patches are exactly what a
rollout produces); a batch for verl's actor is then laid out as verl lays out trajectories: left-padded prompts,
right-padded responses, ``(bs, 4, L)`` multimodal RoPE positions and per-sample ``multi_modal_inputs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict

from verl_modality.models.omni import compute_position_ids


@dataclass
class EncodedPrompt:
    """One rendered prompt: ``input_ids`` ``(P,)`` and the processor's multimodal outputs for it."""

    input_ids: torch.Tensor
    multi_modal_inputs: dict[str, torch.Tensor]
    text: str


def encode_prompt(
    processor: Any,
    messages: list[dict],
    images: Sequence[Any] | None = None,
    videos: Sequence[Any] | None = None,
    audios: Sequence[Any] | None = None,
    mm_processor_kwargs: dict | None = None,
) -> EncodedPrompt:
    """Render ``messages`` (structured content, as verl's dataset yields them) and process the media."""
    from verl.utils.tokenizer import build_multimodal_processor_inputs

    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    out = build_multimodal_processor_inputs(
        processor,
        text=[text],
        images=list(images) if images else None,
        videos=list(videos) if videos else None,
        audio=list(audios) if audios else None,
        mm_processor_kwargs=mm_processor_kwargs,
    )
    input_ids = out.pop("input_ids")[0].long()
    out.pop("attention_mask", None)
    mm = dict(out.convert_to_tensors("pt")) if hasattr(out, "convert_to_tensors") else dict(out)
    return EncodedPrompt(input_ids=input_ids, multi_modal_inputs=mm, text=text)


def build_actor_batch(
    processor: Any,
    prompts: Sequence[EncodedPrompt],
    responses: Sequence[Sequence[int]],
    pad_token_id: int,
    extra: dict[str, Any] | None = None,
) -> TensorDict:
    """verl's trajectory layout for ``len(prompts)`` (prompt, response) pairs.

    Returns a TensorDict with ``prompts`` ``(bs, P)`` (left padded), ``responses`` ``(bs, R)`` (right padded),
    ``input_ids``/``attention_mask`` ``(bs, P+R)``, ``position_ids`` ``(bs, 4, P+R)``, ``response_mask`` ``(bs, R)``
    and ``multi_modal_inputs`` (one dict per row). ``extra`` adds further per-row fields.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        raise ValueError("empty batch")
    if any(len(r) == 0 for r in responses):
        raise ValueError("every response needs at least one token")
    bs = len(prompts)
    p_len = max(int(p.input_ids.numel()) for p in prompts)
    r_len = max(len(r) for r in responses)
    prompt_ids = torch.full((bs, p_len), pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((bs, p_len), dtype=torch.long)
    response_ids = torch.full((bs, r_len), pad_token_id, dtype=torch.long)
    response_mask = torch.zeros((bs, r_len), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        n = int(p.input_ids.numel())
        prompt_ids[i, p_len - n :] = p.input_ids
        prompt_mask[i, p_len - n :] = 1
        response_ids[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        response_mask[i, : len(r)] = 1
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    position_ids = torch.stack(
        [
            compute_position_ids(processor, input_ids[i], attention_mask[i], prompts[i].multi_modal_inputs)
            for i in range(bs)
        ]
    )
    from verl.utils import tensordict_utils as tu

    fields: dict[str, Any] = {
        "prompts": prompt_ids,
        "responses": response_ids,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "response_mask": response_mask,
        "multi_modal_inputs": [dict(p.multi_modal_inputs) for p in prompts],
    }
    fields.update(extra or {})
    return tu.get_tensordict(fields)
