"""``modality_agent``: verl's single-turn agent loop plus the deficit response of contrastive reward weighting.

Contrastive reward weighting (docs/method.md §4; MAPLE App. E.3) compares each caption rollout with a response
the *same* policy writes for the same prompt with some required stream missing. This agent loop produces that response inside
verl's rollout, from the same rollout server and weights and with the same sampling parameters, and hands it to the
reward function:

1. ``run`` first does exactly what verl's ``SingleTurnAgentLoop`` does (same prompt, request, output).
2. With the weighting enabled, for a caption row (``extra_info["sample_task"]``, else the ``task`` column, is
   ``"caption"``) it builds the row's deficit twin: the streams of
   :func:`verl_modality.rewards.contrastive.deficit_streams` (a seeded choice per sample among the non-empty strict
   subsets of the shown streams that miss a tagged stream), the others removed or blanked
   (:func:`verl_modality.models.twin_inputs.twin_row`, the dataset's own view transform; ``remove``: the row's text
   without the dropped streams' paragraphs, ``blank``: the row's very tokens with silence / black frames / an empty
   subtitle). The twin goes through the same multimodal path (``process_multi_modal_info``,
   ``ct_build_initial_tokens``) and ``server_manager.generate``.
3. The decoded text (special tokens skipped) goes in ``extra_fields``, which verl merges into the reward function's
   ``extra_info`` (the reward loop's ``tool_extra_fields``):

   * ``deficit_response``: the text, or None when the row gets none;
   * ``deficit_streams``: the streams the twin showed (``"V"``, ``"VS"``...), or None;
   * ``deficit_skip_reason``: None, or why the row has no deficit response (not a caption row; a single shown
     stream, where MAPLE applies no weighting; no stream shown).

   verl passes ``extra_fields`` to the reward function only when it scores inside the rollout (a rule or remote
   reward function, no colocated reward model: the reward loop's ``reward_loop_worker_handles``).

   With the weighting enabled every row carries the three keys (None where they do not apply): verl concatenates
   the rollout workers' outputs key by key, so a worker whose rows are all QA must still emit them. With it
   disabled the output is exactly ``SingleTurnAgentLoop``'s.

With ``negatives: per_prompt`` (the default) the ``n`` rollouts of a prompt group (same ``uid``) share one deficit
response, generated once per agent-loop worker (verl's V1 trainer runs a group's rollouts in one worker; the legacy
manager may split a group over two workers, which then generate one each); ``per_response`` generates one per
rollout. Validation rollouts get deficit responses too (the agent loop is not told which is which).

Selecting it and its options (``ContrastiveConfig`` fields; the reward function receives the same node as its
``contrastive`` keyword)::

    actor_rollout_ref.rollout.agent.default_agent_loop=modality_agent
    +reward.custom_reward_function.reward_kwargs.contrastive.enable=true
    +reward.custom_reward_function.reward_kwargs.contrastive.alpha=0.2   # tau, similarity, model, deficit,
                                                                          # ablation, negatives, seed likewise

The reward router (:mod:`verl_modality.rewards.score`) reads the same node, so generation and weighting cannot
disagree. The plugin registers the name in every process that imports verl's agent loop, the rollout workers
included (:func:`register`, called from ``verl_modality._register``). Importing this module stays cheap: the class
is built on first access, after verl's agent loop has been imported.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from verl_modality import protocol

# Only the standard library and the plain-Python protocol at import time: the plugin imports this module while
# ``verl_modality`` itself is still initialising (``import verl`` runs the plugin discovery), so other package modules
# are imported inside the functions.

logger = logging.getLogger(__name__)

AGENT_NAME = "modality_agent"
CLASS_NAME = "ModalityAgentLoop"
#: where the options live; the first is the reward function's ``contrastive`` keyword
CONFIG_PATH = "reward.custom_reward_function.reward_kwargs.contrastive"
_CACHE_SIZE = 4096  # prompt groups whose shared deficit response is kept (per_prompt)


def contrastive_config(trainer_config: Any):
    """The :class:`~verl_modality.rewards.contrastive.ContrastiveConfig` of verl's trainer config (defaults: off)."""
    from omegaconf import DictConfig, OmegaConf

    from verl_modality.rewards.contrastive import ContrastiveConfig

    if not isinstance(trainer_config, DictConfig):
        return ContrastiveConfig()
    return ContrastiveConfig.from_config(OmegaConf.select(trainer_config, CONFIG_PATH, default=None))


