"""A dead rollout engine, rollout server or Ray worker ends the run within a minute, named.

verl ends a step whose rollout server died within seconds, but names a symptom ("Sync replay buffer selected terminal
groups with no materializable trajectories"); and when a vLLM engine dies *inside* a weight sync (its Ray actor stays
alive, the sender waits for a receiver that is gone), verl waits forever. While verl's initial weight sync and its
``fit`` run, :class:`Watchdog` checks every few seconds

* Ray's actor table (kept by the GCS, so it works without Ray's dashboard) for actors that died unexpectedly since
  it started (a crash, a killed process, the OOM killer, a failed constructor; not ``ray.kill`` or an actor whose
  handles were all dropped), and
* each vLLM rollout server: the last engine call that failed (recorded by the registry entry "vLLM server: failed
  engine calls recorded for the watchdog": a weight sync whose loading failed in vLLM's worker leaves verl's sender
  waiting for the worker forever), and its engine (``check_health`` through the server's ``collective_rpc``: a dead
  engine answers at once with vLLM's ``EngineDeadError``; a busy one may not answer in time, which is not a death).

On the first death it prints what died, interrupts the trainer's main thread (``KeyboardInterrupt``, turned into a
``RuntimeError`` naming what died) and, if that thread is blocked where no interrupt reaches it, ends the trainer's
process after a grace period, so that ``main_ppo`` fails instead of hanging.
"""

from __future__ import annotations

import _thread
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from verl_modality.integrations.verl_rollout import PROBE

#: Ray's death causes of actors that ended as intended (``ray.kill``, every handle dropped, ``exit_actor``)
INTENDED = ("ray.kill", "references to the actor were removed", "INTENDED_USER_EXIT", "exit_actor", "out of scope")
#: exit status of a trainer process the watchdog had to end (its main thread did not take the interrupt)
EXIT_STATUS = 75


def dead_actors(
    since_ms: float | None = None, table: Mapping[str, Mapping[str, Any]] | None = None, job_id: str | None = None
) -> list[dict]:
    """The actors of Ray's actor table (``ray._private.state.actors()`` unless ``table`` is given) that died
    unexpectedly at or after ``since_ms`` (milliseconds since the epoch), of job ``job_id`` when given (a cluster
    may run other jobs), in the order they died."""
    if table is None:
        from ray._private import state

        table = state.actors()
    out = []
    for info in table.values():
        if info.get("State") != "DEAD" or any(word in str(info.get("DeathCause") or "") for word in INTENDED):
            continue
        if job_id is not None and str(info.get("JobID", job_id)) != job_id:
            continue
        ended = float(info.get("EndTime") or 0)
        if since_ms is not None and ended and ended < since_ms:
            continue
        out.append(dict(info))
    return sorted(out, key=lambda a: float(a.get("EndTime") or 0))


def describe(info: Mapping[str, Any]) -> str:
    """``"<class> <name> (pid N): <Ray's cause>"`` for one entry of the actor table."""
    cause = str(info.get("DeathCause") or "")
    found = re.search(r'error_message: "((?:[^"\\]|\\.)*)', cause)
    message = found.group(1) if found else (cause.strip().splitlines() or ["no cause recorded"])[0]
    name = info.get("Name") or "unnamed"
    return f"Ray actor {info.get('ActorClassName', '?')} {name} (pid {info.get('Pid', '?')}): {message.strip()[:300]}"


def failure_message(step: int, problems: list[str]) -> str:
    """The trainer's error for a run stopped in ``step`` by ``problems`` (one line each)."""
    lines = "\n".join(f"  - {p}" for p in problems)
    return f"training stopped in step {step}: {len(problems)} part(s) of the run died:\n{lines}"


def engine_problems(servers: list[tuple[str, Any]], timeout_s: float = 3.0) -> list[str]:
    """Dead or failed vLLM engines among ``servers`` (``(label, Ray actor handle)``). A server whose engine call
    failed (``engine_call_failure``, recorded by the plugin's registry entry) or whose engine is dead
    (``check_health``: vLLM's ``EngineDeadError``) is reported; a busy one that does not answer in time is not, and
    handles without these methods (the ``hf`` rollout's server, whose deaths are Ray actor deaths) are skipped."""
    import ray

    out = []
    for label, handle in servers:
        try:
            probes = [handle.engine_call_failure.remote(), handle.collective_rpc.remote(PROBE)]
        except AttributeError:
            continue
        for i, probe in enumerate(probes):
            try:
                failure = ray.get(probe, timeout=timeout_s)
            except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
                continue  # busy (a weight sync in the engine's queue), or dead: the actor table names a dead actor
            except Exception as err:  # noqa: BLE001 (vLLM's EngineDeadError arrives wrapped in Ray's task error)
                text = str(err)
                if "EngineDead" not in text and "engine core" not in text.lower():
                    continue
                failure = next((line for line in text.splitlines() if "Error" in line), text.splitlines()[0])
            if failure:
                what = "engine call" if i == 0 else "engine"
                out.append(f"vLLM rollout server {label}, {what}: {str(failure).strip()[:400]}")
                break
    return out


def rollout_servers(manager: Any) -> list[tuple[str, Any]]:
    """``(label, Ray actor handle)`` of each rollout replica's server of verl's ``LLMServerManager`` (none without)."""
    replicas = manager.get_replicas() if manager is not None else []
    return [
        (f"{type(r).__name__} {r.replica_rank}", r._server_handle)
        for r in replicas
        if getattr(r, "_server_handle", None) is not None
    ]


class Watchdog:
    """Checks the run's actors and engines while a phase of the trainer runs (see the module docstring)."""

    def __init__(
        self,
        servers: Callable[[], list[tuple[str, Any]]],
        step: Callable[[], int],
        interval_s: float = 5.0,
        grace_s: float = 20.0,
    ):
        self.servers, self.step = servers, step
        self.interval_s, self.grace_s = interval_s, grace_s

    def check(self, since_ms: float) -> list[str]:
        """What died since ``since_ms``: dead actors first, then dead engines."""
        import ray

        job = ray.get_runtime_context().get_job_id() if ray.is_initialized() else None
        problems = [describe(info) for info in dead_actors(since_ms, job_id=job)]
        return problems + engine_problems(self.servers())

    @contextmanager
    def watching(self) -> Iterator[None]:
        since_ms = time.time() * 1000
        stop = threading.Event()
        found: list[str] = []

        def loop() -> None:
            while not stop.wait(self.interval_s):
                try:
                    problems = self.check(since_ms)
                except Exception:  # noqa: BLE001 (a failing check must not end a healthy run)
                    continue
                if problems:
                    found.extend(problems)
                    print("[verl-modality] " + failure_message(self.step(), problems), file=sys.stderr, flush=True)
                    _thread.interrupt_main()
                    if not stop.wait(self.grace_s):
                        print(
                            "[verl-modality] the trainer did not stop: ending its process", file=sys.stderr, flush=True
                        )
                        os._exit(EXIT_STATUS)
                    return

        thread = threading.Thread(target=loop, name="verl-modality-watchdog", daemon=True)
        thread.start()
        try:
            yield
        except BaseException as err:
            problems = found
            if not problems:
                try:
                    problems = self.check(since_ms)
                except Exception:  # noqa: BLE001 (the report must never hide verl's own error)
                    problems = []
            if not problems:
                raise
            raise RuntimeError(failure_message(self.step(), problems)) from err
        finally:
            stop.set()
