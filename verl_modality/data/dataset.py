"""verl dataset for tagged multimodal samples (``data.custom_cls``: ``pkg://verl_modality.data.dataset``).

Differences from verl's ``RLHFDataset``, which it extends:

* media paths in the parquet are resolved against ``data.media_root`` (default: the parquet file's directory);
* every row is checked against the sample schema when the file is read; a bad row raises an error naming the file,
  row, id and field instead of being skipped (verl skips rows it cannot process);
* audio files are decoded to 16 kHz mono float32 arrays and videos to uint8 frame arrays, which both the Hugging Face
  processor and vLLM accept (verl hands raw paths through);
* prompts over ``data.max_prompt_length`` are dropped with a warning that names them (verl drops them silently);
* ``data.modality`` chooses per sample which streams the policy sees and how the others are dropped
  (:mod:`verl_modality.data.modality_view`); every row is checked against it when the file is read, and a blanked
  stream is decoded to silence of the same length or black frames of the same shape. A re-rendered QA prompt is
  worded by ``data.modality.prompt``; rows whose stored prompt that wording does not reproduce are named in a
  warning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from verl.utils.dataset.rl_dataset import RLHFDataset

from verl_modality import protocol
from verl_modality.data import media, schema, validate
from verl_modality.data.modality_view import ModalityView, apply_view, plan_views, prompt_mismatches

logger = logging.getLogger(__name__)


def _resolve(path: str, root: Path) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else (root / p))


def resolve_media_paths(row: dict, root: str | os.PathLike) -> dict:
    """Make the row's video and audio paths absolute against ``root`` (already absolute paths stay)."""
    root = Path(root)
    row = dict(row)
    for key, field in ((schema.VIDEOS, "video"), (schema.AUDIOS, "audio")):
        items = row.get(key) or []
        row[key] = [{**item, field: _resolve(item[field], root)} for item in items]
    if row.get(schema.MEDIA):
        row[schema.MEDIA] = {k: [_resolve(p, root) for p in (v or [])] for k, v in row[schema.MEDIA].items()}
    return row


def _context(item: Any) -> str | None:
    return (
        f"sample {item[protocol.MEDIA_SAMPLE_ID]}"
        if isinstance(item, dict) and item.get(protocol.MEDIA_SAMPLE_ID)
        else None
    )


def _decode_audio(item: Any, sampling_rate: int) -> np.ndarray:
    blank = isinstance(item, dict) and bool(item.get(protocol.MEDIA_BLANK))
    context = _context(item)
    if isinstance(item, dict):
        item = item.get("audio", item.get("audio_url"))
    if isinstance(item, np.ndarray):
        wave = item.astype(np.float32, copy=False)
    else:
        wave = media.load_audio(os.fspath(item), sr=sampling_rate, context=context)
    return np.zeros_like(wave) if blank else wave  # silence of the same length: same audio token count


def _decode_video(item: dict, config: Any) -> np.ndarray:
    value = item["video"]
    if isinstance(value, np.ndarray):
        frames = value
    else:
        get = config.get if config is not None else (lambda key, default=None: default)
        frames = media.load_video(
            os.fspath(value),
            fps=get("video_fps", None),
            max_frames=get("video_max_frames", None),
            size=get("video_size", None),
            context=_context(item),
        )
    return np.zeros_like(frames) if item.get(protocol.MEDIA_BLANK) else frames  # black frames of the same shape


