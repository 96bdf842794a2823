"""What the rewards cost: the answer reward per response, the caption judge's throughput against concurrency and its
cache, and the two similarity backends of contrastive weighting. Everything is measured side by side in one run.

    .venv/bin/python bench/bench_rewards.py [--responses 20000] [--captions 64] [--latency 0.05]

* answer reward: ``rewards.choice.compute_score`` on synthetic replies, letter rule vs MMAU string-match rule;
* judge: ``rewards.caption_judge.judge_captions`` against a chat-completions server on 127.0.0.1 that answers after
  ``--latency`` seconds, at concurrency 1, 8 and 32, then the same requests again from the disk cache;
* similarity: BERTScore F1 (our implementation) vs sentence-embedding cosine, all-MiniLM-L6-v2 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORDS = "a man woman dog guitar plays sings barks street rain night loud soft red blue car bell piano".split()
KEY_ENV = "BENCH_JUDGE_KEY"


def _caption(rng: random.Random, n: int = 24) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def bench_answer(n: int, seed: int) -> dict[str, float]:
    from verl_modality.rewards.choice import compute_score

    rng = random.Random(seed)
    choices = ["a dog barking", "a man singing", "rain on a roof", "a piano and a bell"]
    replies = [f"{_caption(rng, 30)} So the answer is [{'ABCD'[rng.randrange(4)]}]." for _ in range(n)]
    info = {"choices": choices, "sample_task": "qa"}
    out = {}
    for source, name in (("demo", "letter"), ("mmau/test-mini", "string_match")):
        t0 = time.perf_counter()
        for reply in replies:
            compute_score(source, reply, "B", info)
        out[name] = (time.perf_counter() - t0) / n * 1e6
    return out


class _Server:
    """Chat completions after a fixed delay; counts the requests it served."""

    def __init__(self, latency: float) -> None:
        self.requests = 0
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # headers and body go out in two writes: without this, Nagle + delayed ACK add ~40 ms per reply
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    server.requests += 1
                time.sleep(latency)
                text = json.dumps({"missing": 0.8, "errors": 1.0, "fusion": 0.6})
                body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default listen backlog (5) resets bursts of concurrent connections

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def bench_judge(n: int, latency: float, seed: int) -> dict[str, float]:
    from verl_modality.rewards.caption_judge import CaptionJudgeConfig, judge_captions

    rng = random.Random(seed)
    items = [
        {"id": f"c{i}", "response": _caption(rng), "ground_truth": _caption(rng), "modality_tag": "VA"}
        for i in range(n)
    ]
    os.environ[KEY_ENV] = "bench"
    server = _Server(latency)
    out: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory() as cache:
            for concurrency in (1, 8, 32):
                cfg = CaptionJudgeConfig.from_dict(
                    {
                        "base_url": server.base_url,
                        "model": "bench",
                        "api_key_env": KEY_ENV,
                        "concurrency": concurrency,
                        "cache_dir": cache if concurrency == 32 else None,
                    }
                )
                t0 = time.perf_counter()
                results = judge_captions(items, cfg, progress=False)
                out[f"concurrency_{concurrency}"] = time.perf_counter() - t0
                assert all(r["judge_failed"] == 0.0 for r in results)
            before = server.requests
            t0 = time.perf_counter()
            judge_captions(items, cfg, progress=False)
            out["cached"] = time.perf_counter() - t0
            out["cached_requests"] = float(server.requests - before)
    finally:
        server.close()
    return out


def bench_similarity(n: int, seed: int, repeats: int = 3) -> dict[str, float]:
    from verl_modality.rewards.similarity import Similarity

    rng = random.Random(seed)
    a = [_caption(rng, 40) for _ in range(n)]
    b = [_caption(rng, 40) for _ in range(n)]
    out = {}
    for backend in ("embedding", "bertscore"):
        sim = Similarity(backend)
        sim(a[:2], b[:2])  # load the model, warm up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sim(a, b)
            times.append(time.perf_counter() - t0)
        out[backend] = statistics.median(times) / n * 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--responses", type=int, default=20000)
    parser.add_argument("--captions", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05, help="the judge server's reply delay in seconds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    ans = bench_answer(args.responses, args.seed)
    print(f"answer reward, {args.responses} replies: letter rule {ans['letter']:.1f} us/reply, "
          f"string match {ans['string_match']:.1f} us/reply ({ans['string_match'] / ans['letter']:.2f}x)")  # fmt: skip

    judge = bench_judge(args.captions, args.latency, args.seed)
    base = judge["concurrency_1"]
    print(f"caption judge, {args.captions} captions, server latency {args.latency * 1e3:.0f} ms:")
    for c in (1, 8, 32):
        t = judge[f"concurrency_{c}"]
        print(f"  concurrency {c:>2}: {t:.2f} s ({args.captions / t:.1f} captions/s, {base / t:.2f}x vs 1)")
    print(f"  from the disk cache: {judge['cached']:.3f} s ({base / judge['cached']:.0f}x vs concurrency 1), "
          f"{judge['cached_requests']:.0f} requests sent")  # fmt: skip

    sim = bench_similarity(args.captions, args.seed)
    print(f"similarity, {args.captions} caption pairs (40 words), all-MiniLM-L6-v2 on the CPU: embedding "
          f"{sim['embedding']:.2f} ms/pair, bertscore {sim['bertscore']:.2f} ms/pair "
          f"({sim['bertscore'] / sim['embedding']:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
