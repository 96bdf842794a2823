"""Async client for any OpenAI-compatible ``/chat/completions`` endpoint (a hosted model or a local vLLM server).

What it adds to a bare HTTP call: a per-request timeout, retries with exponential backoff (timeouts, connection
errors, HTTP 408 / 429 / 5xx; other 4xx fail at once), a concurrency limit, and an optional on-disk cache keyed by a
hash of the whole request, so that a repeated request is answered from disk and never sent again.

The API key is read from the environment variable *named* by ``ChatEndpoint.api_key_env``; the key itself never
appears in logs, error messages, cache keys or cache files.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import os
import tempfile
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: HTTP statuses worth another try: request timeout, rate limit, and every server-side error.
RETRY_STATUSES = frozenset({408, 429})
#: Upper bound on a server-requested ``Retry-After`` wait, in seconds.
MAX_RETRY_AFTER_S = 60.0
CACHE_VERSION = 1


@dataclass
class ChatEndpoint:
    """Where and how to send chat-completion requests.

    ``base_url`` is the API root (``http://127.0.0.1:8000/v1``); requests go to ``{base_url}/chat/completions``.
    ``api_key_env`` names the environment variable that holds the key (None: send no Authorization header).
    ``max_retries`` counts retries after the first attempt; the wait before retry ``k`` (0-based) is
    ``backoff_s * 2**k``. ``cache_dir`` None disables the on-disk cache.
    """

    base_url: str
    model: str
    api_key_env: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 1.0
    concurrency: int = 8
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not str(self.base_url).strip():
            raise ValueError("ChatEndpoint.base_url is empty")
        if not str(self.model).strip():
            raise ValueError("ChatEndpoint.model is empty")
        if self.timeout_s <= 0:
            raise ValueError(f"ChatEndpoint.timeout_s must be > 0, got {self.timeout_s!r}")
        if self.max_retries < 0:
            raise ValueError(f"ChatEndpoint.max_retries must be >= 0, got {self.max_retries!r}")
        if self.backoff_s < 0:
            raise ValueError(f"ChatEndpoint.backoff_s must be >= 0, got {self.backoff_s!r}")
        if self.concurrency < 1:
            raise ValueError(f"ChatEndpoint.concurrency must be >= 1, got {self.concurrency!r}")

    @property
    def url(self) -> str:
        """The full chat-completions URL."""
        return str(self.base_url).rstrip("/") + "/chat/completions"


class ChatError(RuntimeError):
    """A request that failed for good (retries exhausted, or a non-retryable answer). The message names the URL,
    the model and the cause, never the API key."""

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class _Retryable(Exception):
    """One attempt failed in a way worth retrying."""

    def __init__(self, cause: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.status = status
        self.retry_after = retry_after


class _Fatal(Exception):
    """One attempt failed in a way that retrying will not fix."""

    def __init__(self, cause: str, status: int | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.status = status


def request_hash(url: str, model: str, messages: list[dict], params: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the whole request (URL, model, messages, sampling parameters)."""
    payload = {"url": url, "model": model, "messages": messages, "params": params}
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def run_coroutine_sync(factory: Callable[[], Awaitable[T]]) -> T:
    """Run ``factory()`` to completion from sync code. With no event loop running in this thread it runs on a new
    loop here; with one running (a notebook, an async caller) it runs on a new loop in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_as_coroutine(factory))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="chat-sync") as pool:
        return pool.submit(lambda: asyncio.run(_as_coroutine(factory))).result()


async def _as_coroutine(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()


class _LoopState:
    """The HTTP connection pool and the concurrency semaphore of one event loop (neither may cross loops)."""

    def __init__(self, endpoint: ChatEndpoint) -> None:
        limits = httpx.Limits(max_connections=endpoint.concurrency, max_keepalive_connections=endpoint.concurrency)
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(endpoint.timeout_s), limits=limits)
        self.semaphore = asyncio.Semaphore(endpoint.concurrency)


class ChatClient:
    """Sends chat-completion requests to one endpoint. Safe to share: the cache is on disk, and each event loop that
    uses the client gets its own connection pool and concurrency limit."""

    def __init__(self, endpoint: ChatEndpoint) -> None:
        self.endpoint = endpoint
        self._api_key: str | None = None
        if endpoint.api_key_env:
            key = os.environ.get(endpoint.api_key_env, "")
            if not key:
                raise ValueError(
                    f"environment variable {endpoint.api_key_env!r} (ChatEndpoint.api_key_env) is not set or empty"
                )
            self._api_key = key
        self._cache_dir = Path(endpoint.cache_dir) if endpoint.cache_dir else None
        if self._cache_dir is not None:
            self._cache_dir.mkdir(parents=True, exist_ok=True)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()
        #: Requests that reached the network (attempts, retries included), and answers served from the cache.
        self.n_requests = 0
        self.n_cache_hits = 0

    def __repr__(self) -> str:
        e = self.endpoint
        return f"ChatClient(url={e.url!r}, model={e.model!r}, api_key_env={e.api_key_env!r})"

    # ---- public API -------------------------------------------------------------------------------------------

    async def chat(self, messages: list[dict], **params: Any) -> str:
        """The assistant text of choice 0 for ``messages`` (OpenAI chat format). ``params`` are sampling parameters
        sent with the request (``temperature``, ``max_tokens``, ...). Raises :class:`ChatError` when it fails."""
        key = self._cache_key(messages, params)
        cached = self._cache_read(key)
        if cached is not None:
            self.n_cache_hits += 1
            return cached
        state = self._state()
        async with state.semaphore:
            text = await self._send_with_retries(state, messages, params)
        self._cache_write(key, text)
        return text

    def chat_many(self, requests: list[list[dict]], progress: bool = False, **params: Any) -> list[str | ChatError]:
        """Send every request concurrently (at most ``endpoint.concurrency`` at a time) from sync code. Returns one
        entry per request, in order: the assistant text, or the :class:`ChatError` of a request that failed."""

        async def run() -> list[str | ChatError]:
            try:
                return await self.chat_many_async(requests, progress=progress, **params)
            finally:
                await self.aclose()

        return run_coroutine_sync(run)

    async def chat_many_async(
        self, requests: list[list[dict]], progress: bool = False, **params: Any
    ) -> list[str | ChatError]:
        """Async form of :meth:`chat_many`."""

        async def one(messages: list[dict]) -> str | ChatError:
            try:
                return await self.chat(messages, **params)
            except ChatError as err:
                return err

        return await gather_with_progress([one(m) for m in requests], progress, desc="chat")

    async def aclose(self) -> None:
        """Close the connection pool of the running event loop (a later call opens a new one)."""
        loop = asyncio.get_running_loop()
        state = self._loops.pop(loop, None)
        if state is not None:
            await state.http.aclose()

    # ---- internals --------------------------------------------------------------------------------------------

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopState(self.endpoint)
        return state

    def _redact(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text

    def _error(self, cause: str, status: int | None, attempts: int) -> ChatError:
        e = self.endpoint
        msg = f"chat request to {e.url} (model {e.model!r}) failed after {attempts} attempt(s): {cause}"
        return ChatError(self._redact(msg), status=status, attempts=attempts)

    async def _send_with_retries(self, state: _LoopState, messages: list[dict], params: dict[str, Any]) -> str:
        e = self.endpoint
        attempts = 0
        while True:
            attempts += 1
            try:
                return await self._send_once(state, messages, params)
            except _Fatal as err:
                raise self._error(err.cause, err.status, attempts) from None
            except _Retryable as err:
                if attempts > e.max_retries:
                    raise self._error(err.cause, err.status, attempts) from None
                wait = e.backoff_s * 2 ** (attempts - 1)
                if err.retry_after is not None:
                    wait = max(wait, min(err.retry_after, MAX_RETRY_AFTER_S))
                logger.warning(
                    "%s (model %r): %s; retry %d/%d in %.2fs",
                    e.url,
                    e.model,
                    self._redact(err.cause),
                    attempts,
                    e.max_retries,
                    wait,
                )
                await asyncio.sleep(wait)

    async def _send_once(self, state: _LoopState, messages: list[dict], params: dict[str, Any]) -> str:
        e = self.endpoint
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        body = {**params, "model": e.model, "messages": messages}
        self.n_requests += 1
        try:
            # wait_for bounds the whole exchange; httpx's own timeout only bounds each read / write / connect.
            resp = await asyncio.wait_for(state.http.post(e.url, json=body, headers=headers), timeout=e.timeout_s)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise _Retryable(f"timed out after {e.timeout_s:g}s") from None
        except httpx.TransportError as err:
            raise _Retryable(f"connection error: {type(err).__name__}: {err}") from None
        status = resp.status_code
        if status != 200:
            cause = f"HTTP {status}: {_snippet(resp.text)}"
            if status in RETRY_STATUSES or status >= 500:
                raise _Retryable(cause, status, _retry_after(resp.headers.get("retry-after")))
            raise _Fatal(cause, status)
        try:
            data = resp.json()
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Fatal(f"response is not a chat completion: {_snippet(resp.text)}", status) from None
        if not isinstance(content, str):
            raise _Fatal(f"choice 0 has no text content: {_snippet(resp.text)}", status)
        return content

    def _cache_key(self, messages: list[dict], params: dict[str, Any]) -> str:
        return request_hash(self.endpoint.url, self.endpoint.model, messages, params)

    def _cache_path(self, key: str) -> Path:
        assert self._cache_dir is not None
        return self._cache_dir / key[:2] / f"{key}.json"

    def _cache_read(self, key: str) -> str | None:
        if self._cache_dir is None:
            return None
        path = self._cache_path(key)
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            entry = json.loads(raw)
            if entry.get("version") != CACHE_VERSION or entry.get("key") != key or not isinstance(entry["text"], str):
                raise ValueError("wrong version, key or text")
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            logger.warning("ignoring corrupt chat cache entry %s (%s); it will be rewritten", path, err)
            return None
        return entry["text"]

    def _cache_write(self, key: str, text: str) -> None:
        if self._cache_dir is None:
            return
        path = self._cache_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"version": CACHE_VERSION, "key": key, "model": self.endpoint.model, "text": text}
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entry, f, ensure_ascii=False)
            os.replace(tmp, path)  # atomic: readers see the old entry or the new one, never half of one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


async def gather_with_progress(coros: list[Awaitable[T]], progress: bool, desc: str) -> list[T]:
    """``asyncio.gather`` with an optional tqdm bar that advances as tasks finish; keeps the input order."""
    if not progress:
        return list(await asyncio.gather(*coros))
    from tqdm.auto import tqdm

    tasks = [asyncio.ensure_future(c) for c in coros]
    with tqdm(total=len(tasks), desc=desc) as bar:
        for task in tasks:
            task.add_done_callback(lambda _t: bar.update(1))
        return list(await asyncio.gather(*tasks))


def _snippet(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to the exponential backoff
    return seconds if seconds is not None and seconds >= 0 else None
