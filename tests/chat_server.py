"""A real OpenAI-compatible chat server for tests: POST /v1/chat/completions on 127.0.0.1 (random free port), in a
thread, answering with scripted behaviours and recording what it saw."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PATH = "/v1/chat/completions"


@dataclass
class Reply:
    """What the server sends: ``text`` wrapped in a chat completion, or a raw ``body``, after ``delay_s``."""

    text: str | None = None
    status: int = 200
    body: bytes | None = None
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    """One request as the server received it."""

    index: int
    time: float
    headers: dict[str, str]
    body: dict[str, Any]


Responder = Callable[[dict[str, Any], int], Reply]


def completion(text: str, model: str = "judge") -> bytes:
    """A minimal chat-completion response body."""
    return json.dumps(
        {
            "id": "cmpl-test",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }
    ).encode()


class ChatServer:
    """``with ChatServer(responder) as srv:`` serves at ``srv.base_url``; ``responder(body, index)`` returns the
    :class:`Reply` for the ``index``-th request (0-based, arrival order). ``max_in_flight`` is the largest number
    of requests the server was working on at once."""

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != PATH:
                    self._send(Reply(status=404, body=b'{"error": "not found"}'))
                    return
                with server._lock:
                    index = len(server.seen)
                    server.seen.append(Seen(index, time.monotonic(), dict(self.headers), json.loads(raw)))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    reply = server.responder(server.seen[index].body, index)
                    time.sleep(reply.delay_s)
                finally:
                    # counted down before answering: the client frees its slot only after it has the answer
                    with server._lock:
                        server.in_flight -= 1
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                body = reply.body if reply.body is not None else completion(reply.text or "")
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default listen backlog (5) resets bursts of concurrent connections

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    @property
    def count(self) -> int:
        return len(self.seen)
