"""ChatClient against a real HTTP server on 127.0.0.1: retries, backoff, timeouts, cache, concurrency, the key."""

import asyncio
import json
import logging
import socket
import time

import pytest
from chat_server import ChatServer, Reply

from verl_modality.rewards.openai_client import ChatClient, ChatEndpoint, ChatError, request_hash

KEY_ENV = "VM_TEST_JUDGE_KEY"
KEY = "sk-test-0123456789-secret"
MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def endpoint(srv: ChatServer, **kw) -> ChatEndpoint:
    base = dict(base_url=srv.base_url, model="judge-model", api_key_env=KEY_ENV, timeout_s=2.0, backoff_s=0.01)
    return ChatEndpoint(**{**base, **kw})


def chat(client: ChatClient, messages=MSG, **params) -> str:
    async def run():
        try:
            return await client.chat(messages, **params)
        finally:
            await client.aclose()

    return asyncio.run(run())


def ok(text="fine"):
    return lambda body, n: Reply(text)


def test_request_body_and_authorization_header():
    with ChatServer(ok("the answer")) as srv:
        client = ChatClient(endpoint(srv))
        assert chat(client, temperature=0.0, max_tokens=7) == "the answer"
    (seen,) = srv.seen
    assert seen.headers["Authorization"] == f"Bearer {KEY}"
    assert seen.body == {"model": "judge-model", "messages": MSG, "temperature": 0.0, "max_tokens": 7}
    assert KEY not in repr(client)


def test_no_key_env_sends_no_authorization():
    with ChatServer(ok()) as srv:
        chat(ChatClient(endpoint(srv, api_key_env=None)))
    assert "Authorization" not in srv.seen[0].headers


def test_unset_key_env_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ValueError, match=KEY_ENV):
        ChatClient(ChatEndpoint("http://127.0.0.1:1/v1", "m", api_key_env=KEY_ENV))


def test_500_then_success_with_exponential_backoff():
    with ChatServer(lambda body, n: Reply(status=500, body=b"boom") if n < 2 else Reply("done")) as srv:
        assert chat(ChatClient(endpoint(srv, backoff_s=0.1, max_retries=3))) == "done"
    assert srv.count == 3
    t = [s.time for s in srv.seen]
    assert t[1] - t[0] >= 0.1 - 0.01  # wait before retry 0: backoff_s
    assert t[2] - t[1] >= 0.2 - 0.01  # wait before retry 1: 2 * backoff_s


def test_slow_reply_times_out_then_retry_succeeds():
    with ChatServer(lambda body, n: Reply("late", delay_s=1.0) if n == 0 else Reply("prompt")) as srv:
        start = time.monotonic()
        assert chat(ChatClient(endpoint(srv, timeout_s=0.3))) == "prompt"
        elapsed = time.monotonic() - start
    assert srv.count == 2
    assert 0.3 <= elapsed < 1.0  # gave up on the slow reply at the timeout


def test_always_failing_exhausts_retries_without_leaking_the_key():
    with ChatServer(lambda body, n: Reply(status=503, body=f"overloaded, key {KEY}".encode())) as srv:
        client = ChatClient(endpoint(srv, max_retries=2))
        with pytest.raises(ChatError) as info:
            chat(client)
    assert srv.count == 3
    err = info.value
    assert (err.status, err.attempts) == (503, 3)
    assert srv.base_url in str(err) and "judge-model" in str(err) and "HTTP 503" in str(err)
    assert KEY not in str(err)


@pytest.mark.parametrize(("status", "retried"), [(408, True), (429, True), (502, True), (400, False), (401, False)])
def test_which_statuses_are_retried(status, retried):
    with ChatServer(lambda body, n: Reply(status=status, body=b'{"error": "x"}') if n == 0 else Reply("ok")) as srv:
        client = ChatClient(endpoint(srv))
        if retried:
            assert chat(client) == "ok"
        else:
            with pytest.raises(ChatError, match=f"HTTP {status}") as info:
                chat(client)
            assert info.value.attempts == 1
    assert srv.count == (2 if retried else 1)


def test_401_body_echoing_the_key_is_redacted():
    with ChatServer(lambda body, n: Reply(status=401, body=f'{{"error": "bad key {KEY}"}}'.encode())) as srv:
        with pytest.raises(ChatError) as info:
            chat(ChatClient(endpoint(srv, max_retries=5)))
    assert srv.count == 1
    assert KEY not in str(info.value) and "***" in str(info.value)


