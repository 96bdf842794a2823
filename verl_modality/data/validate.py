"""Validation of schema rows (``docs/data_schema.md``): every problem of a row, field by field, with its file, row,
id and field; media files opened on request.

:func:`validate_row` / :func:`validate_rows` check rows in memory, :func:`validate_file` a parquet file; each raises
:class:`SchemaError` listing the :class:`SchemaIssue` s found (``verl-modality validate-data`` lists them all,
:mod:`verl_modality.data.report`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from verl_modality.data.schema import (
    ANSWER,
    AUDIOS,
    AVAILABLE,
    CHOICE_TASKS,
    CHOICES,
    DATA_SOURCE,
    EXTRA_INFO,
    ID,
    JUDGE_STYLE,
    MAX_CHOICES,
    MEDIA,
    MEDIA_STREAMS,
    MIN_CHOICES,
    MODALITY_TAG,
    PROMPT,
    QUESTION,
    REQUIRED_FIELDS,
    REWARD_MODEL,
    REWARD_STYLE,
    ROLES,
    STRATUM,
    SUBTITLE,
    TASK,
    TASKS,
    VIDEOS,
    as_list,
    count_placeholders,
    is_list,
    read_rows,
    resolve_path,
)
from verl_modality.vocabulary import (
    AUDIO_PLACEHOLDER,
    IMAGE_PLACEHOLDER,
    LETTERS,
    STRATA,
    STREAMS,
    TAGS,
    VIDEO_PLACEHOLDER,
    canonical_tag,
    stratum_of,
)


@dataclass(frozen=True)
class SchemaIssue:
    """One problem: where (file, row, id, field) and what."""

    file: str | None
    row: int | None
    id: str | None
    field: str | None
    problem: str

    def __str__(self) -> str:
        where = []
        if self.file is not None:
            where.append(self.file)
        if self.row is not None:
            where.append(f"row {self.row} (id {self.id if self.id is not None else '?'})")
        head = " ".join(where)
        body = f"field '{self.field}': {self.problem}" if self.field else self.problem
        return f"{head}: {body}" if head else body


class SchemaError(ValueError):
    """Rows that break the schema. ``str()`` starts with the first problem; ``issues`` holds all that were found."""

    MAX_LISTED = 5

    def __init__(self, issues: Sequence[SchemaIssue]):
        self.issues = list(issues)
        lines = [str(self.issues[0])]
        if len(self.issues) > 1:
            lines.append(f"({len(self.issues)} problems in total; the first {min(len(self.issues), self.MAX_LISTED)}:)")
            lines += [f"  - {issue}" for issue in self.issues[: self.MAX_LISTED]]
        super().__init__("\n".join(lines))

    @property
    def first(self) -> SchemaIssue:
        return self.issues[0]


class _Checker:
    """Collects the issues of one row."""

    def __init__(self, row: Mapping[str, Any], index: int, source: str | None):
        self.row, self.index, self.source = row, index, source
        rid = row.get(ID) if isinstance(row, Mapping) else None
        self.id = rid if isinstance(rid, str) and rid else None
        self.issues: list[SchemaIssue] = []

    def add(self, name: str | None, problem: str) -> None:
        self.issues.append(SchemaIssue(self.source, self.index, self.id, name, problem))

    def string(self, name: str, allow_empty: bool = False) -> str | None:
        value = self.row.get(name)
        if not isinstance(value, str):
            self.add(name, f"expected a string, got {type(value).__name__}")
            return None
        if not allow_empty and not value.strip():
            self.add(name, "must not be empty")
            return None
        return value

    def streams(self, name: str, allow_empty: bool) -> str | None:
        value = self.string(name, allow_empty=True)
        if value is None:
            return None
        try:
            tag = canonical_tag(value, allow_empty=allow_empty)
        except ValueError:
            if allow_empty:
                self.add(name, f"{value!r} is not a set of the streams {', '.join(STREAMS)}")
            else:
                self.add(name, f"{value!r} is not one of {', '.join(TAGS)}")
            return None
        if tag != value:
            self.add(name, f"{value!r} is not in canonical order (V, A, S); write {tag!r}")
            return None
        return tag

    def items(self, name: str, key: str) -> list[str] | None:
        value = self.row.get(name)
        if not is_list(value):
            self.add(name, f"expected a list of {{{key!r}: path}}, got {type(value).__name__}")
            return None
        out = []
        for i, item in enumerate(as_list(value)):
            path = item.get(key) if isinstance(item, Mapping) else None
            if not isinstance(path, str) or not path:
                self.add(name, f"entry {i} must be a dict with a non-empty {key!r} path, got {item!r}")
                return None
            out.append(path)
        return out


def _check_row(
    row: Mapping[str, Any],
    index: int,
    root: str | os.PathLike | None,
    check_media: bool,
    source: str | None,
    media_cache: dict[str, str | None] | None = None,
) -> list[SchemaIssue]:
    """Every problem of one row, field by field (the sections below), media files opened when ``check_media``."""
    if not isinstance(row, Mapping):
        return [SchemaIssue(source, index, None, None, f"a row must be a mapping, got {type(row).__name__}")]
    c = _Checker(row, index, source)
    missing = [name for name in REQUIRED_FIELDS if name not in row]
    for name in missing:
        c.add(name, "missing")
    if missing:
        return c.issues

    c.string(ID)
    c.string(DATA_SOURCE)
    c.string(QUESTION)
    subtitle = c.string(SUBTITLE, allow_empty=True)
    caption = _check_task(c)
    messages = _check_prompt(c)
    answer = _check_choices_and_answer(c, caption)
    _check_reward_model(c, caption, answer)
    tag, have, shown = _check_tags(c)
    _check_extra_info(c, tag)
    videos, audios, all_videos, all_audios = _check_media_lists(c)
    if messages is not None:
        _check_placeholders(c, messages, videos, audios)
    _check_streams(c, shown, have, subtitle, messages, videos, audios, all_videos, all_audios)
    if check_media:
        listed = (videos or []) + (audios or [])
        _check_media_files(c, all_videos, all_audios, listed, root, media_cache if media_cache is not None else {})
    return c.issues


def _check_task(c: _Checker) -> bool:
    """The task; returns whether the row is checked as a caption row."""
    task = c.string(TASK)
    caption = task == "caption"
    choices = c.row.get(CHOICES)
    if task is not None and task not in TASKS:
        c.add(TASK, f"{task!r} is not one of {', '.join(TASKS)}")
    elif caption and is_list(choices) and len(choices):
        c.add(TASK, f"{task!r} is not one of {', '.join(CHOICE_TASKS)}, the tasks of rows with choices")
        caption = False  # check the rest as the multiple-choice row it looks like
    return caption


def _check_prompt(c: _Checker) -> list[Mapping[str, Any]] | None:
    """The chat messages (None when they are malformed)."""
    prompt = c.row.get(PROMPT)
    if not is_list(prompt) or not len(prompt):
        c.add(PROMPT, "expected a non-empty list of {'role': str, 'content': str} messages")
        return None
    messages = as_list(prompt)
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            c.add(PROMPT, f"message {i} must be {{'role': one of {', '.join(ROLES)}, 'content': str}}, got {m!r}")
            return None
    if not any(m["role"] == "user" for m in messages):
        c.add(PROMPT, "has no user message")
    return messages


def _check_choices_and_answer(c: _Checker, caption: bool) -> str | None:
    """The options and the answer letter among them; returns the answer."""
    choices = c.row.get(CHOICES)
    n_choices = None
    if caption:
        if not is_list(choices):
            c.add(CHOICES, f"expected an empty list for a caption row, got {type(choices).__name__}")
    elif not is_list(choices):
        c.add(CHOICES, f"expected a list of option strings, got {type(choices).__name__}")
    else:
        choices = as_list(choices)
        if not MIN_CHOICES <= len(choices) <= MAX_CHOICES:
            c.add(CHOICES, f"has {len(choices)} options; expected {MIN_CHOICES} to {MAX_CHOICES}")
        elif not all(isinstance(x, str) and x.strip() for x in choices):
            c.add(CHOICES, "every option must be a non-empty string")
        elif len(set(choices)) != len(choices):
            c.add(CHOICES, "options must be distinct")
        else:
            n_choices = len(choices)
    answer = c.string(ANSWER)
    if answer is not None and n_choices is not None and answer not in LETTERS[:n_choices]:
        c.add(
            ANSWER,
            f"{answer!r} is not an option letter of the {n_choices} choices ({LETTERS[0]}-{LETTERS[n_choices - 1]})",
        )
    return answer


def _check_reward_model(c: _Checker, caption: bool, answer: str | None) -> None:
    reward = c.row.get(REWARD_MODEL)
    if not isinstance(reward, Mapping):
        c.add(REWARD_MODEL, f"expected {{'style': 'rule', 'ground_truth': letter}}, got {type(reward).__name__}")
        return
    style = JUDGE_STYLE if caption else REWARD_STYLE
    if reward.get("style") != style:
        c.add(REWARD_MODEL, f"style {reward.get('style')!r} is not {style!r}")
    if answer is not None and reward.get("ground_truth") != answer:
        c.add(REWARD_MODEL, f"ground_truth {reward.get('ground_truth')!r} differs from answer {answer!r}")


def _check_tags(c: _Checker) -> tuple[str | None, str | None, str | None]:
    """The required tag, the streams the record has and those shown, and the stratum they imply; returns
    ``(modality_tag, media_streams, available)``."""
    tag = c.streams(MODALITY_TAG, allow_empty=False)
    have = c.streams(MEDIA_STREAMS, allow_empty=True)
    shown = c.streams(AVAILABLE, allow_empty=True)
    if have is not None and shown is not None and not set(shown) <= set(have):
        c.add(AVAILABLE, f"{shown!r} is not a subset of media_streams {have!r}")
    stratum = c.string(STRATUM)
    if stratum is not None:
        if stratum not in STRATA:
            c.add(STRATUM, f"{stratum!r} is not one of {', '.join(STRATA)}")
        elif tag is not None and shown is not None and stratum != stratum_of(tag, shown):
            c.add(
                STRATUM,
                f"{stratum!r} contradicts modality_tag {tag!r} with available {shown!r} (expected {stratum_of(tag, shown)!r})",
            )
    return tag, have, shown


def _check_extra_info(c: _Checker, tag: str | None) -> None:
    info = c.row.get(EXTRA_INFO)
    if not isinstance(info, Mapping):
        c.add(EXTRA_INFO, f"expected a dict with index, split, modality_tag, id; got {type(info).__name__}")
        return
    if isinstance(info.get("index"), bool) or not isinstance(info.get("index"), int | np.integer):
        c.add(EXTRA_INFO, f"index must be an int, got {info.get('index')!r}")
    if not isinstance(info.get("split"), str):
        c.add(EXTRA_INFO, f"split must be a string, got {info.get('split')!r}")
    if tag is not None and info.get("modality_tag") != tag:
        c.add(EXTRA_INFO, f"modality_tag {info.get('modality_tag')!r} differs from the row's {tag!r}")
    if c.id is not None and info.get("id") != c.id:
        c.add(EXTRA_INFO, f"id {info.get('id')!r} differs from the row's {c.id!r}")


def _check_media_lists(c: _Checker) -> tuple[list[str] | None, list[str] | None, list[str], list[str]]:
    """``(videos, audios, all_videos, all_audios)``: the shown files (None when malformed), and those plus the
    unshown ones the record keeps under ``media``."""
    videos = c.items(VIDEOS, "video")
    audios = c.items(AUDIOS, "audio")
    all_videos, all_audios = list(videos or []), list(audios or [])
    media = c.row.get(MEDIA)
    if media is None:
        return videos, audios, all_videos, all_audios
    if not isinstance(media, Mapping):
        c.add(MEDIA, f"expected {{'videos': [path], 'audios': [path]}}, got {type(media).__name__}")
        return videos, audios, all_videos, all_audios
    for key, bucket in (("videos", all_videos), ("audios", all_audios)):
        paths = media.get(key)
        paths = [] if paths is None else paths
        if not is_list(paths) or not all(isinstance(p, str) and p for p in as_list(paths)):
            c.add(MEDIA, f"{key} must be a list of non-empty path strings")
            continue
        bucket.extend(p for p in as_list(paths) if p not in bucket)
    return videos, audios, all_videos, all_audios


def _check_placeholders(
    c: _Checker, messages: list[Mapping[str, Any]], videos: list[str] | None, audios: list[str] | None
) -> None:
    counts = count_placeholders(messages)
    if counts[IMAGE_PLACEHOLDER]:
        c.add(PROMPT, f"has {counts[IMAGE_PLACEHOLDER]} <image> placeholder(s); samples carry video and audio only")
    if videos is not None and counts[VIDEO_PLACEHOLDER] != len(videos):
        c.add(PROMPT, f"has {counts[VIDEO_PLACEHOLDER]} <video> placeholder(s) but videos has {len(videos)} entries")
    if audios is not None and counts[AUDIO_PLACEHOLDER] != len(audios):
        c.add(PROMPT, f"has {counts[AUDIO_PLACEHOLDER]} <audio> placeholder(s) but audios has {len(audios)} entries")


def _check_streams(
    c: _Checker,
    shown: str | None,
    have: str | None,
    subtitle: str | None,
    messages: list[Mapping[str, Any]] | None,
    videos: list[str] | None,
    audios: list[str] | None,
    all_videos: list[str],
    all_audios: list[str],
) -> None:
    """The shown streams (``available``) against the shown files and prompt, the record's streams
    (``media_streams``) against every file it keeps."""
    if shown is not None:
        if videos is not None and ("V" in shown) != bool(videos):
            c.add(
                VIDEOS,
                "V is available but no video is listed" if "V" in shown else "lists videos but V is not available",
            )
        if audios is not None and ("A" in shown) != bool(audios):
            c.add(
                AUDIOS,
                "A is available but no audio is listed" if "A" in shown else "lists audios but A is not available",
            )
        if subtitle is not None and "S" in shown:
            if not subtitle.strip():
                c.add(SUBTITLE, "S is available but the subtitle is empty")
            elif messages is not None and not any(subtitle in m["content"] for m in messages):
                c.add(PROMPT, "S is available but the subtitle text does not appear in the prompt")
    if have is not None:
        for stream, bucket, name in (("V", all_videos, VIDEOS), ("A", all_audios, AUDIOS)):
            if (stream in have) != bool(bucket):
                problem = "has no file" if stream in have else "has files"
                c.add(name, f"media_streams is {have!r} but the record {problem} for {stream}")
        if subtitle is not None and ("S" in have) != bool(subtitle.strip()):
            c.add(SUBTITLE, f"media_streams is {have!r} but the subtitle is {'empty' if 'S' in have else 'not empty'}")


def _check_media_files(
    c: _Checker,
    all_videos: list[str],
    all_audios: list[str],
    listed: list[str],
    root: str | os.PathLike | None,
    cache: dict[str, str | None],
) -> None:
    """Open every media file once per ``cache`` (path -> problem or None); a problem names the field that lists it."""
    from verl_modality.data import media as media_io

    for name, paths, probe in ((VIDEOS, all_videos, media_io.probe_video), (AUDIOS, all_audios, media_io.probe_audio)):
        for p in paths:
            full = str(resolve_path(p, root))
            if full not in cache:
                try:
                    probe(full)
                    cache[full] = None
                except media_io.MediaError as exc:
                    cache[full] = str(exc)
            if cache[full] is not None:
                c.add(name if p in listed else MEDIA, f"{p!r}: {cache[full]}")


def validate_row(
    row: Mapping[str, Any],
    row_index: int = 0,
    root: str | os.PathLike | None = None,
    check_media: bool = True,
    source: str | None = None,
) -> None:
    """Check one row; raises :class:`SchemaError` listing every problem of the row. ``root``: the dataset root
    that relative media paths resolve against (default: the working directory); ``source``: file name for messages."""
    issues = _check_row(row, row_index, root, check_media, source)
    if issues:
        raise SchemaError(issues)


def validate_rows(
    rows: Sequence[Mapping[str, Any]],
    root: str | os.PathLike | None = None,
    check_media: bool = True,
    source: str | None = None,
) -> int:
    """Check every row and that ids are unique; raises :class:`SchemaError` with all problems. Returns the count."""
    issues: list[SchemaIssue] = []
    seen: dict[str, int] = {}
    cache: dict[str, str | None] = {}
    for i, row in enumerate(rows):
        issues += _check_row(row, i, root, check_media, source, cache)
        rid = row.get(ID) if isinstance(row, Mapping) else None
        if isinstance(rid, str) and rid:
            if rid in seen:
                issues.append(SchemaIssue(source, i, rid, ID, f"duplicate id, first used by row {seen[rid]}"))
            else:
                seen[rid] = i
    if issues:
        raise SchemaError(issues)
    return len(rows)


def validate_file(path: str | os.PathLike, check_media: bool = True, root: str | os.PathLike | None = None) -> int:
    """Check a parquet file (every row, unique ids, and the media files unless ``check_media`` is false).

    Relative media paths resolve against ``root``, default the file's directory. Returns the number of rows;
    raises :class:`SchemaError` naming the file, row, id and field of the first problem, with the total count.
    """
    source = os.fspath(path)
    try:
        rows = read_rows(source)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for missing or corrupt files
        raise SchemaError([SchemaIssue(source, None, None, None, f"cannot read parquet ({exc})")]) from exc
    if not rows:
        raise SchemaError([SchemaIssue(source, None, None, None, "holds no rows")])
    return validate_rows(
        rows, root=root if root is not None else Path(source).resolve().parent, check_media=check_media, source=source
    )