def row_task(row: Mapping[str, Any]) -> str | None:
    """The row's task: ``extra_info["sample_task"]``, else the ``task`` column (None when neither is there)."""
    from verl_modality.data import schema

    info = row.get(schema.EXTRA_INFO) or {}
    task = info.get(protocol.INFO_TASK) if isinstance(info, Mapping) else None
    if task is None:
        task = row.get(schema.TASK)
    return None if task is None else str(task)


def _prompt_media(messages: Any, kind: str) -> list[dict[str, Any]]:
    """The ``video`` / ``audio`` items of verl's structured messages, as schema media entries (path only)."""
    out = []
    for message in messages or []:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, (list, tuple)):
            out.extend({kind: item[kind]} for item in content if isinstance(item, Mapping) and item.get("type") == kind)
    return out


def prompt_streams(row: Mapping[str, Any], data_config: Any = None) -> str:
    """The streams the row's prompt has a slot for: its shown streams, or, when ``data.modality`` renders hidden
    streams blanked (``ablation: blank``), every stream of the record."""
    from verl_modality import vocabulary
    from verl_modality.data import schema
    from verl_modality.data.modality_view import ModalityView

    view = ModalityView.from_config(data_config)
    key = schema.MEDIA_STREAMS if not view.is_identity and view.ablation == "blank" else schema.AVAILABLE
    return vocabulary.canonical_tag(str(row[key]), allow_empty=True)


def deficit_row(row: Mapping[str, Any], shown: str, ablation: str, slots: str | None = None) -> dict[str, Any]:
    """The twin of ``row`` (the agent loop's dataset kwargs) showing only ``shown``, the rest in ``ablation`` form.

    ``slots`` are the streams the row's prompt renders (:func:`prompt_streams`; default: its ``available``): the
    twin keeps exactly those, so under ``blank`` it has the row's tokens with the dropped streams silenced, blacked
    out or emptied, and under ``remove`` the row's text without the dropped streams. verl's dataset drops the
    ``videos``/``audios`` columns before the rollout; they are restored from the rendered messages (``raw_prompt``)
    so that records without a ``media`` column keep their files.
    """
    from verl_modality import vocabulary
    from verl_modality.data import schema
    from verl_modality.models.twin_inputs import twin_row

    missing = [k for k in (schema.ID, schema.MODALITY_TAG, schema.MEDIA_STREAMS, schema.AVAILABLE) if k not in row]
    if missing:
        raise ValueError(f"sample {row.get(schema.ID)!r}: the deficit twin needs the schema column(s) {missing}")
    full = dict(row)
    for key, kind in ((schema.VIDEOS, "video"), (schema.AUDIOS, "audio")):
        if full.get(key) is None:
            full[key] = _prompt_media(row.get("raw_prompt"), kind)
    available = vocabulary.canonical_tag(str(full[schema.AVAILABLE]), allow_empty=True)
    full[schema.MEDIA_STREAMS] = vocabulary.canonical_tag(available if slots is None else slots, allow_empty=True)
    drop = "".join(s for s in available if s not in shown)
    twin = twin_row(full, drop, ablation)
    twin[schema.MEDIA_STREAMS] = row[schema.MEDIA_STREAMS]
    sample_id = str(full[schema.ID])
    for key in (schema.VIDEOS, schema.AUDIOS):  # as the dataset does: a decoding error names the sample
        twin[key] = [{**dict(item), protocol.MEDIA_SAMPLE_ID: sample_id} for item in twin.get(key) or []]
    return twin


