"""Which streams each sample shows the policy, and how an unshown stream is dropped (docs/method.md §1).

A *view* is chosen per sample from its required tag, the streams its record has media for (``media_streams``) and a
*policy*:

* ``as_stored``: the row's own ``available`` column (the file decides; the default, so existing data is unchanged);
* ``exact``: exactly the required tag (MAPO; MAPLE §4);
* ``full``: every stream the record has (the MUPO baseline, docs/method.md §2.6);
* ``superset``: the tag plus at least one more stream the record has, chosen per sample (seeded by ``seed`` and the
  id); a record with no extra stream is shown exactly and counted (:func:`plan_views` reports it);
* ``deficit``: a stream set missing at least one required stream, chosen per sample (possibly text only);
* an explicit stream set (``"VA"``, ``"A"``, ``"none"`` for text only): those of its streams the record has.

A row's prompt is re-rendered from its ``question`` / ``choices`` / ``subtitle`` whenever the shown streams differ from
the stored ones (or streams are blanked). ``prompt`` (a :class:`~verl_modality.data.prompts.PromptConfig` as a mapping
of its fields, or the path of its YAML file, as ``augment-qa --prompt-config`` takes it) words the re-rendered QA
prompts; unset, they get the schema's standard prompt. Caption rows keep the schema's caption prompt (their stored
instruction, as ``convert`` writes it), so ``prompt.caption_template`` is refused here.

An unshown stream the record has is either *removed* (``ablation="remove"``: no placeholder, no tokens, no subtitle
line) or *blanked* (``ablation="blank"``: the placeholder stays and the media item is marked ``blank``, which the
dataset decodes to silence of the same length or black frames of the same shape; the subtitle line stays, empty).

:func:`apply_view` is the one transform: the dataset applies it to every row before verl builds the chat messages,
so the rollout, the actor's log-probs (recomputed from the rollout's own ids and media) and any twin pass all see the
same prompt. It works on plain row dicts and knows nothing of verl.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from verl_modality import options, protocol, vocabulary
from verl_modality.data import schema
from verl_modality.data.prompts import PromptConfig, render_messages
from verl_modality.options import option
from verl_modality.vocabulary import ABLATIONS, STREAMS

SECTION = "data.modality"

POLICIES = ("as_stored", "exact", "full", "superset", "deficit")
NO_STREAMS = ("none", "text", "")
_SUBTITLE_SLOT = "\x00subtitle\x00"  # rendered in place of a blanked subtitle, then emptied


def parse_policy(policy: str) -> str:
    """Normalise a policy name or explicit stream set (``"av"`` -> ``"VA"``, ``"none"`` -> ``""``)."""
    text = str(policy).strip()
    if text in POLICIES:
        return text
    if text.lower() in NO_STREAMS:
        return ""
    try:
        return vocabulary.canonical_tag(text)
    except ValueError:
        raise ValueError(
            f"unknown modality policy {policy!r}: use one of {', '.join(POLICIES)}, "
            "a stream set such as 'VA' or 'none' for text only"
        ) from None


def _named_policy(name: str, policy: str) -> str:
    try:
        return parse_policy(policy)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


@dataclass(frozen=True)
class ModalityView:
    """Options of ``data.modality`` (see the module docstring)."""

    policy: str = "as_stored"  # docs/method.md §1: exact for MAPO, full for the MUPO baseline
    ablation: str = option(
        "remove", choices=ABLATIONS
    )  # docs/method.md §1: removal, or silence / black frames / empty subtitles
    seed: int = 0  # seeds the per-sample choice of ``superset`` and ``deficit``
    by_source: dict[str, str] = field(default_factory=dict)  # data_source -> policy, overriding ``policy``
    prompt: Any = None  # PromptConfig fields or a YAML path: the wording of re-rendered QA prompts (None: the schema's)

    def __post_init__(self) -> None:
        options.validate(self, SECTION)
        object.__setattr__(self, "policy", _named_policy(f"{SECTION}.policy", self.policy))
        by_source = {k: _named_policy(f"{SECTION}.by_source.{k}", v) for k, v in self.by_source.items()}
        object.__setattr__(self, "by_source", by_source)
        object.__setattr__(self, "prompt", _prompt_config(self.prompt))

    @classmethod
    def from_config(cls, config: Any) -> ModalityView:
        """From verl's data config (reads ``modality``; absent means as stored) or a plain mapping of the options."""
        if config is None:
            return cls()
        node = config.get("modality", None) if hasattr(config, "get") else None
        if node is None and isinstance(config, Mapping) and "policy" in config:
            node = config
        return options.load(cls, node, SECTION)

    @property
    def is_identity(self) -> bool:
        """True when every row is shown as stored (nothing to do)."""
        return self.policy == "as_stored" and not self.by_source

    def policy_for(self, data_source: str) -> str:
        return self.by_source.get(str(data_source), self.policy)


