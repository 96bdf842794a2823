"""Voters for audio-contribution filtering: models that answer schema rows (docs/method.md §6).

A voter is anything with ``answer(rows) -> list[str]``: one response text per row, in order. Rows are schema rows
with absolute media paths. Three backends:

* ``local``: a checkpoint run with transformers through :class:`verl_modality.models.generation.RowGenerator`, so
  the model sees exactly the prompt the training rollout shows it (greedy unless ``sampling`` says otherwise);
* ``openai``: any OpenAI-compatible chat endpoint through :class:`verl_modality.rewards.openai_client.ChatClient`;
  audio goes as base64 wav ``input_audio`` parts, video as a base64 mp4 ``video_url`` data URL (vLLM's part type);
* ``callable``: a Python function ``fn(rows) -> list[str]`` (``target: "package.module:function"`` in a config file,
  or ``fn=`` in code), for tests and custom voters.

Voters are listed in a YAML or JSON file (see :func:`load_voter_specs` and ``docs/audio_contribution.md``).
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from verl_modality import options
from verl_modality.data import schema
from verl_modality.options import REQUIRED, option

KINDS = ("local", "openai", "callable")
_PLACEHOLDER = re.compile(r"(<audio>|<video>)")
#: sampling keys each backend accepts (greedy decoding is the default everywhere)
LOCAL_SAMPLING = ("temperature", "top_p", "top_k")
OPENAI_SAMPLING = ("temperature", "top_p", "max_tokens", "seed")


@runtime_checkable
class Voter(Protocol):
    """Answers rows: one response text per row, in the rows' order."""

    def answer(self, rows: list[dict]) -> list[str]: ...


class VoterError(RuntimeError):
    """A voter failed on a batch of rows (the message names the voter and the first failed row)."""


@dataclass
class VoterSpec:
    """One voter of a voters file.

    ``name``: unique, used for the answer files and the report. ``kind``: ``local`` | ``openai`` | ``callable``.
    ``local``: ``model_path``, ``max_prompt_length``, ``max_response_length``, ``seed``, ``data_config`` (verl's
    ``data`` keys such as ``video_fps``). ``openai``: ``base_url``, ``model``, ``api_key_env`` (the variable's name,
    never the key), ``timeout_s``, ``concurrency``, ``max_retries``, ``cache_dir``. ``callable``: ``target``
    (``module:function``) or ``fn``. ``sampling``: decoding parameters (default greedy: temperature 0).
    ``batch_size``: rows per ``answer`` call (answers are saved after each call). ``fn`` is not part of the
    recorded configuration except through its qualified name.
    """

    name: str = option(REQUIRED)
    kind: str = option(REQUIRED, choices=KINDS)
    model_path: str | None = None
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    target: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    max_prompt_length: int = option(4096, ge=1)
    max_response_length: int = option(512, ge=1)
    seed: int = 0
    data_config: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = option(60.0, gt=0)
    concurrency: int = option(8, ge=1)
    max_retries: int = option(3, ge=0)
    cache_dir: str | None = None
    batch_size: int = option(0, ge=0)  # 0: 1 for local, 4 * concurrency for openai, 64 for callable
    params: dict[str, Any] = field(default_factory=dict)  # free-form settings recorded with a callable voter
    fn: Any = field(default=None, repr=False, compare=False)  # Callable[[list[dict]], list[str]] | None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name or ""):
            raise ValueError(f"voter name {self.name!r} must be letters, digits, '_', '.', '-' (it names a file)")
        where = f"voter {self.name!r}"
        options.validate(self, f"voters.{self.name}")
        if self.kind == "local" and not self.model_path:
            raise ValueError(f"{where}: kind 'local' needs model_path")
        if self.kind == "openai" and not (self.base_url and self.model):
            raise ValueError(f"{where}: kind 'openai' needs base_url and model")
        if self.kind == "callable" and not (self.target or self.fn):
            raise ValueError(f"{where}: kind 'callable' needs target ('module:function') or fn")
        if self.fn is not None and not callable(self.fn):
            raise ValueError(f"{where}: fn must be callable, got {type(self.fn).__name__}")
        allowed = {"local": LOCAL_SAMPLING, "openai": OPENAI_SAMPLING}.get(self.kind)
        if allowed is not None:
            bad = sorted(set(self.sampling) - set(allowed))
            if bad:
                raise ValueError(f"{where}: unknown sampling key(s) {', '.join(bad)}; {self.kind} takes {allowed}")

    @property
    def rows_per_call(self) -> int:
        if self.batch_size:
            return self.batch_size
        return {"local": 1, "openai": 4 * self.concurrency}.get(self.kind, 64)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that decide the answers (recorded with them; a restart with other settings is refused).
        Transport settings (timeouts, retries, concurrency, cache, batch size) are left out."""
        keep = {
            "local": ("model_path", "max_prompt_length", "max_response_length", "seed", "data_config"),
            "openai": ("base_url", "model", "max_response_length"),
            "callable": ("target", "params"),
        }[self.kind]
        out: dict[str, Any] = {"kind": self.kind, "sampling": _sampling(self)}
        out.update({k: getattr(self, k) for k in keep})
        if self.kind == "callable" and self.fn is not None and not self.target:
            out["target"] = f"{getattr(self.fn, '__module__', '?')}:{getattr(self.fn, '__qualname__', repr(self.fn))}"
        return json.loads(json.dumps(out, sort_keys=True, default=str))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "voters file") -> VoterSpec:
        """From one entry of a voters file; unknown keys raise ``ValueError`` naming the file and entry."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: every voter must be a mapping, got {type(data).__name__}")
        for key in ("name", "kind"):
            if key not in data:
                raise ValueError(f"{source}: a voter lacks {key!r}: {dict(data)!r}")
        if "fn" in data:
            raise ValueError(f"{source}: voter {data['name']!r}: fn is for voters built in Python; use target")
        try:
            return options.load(cls, data, f"voters.{data['name']}")
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None


