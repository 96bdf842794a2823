"""Sampling responses for schema rows outside the trainer (evaluation, audio-contribution voters).

:class:`RowGenerator` turns one schema row into the prompt the training rollout would show (verl's chat messages
from :func:`~verl_modality.models.twin_inputs.structured_messages`, media decoded by
``OmniRLDataset._process_multi_modal_info`` so that blank items become silence / black frames, the prompt rendered
and processed by :func:`~verl_modality.models.omni_inputs.encode_prompt`) and samples from it with the rollout's own
generation core, :class:`~verl_modality.models.hf_generator.HFGenerator` (same sampling, same suppressed tokens,
token-in / token-out).

Sampling is a pure function of (seed, prompt ids, media, sample index): sample ``i`` of a row is the same whichever
rows were generated before it, so a resumed evaluation reproduces an uninterrupted one, and the ``n`` samples of a
row differ from each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from verl_modality.data import schema


@dataclass
class Generation:
    """One sampled response: decoded ``text`` (special tokens skipped), the generated ``token_ids`` (EOS included
    when generated), ``n_tokens = len(token_ids)``, and ``truncated`` (the response budget ran out before EOS)."""

    text: str
    token_ids: list[int]
    n_tokens: int
    truncated: bool


@dataclass
class RowPrompt:
    """A row as the model sees it: expanded ``prompt_ids`` and the decoded media handed to the processor."""

    prompt_ids: list[int]
    videos: list | None
    audios: list | None
    text: str


def row_prompt(
    row: Mapping[str, Any], processor: Any, data_config: Any = None, max_prompt_length: int | None = None
) -> RowPrompt:
    """``row`` as the rollout shows it: ``data_config``'s modality view (if any) applied as ``OmniRLDataset`` does,
    verl's chat messages, media decoded (blank items to silence / black frames), rendered and processed.

    Raises ``ValueError`` naming the sample when the prompt is longer than ``max_prompt_length`` tokens.
    """
    from verl_modality.data.dataset import OmniRLDataset
    from verl_modality.data.modality_view import ModalityView, apply_view
    from verl_modality.models.omni_inputs import encode_prompt
    from verl_modality.models.twin_inputs import structured_messages

    view = ModalityView.from_config(data_config)
    if not view.is_identity:
        row = apply_view(row, view)
    messages = structured_messages(row, processor)
    _, videos, audios = OmniRLDataset._process_multi_modal_info(messages, None, data_config)
    enc = encode_prompt(processor, messages, videos=videos, audios=audios)
    ids = enc.input_ids.tolist()
    if max_prompt_length is not None and len(ids) > max_prompt_length:
        raise ValueError(
            f"sample {row.get(schema.ID)!r}: prompt of {len(ids)} tokens is longer than max_prompt_length "
            f"{max_prompt_length}"
        )
    return RowPrompt(prompt_ids=ids, videos=videos, audios=audios, text=enc.text)


class RowGenerator:
    """Samples responses for schema rows from a local checkpoint, as the training rollout would.

    Args:
        model_path: local checkpoint directory (a full Omni checkpoint loads its thinker).
        max_prompt_length: longest prompt accepted, in tokens (verl's ``data.max_prompt_length``).
        max_response_length: response budget in tokens (verl's ``rollout.response_length``).
        seed: base seed of the per-request seeding.
        data_config: verl's ``data`` config (or a plain mapping): ``video_fps`` / ``video_max_frames`` /
            ``video_size`` for decoding and, when set, ``modality`` (applied to each row as ``OmniRLDataset`` does).
            Rows may also arrive with a view already applied (``apply_view``); applying the same view twice changes
            nothing.
    """

    def __init__(
        self,
        model_path: str,
        max_prompt_length: int = 4096,
        max_response_length: int = 512,
        seed: int = 0,
        data_config: Any = None,
    ) -> None:
        from verl_modality.models.hf_generator import HFGenerator

        if max_prompt_length < 1 or max_response_length < 1:
            raise ValueError(
                f"max_prompt_length ({max_prompt_length}) and max_response_length ({max_response_length}) must be >= 1"
            )
        self.model_path = str(model_path)
        self.max_prompt_length = int(max_prompt_length)
        self.max_response_length = int(max_response_length)
        self.seed = int(seed)
        self.data_config = data_config
        self.core = HFGenerator(
            self.model_path, prompt_length=self.max_prompt_length, response_length=self.max_response_length, seed=seed
        )
        if self.core.processor is None:
            raise ValueError(f"{self.model_path}: RowGenerator needs a multimodal (Omni) checkpoint")
        self.processor = self.core.processor
        self.tokenizer = self.core.tokenizer

    def prompt(self, row: Mapping[str, Any]) -> RowPrompt:
        """Render, decode and process ``row`` exactly as the rollout does (see the module docstring)."""
        return row_prompt(row, self.processor, self.data_config, self.max_prompt_length)

    def generate(
        self, row: Mapping[str, Any], n: int = 1, temperature: float = 1.0, top_p: float = 1.0, top_k: int = -1
    ) -> list[Generation]:
        """``n`` sampled responses for ``row`` (``temperature <= 0``: greedy, then all ``n`` are equal)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        p = self.prompt(row)
        return self.generate_from_prompt(p, n=n, temperature=temperature, top_p=top_p, top_k=top_k)

    def generate_from_prompt(
        self, p: RowPrompt, n: int = 1, temperature: float = 1.0, top_p: float = 1.0, top_k: int = -1
    ) -> list[Generation]:
        """As :meth:`generate`, for a prompt built by :meth:`prompt`."""
        params = {"temperature": float(temperature), "top_p": float(top_p), "top_k": int(top_k)}
        # HFGenerator numbers identical requests per weight version (sample i of a prompt group gets occurrence i);
        # starting every row from occurrence 0 makes sample i independent of what was generated before.
        self.core._served.clear()
        out = []
        for _ in range(n):
            result = self.core.generate(p.prompt_ids, params, video_data=p.videos, audio_data=p.audios)
            tokens = [int(t) for t in result["token_ids"]]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            truncated = result["finish_reason"] == "length"  # as the vLLM evaluation backend reads it
            out.append(Generation(text=text, token_ids=tokens, n_tokens=len(tokens), truncated=truncated))
        return out
