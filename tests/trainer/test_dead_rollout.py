"""A dead rollout server or engine ends the run within a minute, with an error naming what died (the trainer's
watchdog, trainer/features/dead_actors.py), where verl alone names a symptom or waits forever.

Two runs: the ``hf`` rollout's server process killed after step 1, and verl's vLLM rollout whose first weight sync
fails inside vLLM's worker (the registry entry that keeps vLLM's linear weights switched off: the failure a
fresh-clone CI run met, where verl's sender then waited for the worker until the test's limit).
"""

import re
import threading
import time
from pathlib import Path

import psutil
import pytest
from helpers import SMALL_BATCH, e2e_inputs

from verl_modality.trainer.launch import run_main_ppo

pytestmark = pytest.mark.slow

#: from the death to the end of main_ppo: the watchdog checks every 5 s and ends the trainer after 20 s more at most;
#: Ray's shutdown of the remaining actors takes the rest
WITHIN_S = 60


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir):
    from verl_modality.data.synthetic import make_demo_data

    root = tmp_path_factory.mktemp("dead_rollout_inputs")
    make_demo_data(root / "data", seed=0, n_train=16, n_test=7)
    return {"model": Path(tiny_model_dir), "data": root / "data"}


def _start(work: Path, inputs: dict, extra: list[str], env: dict | None = None) -> tuple[threading.Thread, dict]:
    overrides = [
        *e2e_inputs(inputs["model"], inputs["data"], work),
        *SMALL_BATCH,
        "trainer.total_training_steps=20",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        f"reward.custom_reward_function.path={Path(__file__).with_name('coin_reward.py')}",
        *extra,
    ]
    box: dict = {}

    def run() -> None:
        box["result"] = run_main_ppo("mapo_cpu_demo", work, overrides, env=env, timeout=600)
        box["ended"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def _wait_for(log: Path, pattern: str, thread: threading.Thread, timeout: float = 400) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout and thread.is_alive():
        if log.is_file() and re.search(pattern, log.read_text(errors="replace")):
            return time.monotonic()
        time.sleep(0.5)
    raise AssertionError(f"{pattern!r} never appeared in {log}")


def test_a_killed_hf_server_ends_the_run_naming_it(inputs, tmp_path):
    thread, box = _start(tmp_path, inputs, [])
    _wait_for(tmp_path / "main_ppo.log", r"step:1 ", thread)
    servers = [
        p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[0].startswith("ray::HFServer")
    ]
    assert len(servers) == 1, servers
    servers[0].kill()
    killed = time.monotonic()
    thread.join(timeout=WITHIN_S + 60)
    assert not thread.is_alive() and box["ended"] - killed < WITHIN_S, "the run went on after its server died"
    result = box["result"]
    assert result.returncode != 0
    log = result.log_path.read_text(errors="replace")
    assert re.search(r"training stopped in step \d+: 1 part\(s\) of the run died", log), result.log_tail(60)
    assert "Ray actor HFServer hf_server_0 (pid " in log


def test_a_failed_vllm_weight_sync_ends_the_run_naming_it(inputs, tmp_path):
    env = {"VERL_MODALITY_DISABLE": "dispatch_cpu_unquantized_gemm keeps linear weights for weight sync"}
    thread, box = _start(tmp_path, inputs, ["cpu_rollout=vllm"], env=env)
    failed = _wait_for(tmp_path / "main_ppo.log", r"no attribute 'weight_loader'", thread)
    thread.join(timeout=WITHIN_S + 60)
    assert not thread.is_alive() and box["ended"] - failed < WITHIN_S, "the run waited on the failed weight sync"
    result = box["result"]
    assert result.returncode != 0 and not result.steps()
    log = result.log_path.read_text(errors="replace")
    assert "vLLM rollout server vLLMReplica 0, engine call: update_weights_from_ipc failed" in log, result.log_tail(60)