def _prompt_config(value: Any) -> PromptConfig | None:
    name = f"{SECTION}.prompt"
    if value is None:
        return None
    try:
        config = PromptConfig.from_config(options.plain(value))
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    if config.caption_template != PromptConfig.caption_template:
        raise ValueError(
            f"{name}.caption_template={config.caption_template!r}: caption rows keep the schema's caption prompt "
            "(their stored instruction) when a view re-renders them; the option words QA prompts only"
        )
    return config


def render_prompt(sample: schema.Sample, config: PromptConfig | None) -> list[dict[str, str]]:
    """The prompt of ``sample`` (as :meth:`~verl_modality.data.schema.Sample.with_available` left it) worded by
    ``config``: QA rows re-rendered with it, caption rows and ``config=None`` unchanged."""
    if config is None or sample.task == "caption":
        return sample.prompt
    subtitle = sample.subtitle if "S" in sample.available else None
    return render_messages(
        sample.question, sample.choices, len(sample.videos), len(sample.audios), subtitle, "qa", config
    )


def _subsets(streams: str) -> list[str]:
    """Every subset of ``streams`` in canonical form, smallest first (``""`` included)."""
    out = []
    for k in range(len(streams) + 1):
        out.extend("".join(c) for c in itertools.combinations(streams, k))
    return out


def _pick(options: list[str], seed: int, sample_id: str) -> str:
    digest = hashlib.sha256(f"{seed}\0{sample_id}".encode()).digest()
    return options[int.from_bytes(digest[:8], "little") % len(options)]


def choose_streams(
    tag: str, media_streams: str, stored: str, policy: str, seed: int = 0, sample_id: str = ""
) -> tuple[str, bool]:
    """The streams to show, and whether the policy could be honoured (False: ``superset`` fell back to exact).

    All arguments are stream strings in canonical order; ``policy`` as returned by :func:`parse_policy`.
    Raises ``ValueError`` naming the sample when the record lacks media for a required stream under ``exact``.
    """
    tag, media_streams = vocabulary.canonical_tag(tag), vocabulary.canonical_tag(media_streams, allow_empty=True)
    have = set(media_streams)
    if policy == "as_stored":
        return vocabulary.canonical_tag(stored, allow_empty=True), True
    if policy == "full":
        return media_streams, True
    if policy in ("exact", "superset") and not set(tag) <= have:
        raise ValueError(
            f"sample {sample_id!r}: policy {policy!r} needs media for its tag {tag!r}, "
            f"but the record only has {media_streams or 'none'!r}"
        )
    if policy == "exact":
        return tag, True
    if policy == "superset":
        options = [s for s in _subsets(media_streams) if set(s) > set(tag)]
        return (_pick(options, seed, sample_id), True) if options else (tag, False)
    if policy == "deficit":
        options = [s for s in _subsets(media_streams) if not set(tag) <= set(s)]
        return _pick(options, seed, sample_id), True
    # an explicit set: those of its streams the record has
    return "".join(s for s in STREAMS if s in policy and s in have), True


def _blank_items(items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{**dict(item), protocol.MEDIA_BLANK: True} for item in items]


