"""Every change the plugin makes to verl, vLLM, transformers and Ray, declared once, as data.

Each :class:`Integration` names the module it changes (``target``), what in it changes (``attribute``), the function
that makes the change (``apply``, ``"module:function"``, called with the target module once it is imported), when it
applies (``when``) and why. :func:`install` hooks every applicable entry on its target's import, so loading the
plugin imports nothing heavy and each change happens once, in every process that imports its target;
:func:`status` says, per entry, whether it is applied, still waiting for its module, not applicable here, or failed.
``verl-modality doctor`` prints that list. A change made anywhere else is a bug.

``when``: ``always``; ``cpu`` (only with ``VERL_PLATFORM=cpu``); ``vllm_cpu`` (``cpu`` and the ``vllm-cpu`` build of
vLLM installed with no ``vllm`` beside it). GPU runs therefore never see a ``cpu`` or ``vllm_cpu`` entry.
``VERL_MODALITY_DISABLE=trainers`` (entry names or groups, comma-separated) switches entries off, e.g. to run verl's
own ``PPOTrainerSync`` with everything else of the plugin in place.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

WHEN = ("always", "cpu", "vllm_cpu")
#: Comma-separated entry names or groups that the plugin leaves alone in this process (and its Ray workers).
DISABLE_ENV = "VERL_MODALITY_DISABLE"
KINDS = ("patch", "registration")
#: Groups of :data:`verl_modality._register.REGISTERED`, in display order.
GROUPS = (
    "platforms",
    "engines",
    "patches",
    "rollouts",
    "advantage_estimators",
    "policy_losses",
    "trainers",
    "reward_managers",
)


@dataclass(frozen=True)
class Integration:
    name: str  # what it is, as the doctor lists it
    group: str  # one of GROUPS
    kind: str  # "patch" replaces an attribute; "registration" adds an entry to a registry of the target
    target: str  # the module it waits for
    attribute: str  # what in ``target`` changes
    apply: str  # "module:function"; the function takes the target module
    when: str  # one of WHEN
    why: str

    def __post_init__(self) -> None:
        if self.when not in WHEN or self.kind not in KINDS or self.group not in GROUPS or ":" not in self.apply:
            raise ValueError(f"integration {self.name!r}: bad when/kind/group/apply ({self})")
        if "," in self.name:  # VERL_MODALITY_DISABLE lists names comma-separated
            raise ValueError(f"integration {self.name!r}: a name must hold no comma")

    @property
    def line(self) -> str:
        """``"target: name"``, the form :data:`verl_modality._register.REGISTERED` lists."""
        return f"{self.target}: {self.name}" if self.group == "patches" else self.name


# the modules that make the changes: one per target package (registrations of the plugin's own components live with
# them and use verl's registration functions)
_UTILS = "verl_modality.integrations.verl_utils"
_WORKERS = "verl_modality.integrations.verl_workers"
_ROLLOUT = "verl_modality.integrations.verl_rollout"
_TRAINER = "verl_modality.integrations.verl_trainer"
_VLLM_CPU = "verl_modality.integrations.vllm_cpu"
_CPU = "verl_modality.platform.cpu"
_VERL = "verl_modality.integrations.verl_registries"

INTEGRATIONS: tuple[Integration, ...] = (
    # platform: a `cpu` platform for verl, which ships accelerator platforms only
    Integration(
        name="cpu",
        group="platforms",
        kind="registration",
        target="verl.plugin.platform.platform_manager",
        attribute="PlatformRegistry['cpu']",
        apply=f"{_CPU}:register_platform",
        when="always",
        why="selectable with VERL_PLATFORM=cpu; never chosen by verl's auto-detection",
    ),
    Integration(
        name="language_model/value_model x fsdp/fsdp2 @cpu",
        group="engines",
        kind="registration",
        target="verl.workers.engine.fsdp.transformer_impl",
        attribute="EngineRegistry._engines[*][fsdp, fsdp2]['cpu']",
        apply=f"{_VERL}:register_cpu_engines",
        when="cpu",
        why="verl registers its FSDP engines for cuda and npu devices only",
    ),
    Integration(
        name="gloo process groups",
        group="patches",
        kind="patch",
        target="verl.utils.distributed",
        attribute="initialize_global_process_group_ray, initialize_global_process_group",
        apply=f"{_UTILS}:patch_distributed",
        when="cpu",
        why="verl builds 'cpu:gloo,cpu:gloo' from the platform, which torch rejects as a duplicate device type",
    ),
    Integration(
        name="gloo process groups (engine workers' by-name import)",
        group="patches",
        kind="patch",
        target="verl.workers.engine_workers",
        attribute="initialize_global_process_group_ray",
        apply=f"{_WORKERS}:rebind_gloo_process_group",
        when="cpu",
        why="engine_workers imported the function by name before it could be wrapped",
    ),
    Integration(
        name="FSDP2 offload without pinned memory (reference policy)",
        group="patches",
        kind="patch",
        target="verl.workers.engine.fsdp.transformer_impl",
        attribute="CPUOffloadPolicy (imported by name)",
        apply=f"{_WORKERS}:patch_offload_policy",
        when="cpu",
        why="verl shards forward-only engines (the reference policy) with pinned CPU offload; pinning needs CUDA",
    ),
    # vLLM's CPU build under verl's vLLM rollout
    Integration(
        name="version('vllm') answers for the vllm-cpu distribution",
        group="patches",
        kind="patch",
        target="importlib.metadata",
        attribute="version",
        apply=f"{_VLLM_CPU}:alias_vllm_distribution",
        when="vllm_cpu",
        why="verl looks vLLM up by distribution name; the CPU build is installed as vllm-cpu",
    ),
    Integration(
        name="RuntimeContext.get_accelerator_ids lists the cpu platform's resource",
        group="patches",
        kind="patch",
        target="ray.runtime_context",
        attribute="RuntimeContext.get_accelerator_ids",
        apply=f"{_VLLM_CPU}:cpu_accelerator_ids",
        when="vllm_cpu",
        why="verl's vLLM replica reads the platform's resource among Ray's accelerator ids; its workers hold none",
    ),
    Integration(
        name="dispatch_cpu_unquantized_gemm keeps linear weights for weight sync",
        group="patches",
        kind="patch",
        target="vllm.model_executor.layers.utils",
        attribute="dispatch_cpu_unquantized_gemm",
        apply=f"{_VLLM_CPU}:keep_linear_weights",
        when="vllm_cpu",
        why="vLLM's CPU layers drop layer.weight after packing it, and verl's weight sync loads into it",
    ),
    Integration(
        name="CPU fused MoE: SiLU-and-mul without building a CustomOp at forward time",
        group="patches",
        kind="patch",
        target="vllm.model_executor.layers.fused_moe.cpu_fused_moe",
        attribute="_CPU_MOE_ACT_FN[MoEActivation.SILU]",
        apply=f"{_VLLM_CPU}:static_moe_activation",
        when="vllm_cpu",
        why="vllm-cpu 0.24.0 builds SiluAndMul inside the MoE forward, where no vLLM config is set (Qwen3-Omni fails)",
    ),
    # Omni thinkers (the model families of verl_modality.models.family) in verl's actor and vLLM rollout
    Integration(
        name="config validation log: no warnings for the talker's thinker-vocabulary token ids",
        group="patches",
        kind="patch",
        target="transformers.configuration_utils",
        attribute="its logger (a filter for seven known warnings)",
        apply="verl_modality.integrations.transformers_logging:quiet_talker_token_ids",
        when="always",
        why="every Omni config load warns about token ids that are valid in the thinker's vocabulary",
    ),
    Integration(
        name="hf_processor: the Omni processor of the model family with multimodal RoPE",
        group="patches",
        kind="patch",
        target="verl.utils.tokenizer",
        attribute="hf_processor (and verl.utils.hf_processor)",
        apply=f"{_UTILS}:patch_tokenizer",
        when="always",
        why="verl 0.9.1 knows no Omni processor; non-Omni checkpoints reach verl's function unchanged",
    ),
    Integration(
        name="HFModelConfig: full Omni checkpoint -> thinker config",
        group="patches",
        kind="patch",
        target="verl.workers.config.model",
        attribute="HFModelConfig.__post_init__, hf_processor (by-name import)",
        apply=f"{_WORKERS}:patch_model_config",
        when="always",
        why="the actor and the rollout train and serve the thinker of a full Omni checkpoint",
    ),
    Integration(
        name="FSDPEngine._build_module: leaf-layer FSDP wrapping for the thinker",
        group="patches",
        kind="patch",
        target="verl.workers.engine.fsdp.transformer_impl",
        attribute="FSDPEngine._build_module (and the built thinker's forward)",
        apply=f"{_WORKERS}:patch_fsdp_engine",
        when="always",
        why="the thinker's audio encoder layers, vision blocks and decoder layers become the FSDP units; each forward "
        "runs every encoder (a dummy where the micro-batch has no such stream), so all ranks issue the same collectives",
    ),
    Integration(
        name="maybe_fix_3d_position_ids: repacks multimodal RoPE ids of equal-length batches",
        group="patches",
        kind="patch",
        target="verl.utils.tensordict_utils",
        attribute="maybe_fix_3d_position_ids",
        apply=f"{_UTILS}:patch_tensordict_utils",
        when="always",
        why="TransferQueue packs equal-length (4, L) RoPE ids ragged on the wrong dimension; verl's fix misses it",
    ),
    Integration(
        name="engine base: the repacking position-id fix",
        group="patches",
        kind="patch",
        target="verl.workers.engine.base",
        attribute="maybe_fix_3d_position_ids (imported by name)",
        apply=f"{_WORKERS}:rebind_position_id_fix",
        when="always",
        why="the module imported verl's function by name",
    ),
    Integration(
        name="engine workers: the repacking position-id fix",
        group="patches",
        kind="patch",
        target="verl.workers.engine_workers",
        attribute="maybe_fix_3d_position_ids (imported by name)",
        apply=f"{_WORKERS}:rebind_position_id_fix",
        when="always",
        why="the module imported verl's function by name",
    ),
    Integration(
        name="vLLM server: Omni placeholder collapse and placeholders never sampled",
        group="patches",
        kind="patch",
        target="verl.workers.rollout.vllm_rollout.vllm_async_server",
        attribute="qwen2_5_vl_dedup_image_tokens, get_vision_placeholder_token_ids",
        apply=f"{_ROLLOUT}:patch_vllm_server",
        when="always",
        why="vLLM expands one placeholder per stream itself; sampling a placeholder token would break the next turn",
    ),
    Integration(
        name="vLLM server: failed engine calls recorded for the watchdog",
        group="patches",
        kind="patch",
        target="verl.workers.rollout.vllm_rollout.vllm_async_server",
        attribute="vLLMHttpServer.collective_rpc, vLLMHttpServer.engine_call_failure (added)",
        apply=f"{_ROLLOUT}:record_engine_call_failures",
        when="always",
        why="a weight sync that fails in vLLM's worker leaves verl's sender waiting forever; the trainer's watchdog "
        "reads the failure and ends the run",
    ),
    Integration(
        name="vLLM adapter: thinker weights under full-checkpoint names",
        group="patches",
        kind="patch",
        target="verl.workers.rollout.vllm_rollout.vllm_rollout",
        attribute="ServerAdapter.update_weights",
        apply=f"{_ROLLOUT}:patch_vllm_adapter",
        when="always",
        why="vLLM's thinker model expects 'thinker.'-prefixed names; the actor holds the bare thinker",
    ),
    # MAPO-AT in verl's actor
    Integration(
        name="ReplayBuffer._dapo_filtered_keys: failed rewards neutralised before the group filter",
        group="patches",
        kind="patch",
        target="verl.trainer.ppo.v1.replay_buffer",
        attribute="ReplayBuffer._dapo_filtered_keys",
        apply=f"{_TRAINER}:patch_replay_buffer",
        when="always",
        why="verl's zero-variance group filter compares a group's rewards while it polls, before the trainer's "
        "advantage step; a failed judge call's NaN would decide whether the group is kept",
    ),
    Integration(
        name="forward_step: MAPO-AT attention capture",
        group="patches",
        kind="patch",
        target="verl.workers.engine.fsdp.transformer_impl",
        attribute="FSDPEngineWithLMHead.forward_step",
        apply=f"{_WORKERS}:patch_forward_step",
        when="always",
        why="L_attn needs the late layers' attention to audio keys; off unless algorithm.mapo_at.attention_loss",
    ),
    Integration(
        name="forward_backward_batch: MAPO-AT relevance-weight sum of the mini-batch",
        group="patches",
        kind="patch",
        target="verl.workers.engine.fsdp.transformer_impl",
        attribute="FSDPEngine.forward_backward_batch",
        apply=f"{_WORKERS}:patch_forward_backward_batch",
        when="always",
        why="the relevance-weighted loss under token-mean is sum w l / sum w over the global mini-batch; the sum over "
        "all ranks is known only here; off unless algorithm.mapo_at.relevance_mask",
    ),
    Integration(
        name="ppo_loss: MAPO-AT relevance weights and + eta * attention loss",
        group="patches",
        kind="patch",
        target="verl.workers.engine_workers",
        attribute="ppo_loss",
        apply=f"{_WORKERS}:patch_ppo_loss",
        when="always",
        why="scales the relevance weights to the mini-batch's weighted mean under token-mean and adds eta * L_attn "
        "to the policy loss; off unless algorithm.mapo_at is on",
    ),
    # rollouts, algorithms, trainer, rewards
    Integration(
        name="hf (rollout replica)",
        group="rollouts",
        kind="registration",
        target="verl.workers.rollout.replica",
        attribute="RolloutReplicaRegistry['hf']",
        apply=f"{_VERL}:register_hf_replica",
        when="always",
        why="rollout.name=hf: transformers generation, for machines without a vLLM build",
    ),
    Integration(
        name="hf (async server adapter)",
        group="rollouts",
        kind="registration",
        target="verl.workers.rollout.base",
        attribute="_ROLLOUT_REGISTRY[('hf', 'async')]",
        apply=f"{_VERL}:register_hf_adapter",
        when="always",
        why="the adapter verl's hybrid engine drives for rollout.name=hf",
    ),
    Integration(
        name="modality_agent (agent loop: deficit responses for contrastive weighting)",
        group="rollouts",
        kind="registration",
        target="verl.experimental.agent_loop.agent_loop",
        attribute="_agent_loop_registry['modality_agent']",
        apply=f"{_VERL}:register_agent_loop",
        when="always",
        why="contrastive weighting needs responses under a stream-deficit view of each prompt",
    ),
    Integration(
        name="mapo_stratified",
        group="advantage_estimators",
        kind="registration",
        target="verl.trainer.ppo.core_algos",
        attribute="ADV_ESTIMATOR_REGISTRY['mapo_stratified']",
        apply=f"{_VERL}:register_estimator",
        when="always",
        why="algorithm.adv_estimator=mapo_stratified (MAPLE §4.1)",
    ),
    Integration(
        name="mapo_relevance",
        group="policy_losses",
        kind="registration",
        target="verl.trainer.ppo.core_algos",
        attribute="POLICY_LOSS_REGISTRY['mapo_relevance']",
        apply=f"{_VERL}:register_policy_loss",
        when="always",
        why="actor.policy_loss.loss_mode=mapo_relevance (MAPO-AT's relevance mask, docs/method.md §5)",
    ),
    Integration(
        name="sync -> verl_modality.trainer.modality_trainer.ModalityTrainerSync",
        group="trainers",
        kind="registration",
        target="verl.trainer.ppo.v1.trainer_sync",
        attribute="TRAINER_REGISTRY['sync']",
        apply="verl_modality.trainer.modality_trainer:install",
        when="always",
        why="per-tag flow, curriculum, MAPO-AT pass; every override calls verl's method unchanged when none is selected",
    ),
    Integration(
        name="modality",
        group="reward_managers",
        kind="registration",
        target="verl.experimental.reward_loop.reward_manager",
        attribute="reward manager registry['modality']",
        apply="verl_modality.rewards.reward_manager:register_manager",
        when="always",
        why="reward_manager.name=modality: per-tag reward extras, caption judge, contrastive weighting",
    ),
)

# ---------------------------------------------------------------------------------------------------------------
# applying

_INSTALLED: set[str] = set()
_STATE: dict[str, str] = {}  # name -> "applied" or "error: ..."
#: Tracebacks of entries that failed in this process (the doctor reports them).
LOAD_ERRORS: list[str] = []
FAILURE = "verl-modality failed to load into verl; its algorithms and models are NOT available:\n"


def report_failure(tb: str) -> None:
    """Keep a failure's traceback and print it: verl swallows what plugins raise, so the plugin is loud itself."""
    LOAD_ERRORS.append(tb)
    logging.getLogger("verl_modality").error(FAILURE + tb)
    print(FAILURE + tb, file=sys.stderr, flush=True)


