"""The recipe as a Ray job on a two-node cluster: ``recipes/maple/launch_ray_cluster.sh`` as the README writes it.

A head and a second Ray node, each with its own resources (one rank per node), run on this machine through Ray's
``Cluster`` utility, in a process of its own (``ray_cluster_process.py``; their processes only, stopped at the end). The launcher submits ``main_ppo`` with MAPO's full
recipe (exact streams, ``mapo_stratified``, the static curriculum, zero-variance group filtering) and
``trainer.nnodes=2 trainer.n_gpus_per_node=1``, and follows the job; Ray's state says on which node each rank ran.
A second job with a bad override fails with the override named in its logs.
"""

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import SMALL_BATCH

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "recipes" / "maple" / "launch_ray_cluster.sh"
COIN = Path(__file__).with_name("coin_reward.py")
#: logical CPUs per node: enough for one rank and verl's actors around it (TransferQueue, agent loop, reward)
NODE_CPUS = 8
#: the process that holds the cluster, and how long its start-up may take
CLUSTER_PROCESS = Path(__file__).with_name("ray_cluster_process.py")
START_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _this_python_first(env: dict) -> dict:
    """``env`` with this interpreter's folder first on PATH: the launcher calls ``ray``, and the job's entry point runs
    ``python`` and ``ray`` from the head node's PATH."""
    return {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}


def _start_cluster(port: int, env: dict) -> tuple[subprocess.Popen | None, str]:
    """Starts :data:`CLUSTER_PROCESS`; returns it once it prints ``ready`` (None if it exits first or is not ready
    after :data:`START_TIMEOUT_S`, its process group killed) and what it printed."""
    proc = subprocess.Popen(
        [sys.executable, str(CLUSTER_PROCESS), str(port), str(NODE_CPUS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if line.strip() == "ready":
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready.wait(1.0):
        if proc.poll() is not None or time.monotonic() > deadline:  # exited, or not ready in time
            _kill(proc)
            return None, "".join(lines)
    return proc, "".join(lines)


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster():
    """A Ray head (with the dashboard that takes jobs) and one more node, each declaring one rank's slot, held by
    :data:`CLUSTER_PROCESS`; a start-up past :data:`START_TIMEOUT_S` is tried once more, then fails the tests."""
    env = _this_python_first(os.environ)
    for attempt in (1, 2):
        port = _free_port()
        proc, output = _start_cluster(port, env)
        if proc is not None:
            break
        print(f"Ray cluster start-up, attempt {attempt}: not ready (limit {START_TIMEOUT_S} s):\n{output[-2000:]}")
    else:
        pytest.fail(f"the two-node Ray cluster did not start, twice (limit {START_TIMEOUT_S} s):\n{output[-3000:]}")
    try:
        yield {"address": f"http://127.0.0.1:{port}"}
    finally:
        proc.stdin.close()  # the process shuts the cluster down
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            _kill(proc)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir):
    from verl_modality.data.synthetic import make_demo_data

    root = tmp_path_factory.mktemp("ray_job_inputs")
    make_demo_data(root / "data", seed=0, n_train=16, n_test=7)
    return {"model": Path(tiny_model_dir), "data": root / "data"}


def _launch(cluster: dict, inputs: dict, work: Path, job_id: str, extra: list[str]) -> subprocess.CompletedProcess:
    env = {
        **_this_python_first(os.environ),
        "RAY_ADDRESS": cluster["address"],
        "NNODES": "2",
        "GPUS_PER_NODE": "1",
        "CPU": "1",
        "WAIT": "1",
        "SUBMISSION_ID": job_id,
        "TRAIN": str(inputs["data"] / "train.parquet"),
        "VAL": str(inputs["data"] / "test.parquet"),
        "CKPT_DIR": str(work / "ckpt"),
        "METRICS": str(work / "metrics.jsonl"),
    }
    cmd = [
        "bash", str(LAUNCHER), str(ROOT / "examples" / "mapo_full_cpu_demo.yaml"),
        f"actor_rollout_ref.model.path={inputs['model']}", *[o for o in SMALL_BATCH if "micro_batch" not in o],
        "trainer.total_training_steps=2", "trainer.val_before_train=False", "trainer.test_freq=-1",
        "trainer.save_freq=2", f"reward.custom_reward_function.path={COIN}", *DROP_ANY, *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


#: the recipe drops zero-variance groups; with micro-batches of 2 samples any kept count splits over the two ranks
#: (with the CPU examples' log-prob micro-batches of 8, a step of 4 x 4 at world size 2 trains only when all 4
#: groups vary, as the rounding rule of docs/mapo.md says)
DROP_ANY = [
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
]


def _job_logs(cluster: dict, job_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster["address"]).get_job_logs(job_id)


def test_launcher_runs_the_recipe_as_a_job_with_one_rank_on_each_node(cluster, inputs, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors, list_nodes

    # with the KL penalty in the reward: verl's reference policy runs on both CPU ranks too
    done = _launch(cluster, inputs, tmp_path, "mapo-two-nodes", ["algorithm.use_kl_in_reward=true"])
    client = JobSubmissionClient(cluster["address"])
    assert client.get_job_status("mapo-two-nodes") == JobStatus.SUCCEEDED, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0
    logs = _job_logs(cluster, "mapo-two-nodes")
    assert "mapo/" in logs and "step:2" in logs  # the per-tag lines, as `ray job logs` shows them
    # metrics and checkpoints where the launcher put them
    steps: dict[int, dict] = {}
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        steps.setdefault(record["step"], {}).update(record["data"])
    assert sorted(steps) == [1, 2]
    assert steps[1]["actor/reward_kl_penalty"] == 0.0  # the policy is the reference before its first update
    assert math.isfinite(steps[2]["actor/reward_kl_penalty"]) and steps[2]["actor/reward_kl_penalty"] != 0.0
    shards = sorted(p.name for p in (tmp_path / "ckpt" / "global_step_2" / "actor").glob("model_world_size_*"))
    assert shards == ["model_world_size_2_rank_0.pt", "model_world_size_2_rank_1.pt"]
    # the two ranks (verl's colocated worker actors) ran on the two nodes, as Ray's state records them
    nodes = {n.node_id for n in list_nodes(address=cluster["address"])}
    workers = [
        a for a in list_actors(address=cluster["address"], detail=True, limit=10000) if "WorkerDict" in a.class_name
    ]
    assert len(workers) == 2, [(a.class_name, a.node_id) for a in workers]
    assert {a.node_id for a in workers} == nodes and len(nodes) == 2


def test_a_job_with_a_bad_override_fails_naming_it(cluster, inputs, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    done = _launch(cluster, inputs, tmp_path, "bad-override", ["algorithm.mapo.difficulty=sometimes"])
    assert done.returncode != 0
    assert JobSubmissionClient(cluster["address"]).get_job_status("bad-override") == JobStatus.FAILED
    assert "algorithm.mapo.difficulty" in _job_logs(cluster, "bad-override")
