"""Plugin loading: entry point, self-check, Ray workers, and vanilla verl left exactly as it was."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_json

CLI = str(Path(sys.executable).with_name("verl-modality"))


def test_entry_point_is_declared():
    import importlib.metadata as md

    eps = {ep.name: ep.value for ep in md.entry_points(group="verl.plugins")}
    assert eps.get("verl_modality") == "verl_modality._register"


def test_verl_loads_the_plugin_on_import():
    out = run_json(
        "import json, sys, verl; from verl_modality import _register as r;"
        "print(json.dumps({'loaded': 'verl_modality._register' in sys.modules, 'errors': r.LOAD_ERRORS,"
        " 'registered': r.REGISTERED}))"
    )
    assert out["loaded"] and out["errors"] == []
    assert out["registered"]["platforms"] == ["cpu"]
    assert len(out["registered"]["patches"]) >= 5


def test_doctor_passes():
    proc = subprocess.run([CLI, "doctor"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: the plugin is loaded" in proc.stdout
    for name in ("verl ", "torch ", "platforms:", "[ok] cpu", "engines (VERL_PLATFORM=cpu)"):
        assert name in proc.stdout


def test_doctor_fails_when_verl_skips_the_plugin():
    env = dict(os.environ, VERL_USE_EXTERNAL_PLUGINS="none")
    proc = subprocess.run([CLI, "doctor"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1
    assert "VERL_USE_EXTERNAL_PLUGINS='none'" in proc.stdout
    assert "MISSING" in proc.stdout


def test_broken_plugin_is_loud(tmp_path):
    """A failure inside the entry point is printed on stderr although verl swallows the exception."""
    (tmp_path / "sitecustomize.py").write_text(
        # Make one of the plugin's modules unimportable before verl loads the plugin.
        "import sys\nsys.modules['verl_modality.models.omni'] = None\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([CLI, "doctor"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1
    assert "verl-modality failed to load into verl" in proc.stderr
    assert "verl_modality.models.omni" in proc.stderr
    assert "FAILED" in proc.stdout


VANILLA_PROBE = """
import json, numpy as np, torch, verl
from omegaconf import OmegaConf
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl import DataProto
from verl_modality.trainer.local_actor import compose_verl_config

g = torch.Generator().manual_seed(0)
bs, t = 12, 7
mask = (torch.rand(bs, t, generator=g) > 0.2).float()
mask[:, 0] = 1
scores = torch.randint(0, 2, (bs,), generator=g).float()
rewards = torch.zeros(bs, t)
last = mask.sum(-1).long() - 1
rewards[torch.arange(bs), last] = scores
uid = np.array([f"p{i // 4}" for i in range(bs)], dtype=object)
adv, ret = core_algos.compute_grpo_outcome_advantage(rewards, mask, uid)
data = DataProto.from_dict(tensors={"token_level_rewards": rewards, "response_mask": mask}, non_tensors={"uid": uid})
cfg = compose_verl_config([])
out = compute_advantage(data, "grpo", norm_adv_by_std_in_grpo=True, config=cfg.algorithm)
from verl.workers.rollout.base import _ROLLOUT_REGISTRY
print(json.dumps({
    "adv": adv.tolist(), "ret": ret.tolist(), "adv_via_trainer": out.batch["advantages"].tolist(),
    "config": OmegaConf.to_container(cfg, resolve=False),
    "estimators": sorted(core_algos.ADV_ESTIMATOR_REGISTRY), "losses": sorted(core_algos.POLICY_LOSS_REGISTRY),
    "rollouts": sorted(map(str, _ROLLOUT_REGISTRY)),
}))
"""


@pytest.mark.slow
def test_vanilla_verl_is_unchanged():
    """With the plugin installed and none of its options chosen, verl computes and configures exactly as without it."""
    plain = run_json(VANILLA_PROBE, env={"VERL_USE_EXTERNAL_PLUGINS": "none", "VERL_PLATFORM": None})
    with_plugin = run_json(VANILLA_PROBE, env={"VERL_PLATFORM": None})
    assert with_plugin["adv"] == plain["adv"]
    assert with_plugin["ret"] == plain["ret"]
    assert with_plugin["adv_via_trainer"] == plain["adv_via_trainer"]
    assert with_plugin["config"] == plain["config"]
    assert set(with_plugin["losses"]) - set(plain["losses"]) == {"mapo_relevance"}
    assert set(plain["losses"]) <= set(with_plugin["losses"])
    # Registries only gain our own names (selected explicitly by a run); verl's entries stay as they are.
    assert set(with_plugin["estimators"]) - set(plain["estimators"]) == {"mapo_stratified"}
    assert set(plain["estimators"]) <= set(with_plugin["estimators"])
    assert set(plain["rollouts"]) <= set(with_plugin["rollouts"])
    assert all("'hf" in name for name in set(with_plugin["rollouts"]) - set(plain["rollouts"]))
    # And they are GRPO's by the formula: (r - mean_g) / (std_g + eps) on every response token, groups of 4.
    import torch

    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(12, 7, generator=g) > 0.2).float()
    mask[:, 0] = 1
    scores = torch.randint(0, 2, (12,), generator=g).float().view(3, 4)
    expected = (scores - scores.mean(1, keepdim=True)) / (scores.std(1, keepdim=True) + 1e-6)
    expected = expected.reshape(12, 1) * mask
    assert torch.allclose(torch.tensor(plain["adv"]), expected, atol=1e-6)


@pytest.mark.slow
def test_ray_workers_see_the_registrations():
    out = run_json(
        """
import json, ray
ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)

def probe():
    import os, sys, verl
    from verl.plugin.platform.platform_manager import PlatformRegistry
    from verl.workers.config import model as m
    return {"pid": os.getpid(), "plugin": "verl_modality._register" in sys.modules,
            "cpu_platform": "cpu" in PlatformRegistry.registered_names(),
            "omni_patch": getattr(m.HFModelConfig.__post_init__, "__verl_modality__", False)}

task = ray.remote(probe)
Actor = ray.remote(type("Probe", (), {"probe": lambda self: probe()}))
a = Actor.remote()
res = {"task": ray.get(task.remote()), "actor": ray.get(a.probe.remote())}
import os
res["driver_pid"] = os.getpid()
ray.shutdown()
print(json.dumps(res))
""",
        timeout=600,
    )
    for where in ("task", "actor"):
        assert out[where]["pid"] != out["driver_pid"]
        assert out[where]["plugin"] and out[where]["cpu_platform"] and out[where]["omni_patch"], out