def test_retry_after_header_is_honoured():
    with ChatServer(lambda b, n: Reply(status=429, headers={"Retry-After": "0.3"}) if n == 0 else Reply("ok")) as srv:
        chat(ChatClient(endpoint(srv, backoff_s=0.01)))
    assert srv.seen[1].time - srv.seen[0].time >= 0.3 - 0.01


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the client connects
    client = ChatClient(ChatEndpoint(f"http://127.0.0.1:{port}/v1", "m", max_retries=2, backoff_s=0.01))
    with pytest.raises(ChatError, match="connection error") as info:
        chat(client)
    assert info.value.attempts == 3 and client.n_requests == 3


def test_malformed_completion_body_is_an_error():
    with ChatServer(lambda body, n: Reply(body=b"<html>not json</html>")) as srv:
        with pytest.raises(ChatError, match="not a chat completion"):
            chat(ChatClient(endpoint(srv)))
    assert srv.count == 1


def test_cache_hit_sends_nothing_and_holds_no_key(tmp_path):
    cache = tmp_path / "cache"
    with ChatServer(lambda body, n: Reply(f"reply {n}")) as srv:
        first = ChatClient(endpoint(srv, cache_dir=str(cache)))
        assert chat(first, temperature=0.0) == "reply 0"
        again = ChatClient(endpoint(srv, cache_dir=str(cache)))  # a new process would see the same files
        assert chat(again, temperature=0.0) == "reply 0"
        assert srv.count == 1 and again.n_cache_hits == 1 and again.n_requests == 0
        assert chat(again, temperature=0.5) == "reply 1"  # other sampling params: another request
        assert chat(again, [{"role": "user", "content": "other"}], temperature=0.0) == "reply 2"
    assert srv.count == 3
    files = sorted(p for p in cache.rglob("*") if p.is_file())
    assert len(files) == 3
    for p in files:
        assert KEY not in p.read_text()
        assert not p.name.startswith(".tmp-")
    key = request_hash(f"{srv.base_url}/chat/completions", "judge-model", MSG, {"temperature": 0.0})
    assert json.loads((cache / key[:2] / f"{key}.json").read_text())["text"] == "reply 0"


def test_corrupt_cache_entry_is_ignored_and_rewritten(tmp_path, caplog):
    cache = tmp_path / "cache"
    with ChatServer(lambda body, n: Reply(f"reply {n}")) as srv:
        client = ChatClient(endpoint(srv, cache_dir=str(cache)))
        chat(client)
        (path,) = [p for p in cache.rglob("*.json")]
        path.write_text('{"version": 1, "text": "trunc')
        with caplog.at_level(logging.WARNING, logger="verl_modality.rewards.openai_client"):
            assert chat(client) == "reply 1"
        assert "corrupt chat cache entry" in caplog.text
        assert json.loads(path.read_text())["text"] == "reply 1"
        assert chat(client) == "reply 1"
    assert srv.count == 2


def test_chat_many_is_concurrent_bounded_and_ordered():
    def echo(body, n):
        return Reply("echo " + body["messages"][0]["content"], delay_s=0.1)

    requests = [[{"role": "user", "content": str(i)}] for i in range(12)]
    with ChatServer(echo) as srv:
        start = time.monotonic()
        out = ChatClient(endpoint(srv, concurrency=3)).chat_many(requests, progress=True)
        elapsed = time.monotonic() - start
    assert out == [f"echo {i}" for i in range(12)]
    assert 2 <= srv.max_in_flight <= 3
    assert elapsed < 12 * 0.1  # not one after the other


def test_chat_many_returns_errors_in_place():
    def responder(body, n):
        content = body["messages"][0]["content"]
        return Reply(status=400, body=b"bad request") if content == "bad" else Reply("ok " + content)

    requests = [[{"role": "user", "content": c}] for c in ("a", "bad", "c")]
    with ChatServer(responder) as srv:
        out = ChatClient(endpoint(srv)).chat_many(requests)
    assert out[0] == "ok a" and out[2] == "ok c"
    assert isinstance(out[1], ChatError) and "HTTP 400" in str(out[1])


def test_chat_many_inside_a_running_event_loop():
    async def caller(client):
        return client.chat_many([MSG, MSG], temperature=0.0)  # sync call from async code: runs in a worker thread

    with ChatServer(ok("hi")) as srv:
        assert asyncio.run(caller(ChatClient(endpoint(srv)))) == ["hi", "hi"]


@pytest.mark.parametrize(
    "bad", [dict(timeout_s=0), dict(max_retries=-1), dict(concurrency=0), dict(backoff_s=-1.0), dict(model=" ")]
)
def test_endpoint_validation(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ChatEndpoint(**{"base_url": "http://x/v1", "model": "m", **bad})