def apply_view(row: Mapping[str, Any], view: ModalityView) -> dict[str, Any]:
    """The row as the policy should see it: ``prompt``, ``videos``, ``audios``, ``available`` and ``stratum`` updated.

    Pure: ``row`` is not modified. The prompt is re-rendered from ``question``/``choices``/``subtitle`` whenever the
    shown streams differ from the stored ones or streams are blanked.
    """
    policy = view.policy_for(row.get(schema.DATA_SOURCE, ""))
    stored = str(row[schema.AVAILABLE])
    shown, _ = choose_streams(
        row[schema.MODALITY_TAG], row[schema.MEDIA_STREAMS], stored, policy, view.seed, str(row.get(schema.ID, ""))
    )
    hidden = "".join(s for s in row[schema.MEDIA_STREAMS] if s not in shown)
    if shown == vocabulary.canonical_tag(stored, allow_empty=True) and not (view.ablation == "blank" and hidden):
        return dict(row)
    sample = schema.Sample.from_row(row)
    out = dict(row)
    if view.ablation == "remove" or not hidden:
        rendered = sample.with_available(shown)
        out[schema.VIDEOS] = [{"video": p} for p in rendered.videos]
        out[schema.AUDIOS] = [{"audio": p} for p in rendered.audios]
        out[schema.PROMPT] = render_prompt(rendered, view.prompt)
    else:
        # every stream keeps its slot; a hidden subtitle is rendered as an empty one (whatever the template)
        base = replace(sample, subtitle=_SUBTITLE_SLOT) if "S" in hidden else sample
        rendered = base.with_available(sample.media_streams)
        prompt = render_prompt(rendered, view.prompt)
        rendered.prompt = [{**m, "content": m["content"].replace(_SUBTITLE_SLOT, "")} for m in prompt]
        videos = [{"video": p} for p in rendered.videos]
        audios = [{"audio": p} for p in rendered.audios]
        out[schema.VIDEOS] = _blank_items(videos) if "V" in hidden else videos
        out[schema.AUDIOS] = _blank_items(audios) if "A" in hidden else audios
        out[schema.PROMPT] = rendered.prompt
    out[schema.AVAILABLE] = shown
    out[schema.STRATUM] = vocabulary.stratum_of(row[schema.MODALITY_TAG], shown)
    return out


@dataclass
class ViewPlan:
    """What a view does to a set of rows: shown stream sets per tag, superset fallbacks and infeasible rows."""

    shown: Counter = field(default_factory=Counter)  # (tag, shown) -> rows
    fallbacks: list[str] = field(default_factory=list)  # ids shown exactly because no extra stream exists
    errors: list[str] = field(default_factory=list)  # one message per infeasible row

    def summary(self) -> str:
        parts = [f"{tag}->{shown or 'text'}: {n}" for (tag, shown), n in sorted(self.shown.items())]
        return ", ".join(parts)


def plan_views(rows: Iterable[Mapping[str, Any]], view: ModalityView, source: str = "") -> ViewPlan:
    """Check every row against ``view`` up front (so training never fails half-way on one sample).

    ``rows`` need only ``id``, ``data_source``, ``modality_tag``, ``media_streams`` and ``available``.
    """
    plan = ViewPlan()
    for i, row in enumerate(rows):
        sample_id = str(row.get(schema.ID, i))
        try:
            shown, honoured = choose_streams(
                row[schema.MODALITY_TAG],
                row[schema.MEDIA_STREAMS],
                row[schema.AVAILABLE],
                view.policy_for(row.get(schema.DATA_SOURCE, "")),
                view.seed,
                sample_id,
            )
        except (KeyError, ValueError) as err:
            plan.errors.append(f"{source}row {i} (id {sample_id}): {err}")
            continue
        plan.shown[(vocabulary.canonical_tag(row[schema.MODALITY_TAG]), shown)] += 1
        if not honoured:
            plan.fallbacks.append(sample_id)
    return plan


def _messages(prompt: Any) -> list[tuple[str, str]]:
    return [(str(m["role"]), str(m["content"])) for m in prompt]


def prompt_mismatches(rows: Iterable[Mapping[str, Any]], view: ModalityView, source: str = "") -> list[str]:
    """The rows whose stored prompt is not what ``view`` renders for their stored streams (``row i (id x)``): a file
    prepared with another prompt wording than ``view.prompt``, whose re-rendered rows would then read differently
    from the rows shown as stored."""
    out = []
    for i, row in enumerate(rows):
        sample = schema.Sample.from_row(row)
        expected = render_prompt(sample.with_available(sample.available), view.prompt)
        if _messages(expected) != _messages(sample.prompt):
            out.append(f"{source}row {i} (id {row.get(schema.ID, i)})")
    return out