def _build_class():
    from uuid import uuid4

    from verl.experimental.agent_loop.agent_loop import AgentLoopOutput
    from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

    from verl_modality import vocabulary
    from verl_modality.data import schema
    from verl_modality.models.twin_inputs import structured_messages
    from verl_modality.rewards.contrastive import NoDeficitError, deficit_streams

    class ModalityAgentLoop(SingleTurnAgentLoop):
        """verl's single-turn agent loop plus the deficit response for contrastive weighting (module docstring)."""

        #: per_prompt: uid -> task generating the group's deficit text (per worker process; bounded)
        _shared: OrderedDict[tuple, asyncio.Task] = OrderedDict()

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.contrastive = contrastive_config(self.config)

        async def run(self, sampling_params: dict[str, Any], priority: int = 0, **kwargs) -> AgentLoopOutput:
            output = await super().run(sampling_params, priority=priority, **kwargs)
            if self.contrastive.enable:
                output.extra_fields.update(await self.deficit_fields(sampling_params, int(priority), kwargs))
            return output

        async def deficit_fields(self, sampling_params: dict[str, Any], priority: int, row: dict) -> dict[str, Any]:
            """The three ``extra_fields`` entries for ``row`` (see the module docstring)."""
            task = row_task(row)
            if task != "caption":
                return {
                    protocol.DEFICIT_RESPONSE: None,
                    protocol.DEFICIT_STREAMS: None,
                    protocol.DEFICIT_SKIP_REASON: f"not a caption row (task {task!r})",
                }
            cfg = self.contrastive
            sample_id = str(row.get(schema.ID, ""))
            try:
                tag, available = str(row[schema.MODALITY_TAG]), str(row[schema.AVAILABLE])
            except KeyError as err:
                raise ValueError(f"caption sample {sample_id!r} lacks the schema column {err}") from None
            if not vocabulary.canonical_tag(available, allow_empty=True):
                reason = f"sample {sample_id!r} shows no stream (text only): there is nothing to remove"
                return {
                    protocol.DEFICIT_RESPONSE: None,
                    protocol.DEFICIT_STREAMS: None,
                    protocol.DEFICIT_SKIP_REASON: reason,
                }
            try:
                shown = deficit_streams(tag, available, cfg.deficit, cfg.seed, sample_id)
            except NoDeficitError as err:
                return {
                    protocol.DEFICIT_RESPONSE: None,
                    protocol.DEFICIT_STREAMS: None,
                    protocol.DEFICIT_SKIP_REASON: str(err),
                }

            def generate() -> asyncio.Future:
                twin = deficit_row(row, shown, cfg.ablation, prompt_streams(row, self.data_config))
                return asyncio.ensure_future(self.generate_text(twin, sampling_params, priority))

            uid = row.get(protocol.UID)
            if cfg.negatives == "per_prompt" and uid is not None:
                # the group's rollouts share the first one's request; a failure reaches every one of them
                key = (str(uid), shown, cfg.ablation)
                job = self._shared.get(key)
                if job is None:
                    job = self._shared[key] = generate()
                    while len(self._shared) > _CACHE_SIZE:
                        self._shared.popitem(last=False)
                text = await asyncio.shield(job)
            else:
                text = await generate()
            return {
                protocol.DEFICIT_RESPONSE: text,
                protocol.DEFICIT_STREAMS: shown,
                protocol.DEFICIT_SKIP_REASON: None,
            }

        async def generate_text(self, row: Mapping[str, Any], sampling_params: dict[str, Any], priority: int) -> str:
            """One response to ``row`` (a schema row) from the rollout server, as ``SingleTurnAgentLoop`` builds its
            request; returns the decoded text, special tokens skipped, cut to ``rollout.response_length``."""
            messages = structured_messages(row, self.processor)
            multi_modal_data = await self.process_multi_modal_info(messages)
            images = multi_modal_data.get("images")
            videos = multi_modal_data.get("videos")
            audios = multi_modal_data.get("audios")
            self._assert_mm_supported(bool(multi_modal_data))
            mm_inputs: dict[str, Any] = {}
            prompt_ids = await self.ct_build_initial_tokens(
                messages, images=images, videos=videos, audios=audios, mm_inputs_out=mm_inputs
            )
            full_determinism = getattr(self.rollout_config, "full_determinism", False)
            output = await self.server_manager.generate(
                request_id=f"det-{priority}-deficit" if full_determinism else uuid4().hex,
                prompt_ids=prompt_ids,
                sampling_params=dict(sampling_params),
                image_data=images,
                audio_data=audios,
                video_data=videos,
                mm_processor_output=self.build_sglang_video_payload(videos, mm_inputs),
                mm_processor_kwargs=self._get_mm_processor_kwargs(audios),
                priority=priority,
            )
            ids = list(output.token_ids)[: self.response_length]
            return await self.loop.run_in_executor(None, lambda: self.tokenizer.decode(ids, skip_special_tokens=True))

    ModalityAgentLoop.__module__ = __name__
    ModalityAgentLoop.__qualname__ = CLASS_NAME
    return ModalityAgentLoop


def __getattr__(name: str):
    # hydra instantiates the loop by dotted path (``_target_``); build the class on first access so that importing
    # this module (the plugin does, in every process) does not import verl's agent loop stack.
    if name == CLASS_NAME:
        cls = _build_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
