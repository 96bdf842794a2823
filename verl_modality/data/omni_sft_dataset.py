"""SFT dataset for the Qwen2.5-Omni thinker (``data.custom_cls``: ``pkg://verl_modality.data.omni_sft_dataset``).

It reads the multi-turn SFT files of ``verl-modality w2s`` (``messages`` plus ``videos`` / ``audios`` columns) for
verl 0.9.1's SFT trainer and extends verl's ``MultiTurnSFTDataset``, which has no audio key and computes Qwen2-VL
positions. Here:

* ``<audio>`` and ``<video>`` in a turn become that turn's items of the ``audios`` / ``videos`` columns (paths are
  resolved against ``data.media_root``, default the directory of a single parquet file), decoded as in RL training
  (:class:`verl_modality.data.dataset.OmniRLDataset`) and run through verl's ``build_multimodal_processor_inputs``:
  the placeholders are expanded and ``multi_modal_inputs`` holds the audio features and video patches;
* ``position_ids`` are the ``(4, L)`` Qwen2.5-Omni multimodal RoPE positions of
  :func:`verl_modality.models.omni.compute_position_ids`, the layout of our RL batches;
* each turn is tokenized on its own as verl does, so the loss mask covers the assistant turns (after the generation
  prompt, up to and including the end-of-turn tokens) and text-only rows give verl's tokens and mask;
* a sample whose prompt (everything before the first trained token) does not fit in ``data.max_length`` raises an
  error naming the sample under every ``truncation`` mode; ``truncation: error`` raises for any longer sample,
  ``right`` cuts the answer; ``left`` is refused, since it would cut the media placeholders of the prompt.

``data.media_cache_entries: N`` (default 0, off) memoises the audio feature extractor and the video processor on
the content of their inputs (:mod:`verl_modality.data.media_cache`): a data set with repeated clips, such as the
CPU demo's, processes each distinct clip once; the items are identical either way.

Every sample carries ``multi_modal_inputs`` (empty for text-only rows) so that verl's ``SFTTensorCollator`` can
batch text-only and media rows together.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset
from verl.utils.py_functional import convert_nested_value_to_list_recursive

from verl_modality import protocol
from verl_modality.data.dataset import OmniRLDataset
from verl_modality.data.media_cache import cached_processor

logger = logging.getLogger(__name__)

PLACEHOLDERS = {"<video>": "video", "<audio>": "audio"}
#: processor outputs padded along their last dimension when several turns carry audio (as verl's actor pads them)
PADDED_KEYS = ("input_features", "feature_attention_mask")
#: processor outputs that are not model inputs of one packed sequence (verl's SFT dataset drops the same key)
DROPPED_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


def _as_dict(value: Any) -> dict:
    if value is None:
        return {}
    if hasattr(value, "items"):
        return {k: convert_nested_value_to_list_recursive(v) for k, v in value.items()}
    raise TypeError(f"expected a mapping, got {type(value).__name__}")


def merge_multi_modal_inputs(parts: list[dict[str, torch.Tensor]], sample: str) -> dict[str, torch.Tensor]:
    """Concatenate the processor outputs of several turns along dim 0; audio features padded to the longest.

    Shapes: ``input_features`` ``(n_i, mel, T_i)`` -> ``(sum n_i, mel, max T_i)``, ``feature_attention_mask``
    ``(n_i, T_i)`` likewise; ``pixel_values_videos`` ``(p_i, D)`` -> ``(sum p_i, D)``; grids ``(n_i, 3)``.
    """
    keys: dict[str, list[torch.Tensor]] = {}
    for part in parts:
        for key, value in part.items():
            keys.setdefault(key, []).append(value)
    merged = {}
    for key, values in keys.items():
        if len(values) == 1:
            merged[key] = values[0]
            continue
        if key in PADDED_KEYS:
            width = max(v.shape[-1] for v in values)
            values = [F.pad(v, (0, width - v.shape[-1])) for v in values]
        try:
            merged[key] = torch.cat(values, dim=0)
        except RuntimeError as e:
            shapes = ", ".join(str(tuple(v.shape)) for v in values)
            raise ValueError(f"sample {sample}: cannot concatenate {key!r} over the turns (shapes {shapes})") from e
    return merged


class OmniSFTDataset(MultiTurnSFTDataset):
    """verl's multi-turn SFT dataset with audio, video and the Omni thinker's RoPE; see the module docstring.

    A sample is ``input_ids`` ``(L,)``, ``position_ids`` ``(4, L)``, ``loss_mask`` ``(L,)`` (plus ``attention_mask``
    ``(L,)`` with ``pad_mode: right``, where L is ``max_length``) and ``multi_modal_inputs``.
    """

    def __init__(
        self,
        parquet_files: str | list[str],
        tokenizer: Any,
        config: Any,
        processor: Any = None,
        max_samples: int = -1,
    ):
        if processor is None:
            raise ValueError(
                "OmniSFTDataset needs an Omni processor (verl passes it when model.path is an Omni "
                "checkpoint and the verl_modality plugin is loaded)"
            )
        if not hasattr(processor, "get_rope_index_kwargs"):
            raise ValueError(
                f"{processor.__class__.__name__} is not a configured Omni processor; load it with "
                "verl_modality.models.omni.load_omni_processor"
            )
        config = config or {}
        if config.get("truncation", "error") == "left":
            raise ValueError(
                "OmniSFTDataset: data.truncation=left would cut the prompt and its media placeholders; "
                "use error (default) or right"
            )
        super().__init__(parquet_files, tokenizer, config, processor=processor, max_samples=max_samples)
        self.config = config
        self.audio_key = config.get("audio_key", "audios")
        kwargs = config.get("mm_processor_kwargs", None)
        self.mm_processor_kwargs = dict(kwargs) if kwargs else None
        media_root = config.get("media_root", None)
        if media_root:
            self.media_root: Path | None = Path(media_root)
        elif len(self.parquet_files) == 1:
            self.media_root = Path(self.parquet_files[0]).resolve().parent
        else:
            self.media_root = None  # several files: relative media paths need data.media_root
        self._system_text = self.tokenizer.decode(self.system_prompt)
        cache = int(config.get("media_cache_entries", 0) or 0)
        if cache < 0:
            raise ValueError(f"data.media_cache_entries must be >= 0, got {cache}")
        if cache:  # identical clips processed once (verl_modality.data.media_cache); results are unchanged
            self.processor = cached_processor(self.processor, cache)

    # ------------------------------------------------------------------------------------------------------------
    # Rows -> structured messages
    # ------------------------------------------------------------------------------------------------------------
    def sample_name(self, row: dict, index: int) -> str:
        """The row's ``id`` (when the file has one) and its index, for error messages."""
        rid = row.get("id")
        return f"{rid!s} (row {index})" if rid is not None else f"row {index}"

    def _media_items(self, row: dict, key: str, field: str, sample: str, sample_id: Any) -> list[dict]:
        items = convert_nested_value_to_list_recursive(row.get(key)) if row.get(key) is not None else []
        out = []
        for item in items:
            item = _as_dict(item) if not isinstance(item, str) else {field: item}
            path = item.get(field)
            if not isinstance(path, str) or not path:
                raise ValueError(f"sample {sample}: {key} item {item!r} has no {field!r} path")
            if not os.path.isabs(path):
                if self.media_root is None:
                    raise ValueError(
                        f"sample {sample}: relative {field} path {path!r} and several data files; set data.media_root"
                    )
                path = str(self.media_root / path)
            out.append({**item, "type": field, field: path, protocol.MEDIA_SAMPLE_ID: sample_id})
        return out

    def build_messages(self, row: dict, index: int) -> list[dict]:
        """Messages with structured content: ``<video>`` / ``<audio>`` replaced by the row's items in order."""
        sample = self.sample_name(row, index)
        if self.image_key in row and row[self.image_key] is not None and len(row[self.image_key]) > 0:
            raise ValueError(f"sample {sample}: OmniSFTDataset rows carry video and audio, not images")
        media = {
            "video": self._media_items(row, self.video_key, "video", sample, row.get("id")),
            "audio": self._media_items(row, self.audio_key, "audio", sample, row.get("id")),
        }
        used = {"video": 0, "audio": 0}
        messages: list[dict] = convert_nested_value_to_list_recursive(row[self.messages_key])
        for message in messages:
            content = message.get("content")
            if not isinstance(content, str):
                continue
            if "<image>" in content:
                raise ValueError(f"sample {sample}: an <image> placeholder in a {message.get('role')} turn")
            parts = []
            for segment in re.split("(<video>|<audio>)", content):
                if segment in PLACEHOLDERS:
                    kind = PLACEHOLDERS[segment]
                    if used[kind] >= len(media[kind]):
                        raise ValueError(
                            f"sample {sample}: more {segment} placeholders than items in {kind}s ({len(media[kind])})"
                        )
                    parts.append(media[kind][used[kind]])
                    used[kind] += 1
                elif segment:
                    parts.append({"type": "text", "text": segment})
            message["content"] = parts
        for kind, items in media.items():
            if used[kind] != len(items):
                raise ValueError(f"sample {sample}: {len(items)} {kind} item(s) but {used[kind]} <{kind}> placeholders")
        return messages

    # ------------------------------------------------------------------------------------------------------------
    # Tokenization
    # ------------------------------------------------------------------------------------------------------------
    def _template_kwargs(self, enable_thinking: bool | None) -> dict:
        kwargs = dict(self.apply_chat_template_kwargs or {})
        if enable_thinking is not None:
            kwargs["enable_thinking"] = enable_thinking
        return kwargs

    def encode_turn(
        self, index: int, message: dict, tools: list | None, kwargs: dict, sample: str
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], str]:
        """One turn as verl tokenizes it, media processed: ``(input_ids (n,), loss_mask (n,), mm_inputs, text)``."""
        from verl.utils.tokenizer import build_multimodal_processor_inputs
        from verl.utils.tokenizer.chat_template import apply_chat_template

        text = apply_chat_template(
            self.processor, [message], tools=tools, add_generation_prompt=False, tokenize=False, **kwargs
        )
        _, videos, audios = OmniRLDataset._process_multi_modal_info([message], self.image_patch_size, self.config)
        out = build_multimodal_processor_inputs(
            self.processor, text=[text], videos=videos, audio=audios, mm_processor_kwargs=self.mm_processor_kwargs
        )
        input_ids = out["input_ids"][0].long()
        mm = {k: v for k, v in dict(out).items() if k not in DROPPED_KEYS}
        if index != 0 and message["role"] != "system":
            n = len(self.system_prompt)
            if input_ids[:n].tolist() != list(self.system_prompt):
                raise ValueError(f"sample {sample}: turn {index} does not start with the template's system prompt")
            input_ids = input_ids[n:]
            text = text[len(self._system_text) :] if text.startswith(self._system_text) else text
        loss_mask = torch.zeros_like(input_ids)
        if message["role"] == "assistant":
            loss_mask[len(self.generation_prompt) :] = 1
        return input_ids, loss_mask, mm, text

    def _check_template(self, texts: list[str], messages: list[dict], tools: list | None, kwargs: dict, sample: str):
        """The turns rendered one by one must give the whole conversation's text (verl's sanity check, on text)."""
        from verl.utils.tokenizer.chat_template import apply_chat_template

        whole = apply_chat_template(
            self.processor, messages, tools=tools, add_generation_prompt=False, tokenize=False, **kwargs
        )
        if "".join(texts) != whole:
            message = (
                f"sample {sample}: the chat template rendered turn by turn differs from the whole conversation "
                "(set data.ignore_input_ids_mismatch=True to train on the turn-by-turn tokens)"
            )
            if not self.ignore_input_ids_mismatch:
                raise ValueError(message)
            logger.warning(message)

    def __getitem__(self, item: int) -> dict[str, Any]:
        from verl.utils.dataset.dataset_utils import DatasetPadMode

        from verl_modality.models.omni import compute_position_ids

        row: dict = self.dataframe.iloc[item].to_dict()
        sample = self.sample_name(row, item)
        messages = self.build_messages(row, item)
        tools = self.tools[item] if self.tools is not None else None
        thinking = self.enable_thinking[item] if self.enable_thinking is not None else self.enable_thinking_default
        kwargs = self._template_kwargs(None if thinking is None else bool(thinking))

        ids, masks, mm_parts, texts = [], [], [], []
        for i, message in enumerate(messages):
            turn_ids, turn_mask, mm, text = self.encode_turn(i, message, tools if i == 0 else None, kwargs, sample)
            ids.append(turn_ids)
            masks.append(turn_mask)
            mm_parts.append(mm)
            texts.append(text)
        self._check_template(texts, messages, tools, kwargs, sample)
        input_ids = torch.cat(ids)
        loss_mask = torch.cat(masks)
        multi_modal_inputs = merge_multi_modal_inputs(mm_parts, sample)
        attention_mask = torch.ones_like(input_ids)
        position_ids = compute_position_ids(self.processor, input_ids, attention_mask, multi_modal_inputs)

        length = int(input_ids.shape[0])
        trained = loss_mask.nonzero()
        if trained.numel() == 0:
            raise ValueError(f"sample {sample}: no assistant turn to train on")
        prompt_len = int(trained[0, 0])
        if prompt_len >= self.max_length:
            raise ValueError(
                f"sample {sample}: the prompt alone is {prompt_len} tokens (media tokens included), "
                f"data.max_length is {self.max_length}; no answer token would be trained"
            )
        if length > self.max_length:
            if self.truncation == "error":
                raise ValueError(
                    f"sample {sample}: {length} tokens (prompt {prompt_len}) > data.max_length {self.max_length} "
                    "with data.truncation=error"
                )
            logger.warning(
                "sample %s: %d tokens cut to data.max_length=%d (answer cut)", sample, length, self.max_length
            )
            input_ids, loss_mask, attention_mask = (
                t[: self.max_length] for t in (input_ids, loss_mask, attention_mask)
            )
            position_ids = position_ids[..., : self.max_length]
            length = self.max_length

        if self.pad_mode == DatasetPadMode.RIGHT:
            pad = self.max_length - length
            pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            return {
                "input_ids": F.pad(input_ids, (0, pad), value=pad_id),
                "attention_mask": F.pad(attention_mask, (0, pad), value=0),
                "position_ids": F.pad(position_ids, (0, pad), value=0),
                "loss_mask": F.pad(loss_mask, (0, pad), value=0),
                "multi_modal_inputs": multi_modal_inputs,
            }
        return {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "loss_mask": loss_mask,
            "multi_modal_inputs": multi_modal_inputs,
        }
