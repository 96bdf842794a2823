"""Twin inputs: the same prompts and responses, with some streams removed or blanked, laid out for verl's actor.

MAPO-AT's relevance mask scores every response a second time without its audio, and audio-contribution filtering
compares answers with and without the audio; both need "this batch, but under another stream set". A twin is built
from the sample rows (the dataset columns, which verl carries next to every trajectory) by the same transform the
dataset applies before the rollout (:func:`verl_modality.data.modality_view.apply_view`), then rendered, decoded and
processed exactly as verl's agent loop does, so a forward on it differs from the original only in the dropped streams.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from tensordict import TensorDict

from verl_modality import vocabulary
from verl_modality.data import schema
from verl_modality.data.modality_view import ModalityView, apply_view
from verl_modality.models.omni_inputs import EncodedPrompt, build_actor_batch, encode_prompt


def twin_row(row: Mapping[str, Any], drop: str, ablation: str = "remove") -> dict[str, Any]:
    """``row`` (as the policy saw it) showing ``available`` minus ``drop``; every unshown stream in ``ablation`` form.

    ``drop`` is a stream set (``"A"``, ``"VA"``); dropping a stream the row does not show is an error.
    """
    drop = vocabulary.canonical_tag(drop)
    shown = vocabulary.canonical_tag(row[schema.AVAILABLE], allow_empty=True)
    absent = set(drop) - set(shown)
    if absent:
        raise ValueError(
            f"sample {row.get(schema.ID)!r} shows {shown or 'no streams'!r}; cannot drop {''.join(sorted(absent))!r}"
        )
    target = "".join(s for s in shown if s not in drop)
    return apply_view(row, ModalityView(policy=target or "none", ablation=ablation))


def shown_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with its prompt and media lists rebuilt from the record for the streams it shows (removal form).

    verl's dataset drops the ``videos``/``audios`` columns from what it hands on; this restores them from ``media``.
    """
    sample = schema.Sample.from_row(row).with_available(str(row[schema.AVAILABLE]))
    out = dict(row)
    out[schema.VIDEOS] = [{"video": p} for p in sample.videos]
    out[schema.AUDIOS] = [{"audio": p} for p in sample.audios]
    out[schema.PROMPT] = sample.prompt
    return out


def structured_messages(row: Mapping[str, Any], processor: Any) -> list[dict]:
    """The chat messages verl's dataset builds for ``row`` (its own ``RLHFDataset._build_messages``)."""
    from verl.utils.dataset.rl_dataset import RLHFDataset

    keys = SimpleNamespace(image_key="images", video_key=schema.VIDEOS, audio_key=schema.AUDIOS, processor=processor)
    example = {**row, schema.PROMPT: [dict(m) for m in row[schema.PROMPT]]}
    return RLHFDataset._build_messages(keys, example, schema.PROMPT)


def encode_row(row: Mapping[str, Any], processor: Any, data_config: Any = None) -> EncodedPrompt:
    """Render, decode (blank items become silence / black frames) and process one row as the rollout does."""
    from verl_modality.data.dataset import OmniRLDataset

    messages = structured_messages(row, processor)
    _, videos, audios = OmniRLDataset._process_multi_modal_info(messages, None, data_config)
    return encode_prompt(processor, messages, videos=videos, audios=audios)


def build_twin_batch(
    processor: Any,
    rows: Sequence[Mapping[str, Any]],
    responses: Sequence[Sequence[int]],
    drop: str,
    ablation: str = "remove",
    data_config: Any = None,
    pad_token_id: int | None = None,
) -> TensorDict:
    """verl's actor layout (see :func:`build_actor_batch`) for ``rows`` without ``drop``, with the given responses.

    ``rows[i]`` is the i-th sample as the policy saw it (dataset columns after the modality view) and
    ``responses[i]`` its response token ids. Shapes: ``input_ids`` ``(bs, P'+R)``, ``position_ids``
    ``(bs, 4, P'+R)``, ``responses`` ``(bs, R)``; under ``blank`` P' equals the original prompt length.
    """
    if len(rows) != len(responses):
        raise ValueError(f"{len(rows)} rows but {len(responses)} responses")
    if pad_token_id is None:
        pad_token_id = processor.tokenizer.pad_token_id
    prompts = [encode_row(twin_row(row, drop, ablation), processor, data_config) for row in rows]
    return build_actor_batch(processor, prompts, responses, pad_token_id)
