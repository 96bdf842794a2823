"""The watchdog's reading of Ray's actor table and vLLM engines, and how it ends a phase (trainer/features/dead_actors.py)."""

import time

import pytest

from verl_modality.trainer.features import dead_actors as da

CRASH = 'actor_died_error_context {\n  error_message: "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR"\n}'
TABLE = {
    "a1": {"State": "ALIVE", "ActorClassName": "WorkerDict", "Name": "", "Pid": "10"},
    "a2": {"State": "DEAD", "ActorClassName": "HFServer", "Name": "hf_server_0", "Pid": "11", "EndTime": "2000",
           "DeathCause": CRASH},
    "a3": {"State": "DEAD", "ActorClassName": "Temp", "Name": "", "Pid": "12", "EndTime": "2500",
           "DeathCause": 'actor_died_error_context { error_message: "The actor is dead because all references to the actor were removed." }'},
    "a4": {"State": "DEAD", "ActorClassName": "Killed", "Name": "k", "Pid": "13", "EndTime": "2600",
           "DeathCause": 'actor_died_error_context { error_message: "The actor was killed by `ray.kill`." }'},
    "a5": {"State": "DEAD", "ActorClassName": "Old", "Name": "old", "Pid": "14", "EndTime": "500", "DeathCause": CRASH},
}  # fmt: skip


def test_only_unexpected_deaths_since_the_start_are_reported():
    dead = da.dead_actors(since_ms=1000, table=TABLE)
    assert [d["Name"] for d in dead] == ["hf_server_0"]  # not alive, dropped, ray.kill-ed, or dead before the start
    assert da.describe(dead[0]) == (
        "Ray actor HFServer hf_server_0 (pid 11): The actor is dead because its worker process has died. "
        "Worker exit type: SYSTEM_ERROR"
    )
    assert [d["Name"] for d in da.dead_actors(table=TABLE)] == ["old", "hf_server_0"]  # in the order they died
    other_job = {k: {**v, "JobID": "02000000"} for k, v in TABLE.items()}
    assert da.dead_actors(table={**other_job, "a6": {**TABLE["a2"], "JobID": "01000000"}}, job_id="01000000") == [
        {**TABLE["a2"], "JobID": "01000000"}
    ]  # another job's actors on a shared cluster are not this run's


def test_failure_message_lists_every_problem():
    text = da.failure_message(3, ["one", "two"])
    assert text.startswith("training stopped in step 3: 2 part(s) of the run died:") and "  - one\n  - two" in text


class _Watched(da.Watchdog):
    def __init__(self, problems_after_s: float, **kwargs):
        super().__init__(servers=lambda: [], step=lambda: 7, **kwargs)
        self.at = time.monotonic() + problems_after_s

    def check(self, since_ms):
        return ["Ray actor HFServer hf_server_0 (pid 11): gone"] if time.monotonic() >= self.at else []


def test_a_death_interrupts_the_phase_within_the_interval_and_names_it():
    import signal

    # the interrupt is a simulated SIGINT: an earlier test in this process may have left another SIGINT handler (a
    # trainer process has Python's own), and interrupt_main does nothing under SIG_IGN / SIG_DFL
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _interrupted_phase()
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupted_phase() -> None:
    watchdog = _Watched(0.3, interval_s=0.1, grace_s=30)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"(?s)training stopped in step 7: 1 part.*hf_server_0 \(pid 11\): gone"):
        with watchdog.watching():
            while time.monotonic() - start < 20:  # a phase waiting on a server that will never answer
                time.sleep(0.05)
    assert time.monotonic() - start < 5


def test_a_healthy_phase_and_verls_own_errors_pass_through():
    with _Watched(60, interval_s=0.05).watching():
        time.sleep(0.2)  # checks ran and found nothing
    with pytest.raises(ValueError, match="verl's own"), _Watched(60, interval_s=0.05).watching():
        raise ValueError("verl's own error")


def test_an_error_after_a_death_names_the_death():
    """verl's error arrives first (a dead rollout server fails the step within seconds): the report names the death."""
    with pytest.raises(RuntimeError, match="hf_server_0") as info, _Watched(0, interval_s=60).watching():
        raise KeyError("Sync replay buffer selected terminal groups with no materializable trajectories")
    assert isinstance(info.value.__cause__, KeyError)


def test_engine_probe_reports_failed_calls_and_dead_engines_only():
    import ray

    class Method:
        def __init__(self, result):
            self.result = result

        def remote(self, *args):
            return self.result

    class Server:
        def __init__(self, failure=None, health=None):
            self.engine_call_failure, self.collective_rpc = Method(failure), Method(health)

    def get(ref, timeout):
        if isinstance(ref, BaseException):
            raise ref
        return ref

    dead = RuntimeError(
        "ray::vLLMHttpServer.collective_rpc()\nvllm.v1.engine.exceptions.EngineDeadError: EngineCore died."
    )
    servers = [
        ("vLLMReplica 0", Server(failure="update_weights_from_ipc failed: RuntimeError: Worker failed")),
        ("vLLMReplica 1", Server(health=dead)),
        ("vLLMReplica 2", Server()),  # healthy
        ("vLLMReplica 3", Server(health=ray.exceptions.GetTimeoutError("busy"))),  # busy: not a death
        ("vLLMReplica 4", Server(health=ValueError("some other error"))),  # not the engine's death
        ("HFReplica 0", object()),  # no engine to probe
    ]  # fmt: skip
    original = ray.get
    ray.get = get
    try:
        problems = da.engine_problems(servers)
    finally:
        ray.get = original
    assert problems == [
        "vLLM rollout server vLLMReplica 0, engine call: update_weights_from_ipc failed: RuntimeError: Worker failed",
        "vLLM rollout server vLLMReplica 1, engine: vllm.v1.engine.exceptions.EngineDeadError: EngineCore died.",
    ]


def test_rollout_servers_are_read_from_verls_server_manager():
    import types

    class vLLMReplica:  # noqa: N801 (verl's name)
        def __init__(self, rank, handle):
            self.replica_rank, self._server_handle = rank, handle

    manager = types.SimpleNamespace(get_replicas=lambda: [vLLMReplica(0, "h0"), vLLMReplica(1, None)])
    assert da.rollout_servers(manager) == [("vLLMReplica 0", "h0")]  # a replica without a server yet is skipped
    assert da.rollout_servers(None) == []  # before verl built its rollout