def disabled() -> set[str]:
    """Entry names and groups listed in ``VERL_MODALITY_DISABLE`` (comma-separated), to switch entries off."""
    names = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    unknown = sorted(names - {i.name for i in INTEGRATIONS} - set(GROUPS))
    if unknown:
        raise ValueError(f"{DISABLE_ENV}: {unknown} name no integration entry or group (groups: {', '.join(GROUPS)})")
    return names


def _is_disabled(item: Integration) -> bool:
    off = disabled()
    return item.name in off or item.group in off


def applies_here(item: Integration) -> bool:
    """Whether ``item.when`` holds in this process and ``VERL_MODALITY_DISABLE`` does not switch it off."""
    if _is_disabled(item):
        return False
    if item.when == "always":
        return True
    from verl_modality.platform import cpu

    if not cpu.is_selected():
        return False
    if item.when == "cpu":
        return True
    from verl_modality.platform import vllm_cpu

    return vllm_cpu.is_needed()


def resolve(item: Integration) -> Callable[[ModuleType], object]:
    """The function ``item.apply`` names (importing its module)."""
    module_name, _, attr = item.apply.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _loading(item: Integration) -> bool:
    """The module holding ``item.apply`` is being imported right now (its own import of the target fired the hook)."""
    module_name, _, attr = item.apply.partition(":")
    module = sys.modules.get(module_name)
    return module is not None and not hasattr(module, attr)


