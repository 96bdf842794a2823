"""The ``cpu`` platform: selected only explicitly, and then verl's engine, device and process group work on CPU."""

from helpers import run_json

PROBE = """
import json, verl, torch
from verl.plugin.platform.platform_manager import PlatformRegistry
from verl.utils.device import get_device_name, get_nccl_backend, get_torch_device
from verl.workers.engine.base import EngineRegistry
import verl.workers.engine  # registers verl's engines
out = {"registered": list(PlatformRegistry.registered_names()), "device": get_device_name()}
try:
    out["engine"] = EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__
except Exception as exc:
    out["engine"] = f"error: {exc}"
if out["device"] == "cpu":
    out["backend"] = get_nccl_backend()
    dev = get_torch_device()
    out["mem"] = [dev.memory_allocated() > 0, dev.mem_get_info()[1] > 0, dev.device_count()]
    import os
    os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
    from verl.workers import engine_workers
    engine_workers.initialize_global_process_group_ray(timeout_second=None)
    t = torch.ones(3)
    torch.distributed.all_reduce(t)
    out["pg"] = [torch.distributed.get_backend(), t.tolist()]
print(json.dumps(out))
"""


def test_cpu_platform_is_never_auto_detected():
    out = run_json(PROBE, env={"VERL_PLATFORM": None})
    assert "cpu" in out["registered"]
    # Exactly verl's own fallback on a machine without accelerators: nvidia/cuda, and no engine for it here.
    assert out["device"] == "cuda"
    assert out["engine"] == "FSDPEngineWithLMHead"


def test_cpu_platform_when_selected():
    out = run_json(PROBE, env={"VERL_PLATFORM": "cpu"})
    assert out["device"] == "cpu"
    assert out["backend"] == "gloo"
    assert out["engine"] == "FSDPEngineWithLMHead"
    assert out["mem"] == [True, True, 1]
    assert out["pg"] == ["gloo", [1.0, 1.0, 1.0]]


def test_without_the_plugin_verl_has_no_cpu_engine():
    out = run_json(PROBE, env={"VERL_PLATFORM": None, "VERL_USE_EXTERNAL_PLUGINS": "none"})
    assert "cpu" not in out["registered"]
    assert out["device"] == "cuda"