class OmniRLDataset(RLHFDataset):
    """Tagged multimodal samples for Omni models; see the module docstring."""

    SAMPLING_RATE = 16000

    @property
    def modality_view(self) -> ModalityView:
        view = self.__dict__.get("_modality_view")
        if view is None:
            view = self.__dict__["_modality_view"] = ModalityView.from_config(self.config)
        return view

    def _check_modality_view(self, frame: Any, path: str) -> None:
        view = self.modality_view
        if view.is_identity:
            return
        columns = [schema.ID, schema.DATA_SOURCE, schema.MODALITY_TAG, schema.MEDIA_STREAMS, schema.AVAILABLE]
        rows = frame.select_columns(columns).to_list()
        plan = plan_views(rows, view, source=f"{path}: ")
        if plan.errors:
            more = f" (and {len(plan.errors) - 10} more)" if len(plan.errors) > 10 else ""
            raise ValueError(
                f"data.modality policy {view.policy!r} cannot be applied to {len(plan.errors)} row(s):\n  "
                + "\n  ".join(plan.errors[:10])
                + more
            )
        if plan.fallbacks:
            logger.warning(
                "%s: %d sample(s) have no stream beyond their tag, so 'superset' shows them exactly: %s",
                path,
                len(plan.fallbacks),
                ", ".join(plan.fallbacks[:10]) + (" ..." if len(plan.fallbacks) > 10 else ""),
            )
        logger.info("%s: streams shown per tag under %s: %s", path, view, plan.summary())
        differ = prompt_mismatches(frame.to_list(), view, source=f"{path}: ")
        if differ:
            logger.warning(
                "%d row(s) have a stored prompt that data.modality.prompt (%s) does not reproduce, so the prompts the "
                "view re-renders will be worded differently from the stored ones (first: %s); set data.modality.prompt "
                "to the prompt config the file was prepared with (augment-qa --prompt-config)",
                len(differ),
                "unset: the schema's standard prompt" if view.prompt is None else view.prompt,
                ", ".join(differ[:5]),
            )

    def _build_messages(self, example: dict, key: str):
        if not self.modality_view.is_identity:
            example.update(apply_view(example, self.modality_view))
        # the sample id travels with each media item, so a decoding error in an agent-loop worker names the sample
        sample_id = example.get(schema.ID)
        for media_key in (self.video_key, self.audio_key):
            items = example.get(media_key) or []
            example[media_key] = [
                {**item, protocol.MEDIA_SAMPLE_ID: sample_id}
                if isinstance(item, dict) and sample_id is not None
                else item
                for item in items
            ]
        return super()._build_messages(example, key)

    def _read_files_and_tokenize(self):
        import datasets

        frames = []
        media_root = self.config.get("media_root", None)
        check_media = bool(self.config.get("validate_media", True))
        for path in self.data_files:
            path = os.fspath(path)
            if not path.endswith(".parquet"):
                raise ValueError(f"{path}: OmniRLDataset reads parquet files")
            validate.validate_file(path, check_media=check_media, root=media_root)
            root = Path(media_root) if media_root else Path(path).resolve().parent
            frame = datasets.load_dataset("parquet", data_files=path)["train"]
            self._check_modality_view(frame, path)
            frames.append(frame.map(lambda row, _root=root: resolve_media_paths(row, _root)))
        self.dataframe = datasets.concatenate_datasets(frames)
        if self.max_samples > 0 and self.max_samples < len(self.dataframe):
            rng = np.random.default_rng(self.seed) if self.shuffle else None
            idx = rng.choice(len(self.dataframe), self.max_samples, replace=False) if rng else range(self.max_samples)
            self.dataframe = self.dataframe.select(list(idx))
        self.dataframe = self.maybe_filter_out_long_prompts(self.dataframe)

    def maybe_filter_out_long_prompts(self, dataframe=None):
        dataframe = self.dataframe if dataframe is None else dataframe
        if not self.filter_overlong_prompts or self.processor is None:
            return dataframe
        from verl.utils.tokenizer import build_multimodal_processor_inputs

        lengths = []
        for i in range(len(dataframe)):
            doc = dataframe[i]
            messages = self._build_messages(doc, key=self.prompt_key)
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            images, videos, audios = self._process_multi_modal_info(messages, self.image_patch_size, self.config)
            out = build_multimodal_processor_inputs(
                self.processor,
                text=[text],
                images=images,
                videos=videos,
                audio=audios,
                mm_processor_kwargs=self.mm_processor_kwargs,
            )
            lengths.append(len(out["input_ids"][0]))
        keep = [i for i, n in enumerate(lengths) if n <= self.max_prompt_length]
        if len(keep) < len(lengths):
            dropped = [dataframe[i].get(schema.ID, i) for i, n in enumerate(lengths) if n > self.max_prompt_length]
            logger.warning(
                "dropped %d of %d prompts longer than data.max_prompt_length=%d tokens: %s",
                len(dropped),
                len(lengths),
                self.max_prompt_length,
                ", ".join(map(str, dropped[:20])) + (" ..." if len(dropped) > 20 else ""),
            )
            dataframe = dataframe.select(keep)
        return dataframe

    @classmethod
    def _process_multi_modal_info(cls, messages: list[dict], image_patch_size, config):
        images, videos, audios = None, [], []
        for message in messages:
            content = message.get("content")
            if not isinstance(content, list):
                continue
            for item in content:
                if not isinstance(item, dict):
                    continue
                if item.get("type") == "video":
                    videos.append(_decode_video(item, config))
                elif item.get("type") == "audio":
                    audios.append(_decode_audio(item, cls.SAMPLING_RATE))
                elif item.get("type") == "image":
                    raise ValueError("OmniRLDataset samples carry video and audio, not images")
        return images, (videos or None), (audios or None)