def _sampling(spec: VoterSpec) -> dict[str, Any]:
    """Sampling parameters with the greedy default filled in."""
    return {"temperature": 0.0, **dict(spec.sampling)}


def load_voter_specs(path: str | os.PathLike) -> list[VoterSpec]:
    """Voters from a YAML/JSON file: ``{"voters": [entry, ...]}`` or a bare list of entries. Names must be unique."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"voters file {os.fspath(path)!r} does not exist")
    source = f"voters file {os.fspath(path)!r}"
    import yaml

    fmt = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        data = json.loads(path.read_text()) if fmt == "JSON" else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"{source} is not valid {fmt}: {' '.join(str(err).split())}") from None
    if isinstance(data, Mapping):
        extra = sorted(set(data) - {"voters"})
        if extra or "voters" not in data:
            raise ValueError(f"{source}: expected a 'voters' list at the top level, got keys {sorted(data)}")
        data = data["voters"]
    if not isinstance(data, list) or not data:
        raise ValueError(f"{source}: expected a non-empty list of voters")
    specs = [VoterSpec.from_mapping(entry, source) for entry in data]
    check_unique_names(specs, source)
    return specs


def check_unique_names(specs: Sequence[VoterSpec], source: str = "voters") -> None:
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"{source}: voter name {spec.name!r} is used twice")
        seen.add(spec.name)


# ---------------------------------------------------------------------------------------------------------------
# backends


class CallableVoter:
    """Wraps ``fn(rows) -> list[str]`` and checks that it returns one string per row."""

    def __init__(self, fn: Callable[[list[dict]], list[str]], name: str = "callable") -> None:
        self.fn, self.name = fn, name

    def answer(self, rows: list[dict]) -> list[str]:
        out = list(self.fn(rows))
        if len(out) != len(rows) or not all(isinstance(x, str) for x in out):
            raise VoterError(
                f"voter {self.name!r} returned {len(out)} answers for {len(rows)} rows (need one str each)"
            )
        return out


class LocalVoter:
    """A local checkpoint answering through :class:`~verl_modality.models.generation.RowGenerator` (one greedy
    response per row unless ``sampling`` sets a temperature)."""

    def __init__(self, spec: VoterSpec) -> None:
        from verl_modality.models.generation import RowGenerator

        self.name = spec.name
        self.sampling = {k: v for k, v in _sampling(spec).items() if k in LOCAL_SAMPLING}
        self.generator = RowGenerator(
            spec.model_path,
            max_prompt_length=spec.max_prompt_length,
            max_response_length=spec.max_response_length,
            seed=spec.seed,
            data_config=dict(spec.data_config) or None,
        )

    def answer(self, rows: list[dict]) -> list[str]:
        return [self.generator.generate(row, n=1, **self.sampling)[0].text for row in rows]


def _encode_file(path: str, kind: str) -> str:
    """Base64 of an audio file re-encoded as 16 kHz mono 16-bit wav, or of a video file as stored."""
    if kind == "audio":
        import soundfile as sf

        from verl_modality.data import media

        wave = media.load_audio(path, sr=media.SAMPLE_RATE)
        buf = io.BytesIO()
        sf.write(buf, wave, media.SAMPLE_RATE, subtype="PCM_16", format="WAV")
        data = buf.getvalue()
    else:
        data = Path(path).read_bytes()
    return base64.b64encode(data).decode("ascii")


def openai_messages(row: Mapping[str, Any], encode: Callable[[str, str], str] = _encode_file) -> list[dict]:
    """The row's prompt in OpenAI chat format: each ``<audio>`` becomes an ``input_audio`` part (base64 wav) and
    each ``<video>`` a ``video_url`` part (base64 data URL), in the order of the row's ``audios`` / ``videos``."""
    audios = [item["audio"] for item in schema.as_list(row.get(schema.AUDIOS))]
    videos = [item["video"] for item in schema.as_list(row.get(schema.VIDEOS))]
    n_audio = n_video = 0
    out = []
    for message in schema.as_list(row[schema.PROMPT]):
        content = message["content"]
        if not _PLACEHOLDER.search(content):
            out.append({"role": message["role"], "content": content})
            continue
        parts: list[dict] = []
        for piece in _PLACEHOLDER.split(content):
            if piece == "<audio>":
                if n_audio >= len(audios):
                    raise ValueError(f"sample {row.get(schema.ID)!r}: more <audio> placeholders than audios")
                data = encode(audios[n_audio], "audio")
                parts.append({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
                n_audio += 1
            elif piece == "<video>":
                if n_video >= len(videos):
                    raise ValueError(f"sample {row.get(schema.ID)!r}: more <video> placeholders than videos")
                url = "data:video/mp4;base64," + encode(videos[n_video], "video")
                parts.append({"type": "video_url", "video_url": {"url": url}})
                n_video += 1
            elif piece:
                parts.append({"type": "text", "text": piece})
        out.append({"role": message["role"], "content": parts})
    return out


class OpenAIVoter:
    """An OpenAI-compatible endpoint (hosted model or a local vLLM server) answering the rows concurrently."""

    def __init__(self, spec: VoterSpec) -> None:
        from verl_modality.rewards.openai_client import ChatClient, ChatEndpoint

        self.name = spec.name
        self.client = ChatClient(
            ChatEndpoint(
                base_url=spec.base_url,
                model=spec.model,
                api_key_env=spec.api_key_env,
                timeout_s=spec.timeout_s,
                max_retries=spec.max_retries,
                concurrency=spec.concurrency,
                cache_dir=spec.cache_dir,
            )
        )
        self.sampling = {"max_tokens": spec.max_response_length, **_sampling(spec)}
        self._encoded: dict[tuple[str, str], str] = {}  # the silent wav is sent with every row: encode it once

    def _encode(self, path: str, kind: str) -> str:
        key = (path, kind)
        if key not in self._encoded:
            if len(self._encoded) > 64:
                self._encoded.clear()
            self._encoded[key] = _encode_file(path, kind)
        return self._encoded[key]

    def answer(self, rows: list[dict]) -> list[str]:
        from verl_modality.rewards.openai_client import ChatError

        requests = [openai_messages(row, self._encode) for row in rows]
        results = self.client.chat_many(requests, **self.sampling)
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, ChatError):
                raise VoterError(f"voter {self.name!r}, sample {row.get(schema.ID)!r}: {result}") from result
        return list(results)


def _import_target(target: str) -> Callable[[list[dict]], list[str]]:
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ValueError(f"callable voter target {target!r} must be 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"callable voter target {target!r} cannot be imported ({exc})") from exc
    if not callable(obj):
        raise ValueError(f"callable voter target {target!r} is not callable")
    return obj


def build_voter(spec: VoterSpec) -> Voter:
    """The backend of ``spec`` (a local model is loaded here)."""
    if spec.kind == "local":
        return LocalVoter(spec)
    if spec.kind == "openai":
        return OpenAIVoter(spec)
    return CallableVoter(spec.fn or _import_target(spec.target), spec.name)