def _runner(item: Integration) -> Callable[[ModuleType], None]:
    def run(module: ModuleType) -> None:
        if _loading(item):
            # Such a module ends by calling its own apply function (the trainer and the reward manager do).
            _STATE[item.name] = "applied"
            return
        try:
            resolve(item)(module)
        except Exception as exc:
            # Not raised into the import of the target (verl's or transformers' own): loud, and failed in the doctor.
            _STATE[item.name] = f"error: {type(exc).__name__}: {exc}"
            report_failure(f"integration {item.name!r} on {item.target}:\n{traceback.format_exc()}")
            return
        _STATE[item.name] = "applied"

    run.__qualname__ = f"apply[{item.name}]"
    return run


def install(items: tuple[Integration, ...] = INTEGRATIONS) -> list[Integration]:
    """Hook every applicable entry on its target's import (at once where the target is imported); idempotent.
    Returns the entries hooked by this call or earlier ones."""
    from verl_modality.integrations.import_hooks import when_imported

    hooked = []
    for item in items:
        if not applies_here(item):
            continue
        if item.name not in _INSTALLED:
            _INSTALLED.add(item.name)
            when_imported(item.target, _runner(item))
        hooked.append(item)
    return hooked


def status(item: Integration, import_target: bool = False) -> str:
    """``applied``, ``waiting for <target>``, ``disabled (...)``, ``not applicable (<when>)``, ``not installed``
    (applicable, but this process loaded the plugin before, e.g. ``VERL_PLATFORM=cpu`` was set) or ``error: ...``.

    ``import_target`` imports the target first where it is importable (what the doctor does), so that ``waiting``
    means the module cannot be imported in this environment.
    """
    if _is_disabled(item):
        return f"disabled ({DISABLE_ENV})"
    if not applies_here(item):
        return f"not applicable (when={item.when})"
    if item.name not in _INSTALLED:
        return "not installed"
    if import_target and item.name not in _STATE and item.target not in sys.modules:
        try:
            importlib.import_module(item.target)
        except Exception as exc:  # e.g. verl's vLLM modules without vLLM: the hook keeps waiting
            return f"waiting for {item.target} (cannot import here: {type(exc).__name__})"
    return _STATE.get(item.name, f"waiting for {item.target}")
