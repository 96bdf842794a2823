"""Every change the plugin makes to verl, vLLM, transformers and Ray, declared once, as data.

Each :class:`Integration` names the module whose import applies it (``target``), every attribute it changes or
reads (``attributes``: ``(module, attribute path)`` pairs, a path such as ``FSDPEngine.forward_step`` or
``TRAINER_REGISTRY['sync']``), the function that makes the change (``apply``, ``"module:function"``, called with the
target module once it is imported), when it applies (``when``) and why. Patch functions change attributes only through
:mod:`verl_modality.integrations.patching` (one wrapper helper, one marker). :func:`install` hooks every applicable
entry on its target's import, so loading the plugin imports nothing heavy and each change happens once, in every
process that imports its target; :func:`status` says, per entry, whether its function ran (``applied``), is still
waiting for its module, is not applicable here, or failed; :func:`verify` checks every declared attribute: the
plugin's object where the entry applied, verl's own where it did not. ``verl-modality doctor`` prints both. A change
made anywhere else is a bug.

``when``: ``always``; ``cpu`` (only with ``VERL_PLATFORM=cpu``); ``vllm_cpu`` (``cpu`` and the ``vllm-cpu`` build of
vLLM installed with no ``vllm`` beside it). GPU runs therefore never see a ``cpu`` or ``vllm_cpu`` entry.
``VERL_MODALITY_DISABLE=trainers`` (entry names or groups, comma-separated) switches entries off, e.g. to run verl's
own ``PPOTrainerSync`` with everything else of the plugin in place.

``kind``: ``patch`` (an attribute wrapped, a method added, a table entry or a log filter set), ``registration`` (an
entry added to a registry of verl; one that replaces verl's entry names it in ``replaces``) or ``read`` (private
state of verl the plugin reads: ``apply`` checks that this verl still has it, and the feature that reads it checks
again at start-up).
"""

from __future__ import annotations

import ast
import importlib
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from verl_modality.integrations import patching

WHEN = ("always", "cpu", "vllm_cpu")
#: Comma-separated entry names or groups that the plugin leaves alone in this process (and its Ray workers).
DISABLE_ENV = "VERL_MODALITY_DISABLE"
KINDS = ("patch", "registration", "read")
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
_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*|\[[^\]]+\])*")


@dataclass(frozen=True)
class Integration:
    name: str  # what it is, as the doctor lists it
    group: str  # one of GROUPS
    kind: str  # one of KINDS
    target: str  # the module whose import applies it
    attributes: tuple[tuple[str, str], ...]  # (module, attribute path) of everything ``apply`` changes (or reads)
    apply: str  # "module:function"; the function takes the target module
    when: str  # one of WHEN
    why: str
    replaces: str = ""  # registration only: "module:attribute" of verl's entry that it replaces
    loads: tuple[str, ...] = ()  # plugin modules ``apply`` imports that import ``target`` themselves

    def __post_init__(self) -> None:
        if self.when not in WHEN or self.kind not in KINDS or self.group not in GROUPS or ":" not in self.apply:
            raise ValueError(f"integration {self.name!r}: bad when/kind/group/apply ({self})")
        if "," in self.name:  # VERL_MODALITY_DISABLE lists names comma-separated
            raise ValueError(f"integration {self.name!r}: a name must hold no comma")
        if not self.attributes or any(
            not isinstance(a, tuple) or len(a) != 2 or not _PATH.fullmatch(a[1]) for a in self.attributes
        ):
            raise ValueError(f"integration {self.name!r}: attributes must be (module, attribute path) pairs")
        if self.replaces and (self.kind != "registration" or ":" not in self.replaces):
            raise ValueError(f"integration {self.name!r}: replaces is 'module:attribute', for a registration only")

    @property
    def line(self) -> str:
        """``"target: name"``, the form :data:`verl_modality._register.REGISTERED` lists."""
        return f"{self.target}: {self.name}" if self.group == "patches" else self.name

    @property
    def attribute_text(self) -> str:
        """The declared attributes as the doctor prints them (``module.path``, the target's module left out)."""
        return ", ".join(path if module == self.target else f"{module}.{path}" for module, path in self.attributes)


def _in(module: str, *paths: str) -> tuple[tuple[str, str], ...]:
    return tuple((module, path) for path in paths)


# the modules that make the changes: one per target package (registrations of the plugin's own components live with
# them and use verl's registration functions)
_UTILS = "verl_modality.integrations.verl_utils"
_WORKERS = "verl_modality.integrations.verl_workers"
_ROLLOUT = "verl_modality.integrations.verl_rollout"
_TRAINER = "verl_modality.integrations.verl_trainer"
_VLLM_CPU = "verl_modality.integrations.vllm_cpu"
_CPU = "verl_modality.platform.cpu"
_VERL = "verl_modality.integrations.verl_registries"
_FSDP = "verl.workers.engine.fsdp.transformer_impl"
_SERVER = "verl.workers.rollout.vllm_rollout.vllm_async_server"
_REPLAY = "verl.trainer.ppo.v1.replay_buffer"

INTEGRATIONS: tuple[Integration, ...] = (
    # platform: a `cpu` platform for verl, which ships accelerator platforms only
    Integration(
        name="cpu",
        group="platforms",
        kind="registration",
        target="verl.plugin.platform.platform_manager",
        attributes=_in("verl.plugin.platform.platform_manager", "PlatformRegistry._platforms['cpu']"),
        apply=f"{_CPU}:register_platform",
        when="always",
        why="selectable with VERL_PLATFORM=cpu; never chosen by verl's auto-detection",
    ),
    Integration(
        name="language_model/value_model x fsdp/fsdp2 @cpu",
        group="engines",
        kind="registration",
        target=_FSDP,
        attributes=_in(
            "verl.workers.engine.base",
            *(
                f"EngineRegistry._engines['{m}']['{b}']['cpu']"
                for m in ("language_model", "value_model")
                for b in ("fsdp", "fsdp2")
            ),
        ),
        apply=f"{_VERL}:register_cpu_engines",
        when="cpu",
        why="verl registers its FSDP engines for cuda and npu devices only",
    ),
    Integration(
        name="gloo process groups",
        group="patches",
        kind="patch",
        target="verl.utils.distributed",
        attributes=_in(
            "verl.utils.distributed", "initialize_global_process_group_ray", "initialize_global_process_group"
        ),
        apply=f"{_UTILS}:patch_distributed",
        when="cpu",
        why="verl builds 'cpu:gloo,cpu:gloo' from the platform, which torch rejects as a duplicate device type",
    ),
    Integration(
        name="gloo process groups (engine workers' by-name import)",
        group="patches",
        kind="patch",
        target="verl.workers.engine_workers",
        attributes=_in("verl.workers.engine_workers", "initialize_global_process_group_ray"),
        apply=f"{_WORKERS}:rebind_gloo_process_group",
        when="cpu",
        why="engine_workers imported the function by name; it gets the same wrapper",
    ),
    Integration(
        name="FSDP2 offload without pinned memory (reference policy)",
        group="patches",
        kind="patch",
        target=_FSDP,
        attributes=_in(_FSDP, "CPUOffloadPolicy"),
        apply=f"{_WORKERS}:patch_offload_policy",
        when="cpu",
        why="verl shards forward-only engines (the reference policy) with pinned CPU offload; pinning needs CUDA "
        "(the module imported torch's class by name)",
    ),
    # vLLM's CPU build under verl's vLLM rollout
    Integration(
        name="version('vllm') answers for the vllm-cpu distribution",
        group="patches",
        kind="patch",
        target="importlib.metadata",
        attributes=_in("importlib.metadata", "version"),
        apply=f"{_VLLM_CPU}:alias_vllm_distribution",
        when="vllm_cpu",
        why="verl looks vLLM up by distribution name; the CPU build is installed as vllm-cpu",
    ),
    Integration(
        name="RuntimeContext.get_accelerator_ids lists the cpu platform's resource",
        group="patches",
        kind="patch",
        target="ray.runtime_context",
        attributes=_in("ray.runtime_context", "RuntimeContext.get_accelerator_ids"),
        apply=f"{_VLLM_CPU}:cpu_accelerator_ids",
        when="vllm_cpu",
        why="verl's vLLM replica reads the platform's resource among Ray's accelerator ids; its workers hold none",
    ),
    Integration(
        name="dispatch_cpu_unquantized_gemm keeps linear weights for weight sync",
        group="patches",
        kind="patch",
        target="vllm.model_executor.layers.utils",
        attributes=_in("vllm.model_executor.layers.utils", "dispatch_cpu_unquantized_gemm"),
        apply=f"{_VLLM_CPU}:keep_linear_weights",
        when="vllm_cpu",
        why="vLLM's CPU layers drop layer.weight after packing it, and verl's weight sync loads into it",
    ),
    Integration(
        name="CPU fused MoE: SiLU-and-mul without building a CustomOp at forward time",
        group="patches",
        kind="patch",
        target="vllm.model_executor.layers.fused_moe.cpu_fused_moe",
        attributes=_in("vllm.model_executor.layers.fused_moe.cpu_fused_moe", "_CPU_MOE_ACT_FN[MoEActivation.SILU]"),
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
        attributes=_in("transformers.configuration_utils", "logger.filters"),
        apply="verl_modality.integrations.transformers_logging:quiet_talker_token_ids",
        when="always",
        why="every Omni config load warns about token ids that are valid in the thinker's vocabulary (a filter for "
        "those seven warnings)",
    ),
    Integration(
        name="hf_processor: the Omni processor of the model family with multimodal RoPE",
        group="patches",
        kind="patch",
        target="verl.utils.tokenizer",
        attributes=(("verl.utils.tokenizer", "hf_processor"), ("verl.utils", "hf_processor")),
        apply=f"{_UTILS}:patch_tokenizer",
        when="always",
        why="verl 0.9.1 knows no Omni processor; non-Omni checkpoints reach verl's function unchanged",
    ),
    Integration(
        name="HFModelConfig: full Omni checkpoint -> thinker config",
        group="patches",
        kind="patch",
        target="verl.workers.config.model",
        attributes=_in("verl.workers.config.model", "HFModelConfig.__post_init__", "hf_processor"),
        apply=f"{_WORKERS}:patch_model_config",
        when="always",
        why="the actor and the rollout train and serve the thinker of a full Omni checkpoint (the module imported "
        "hf_processor by name: it gets the Omni processor's wrapper too); with LoRA, verl's default targets become the "
        "thinker's language model (encoders excluded), merged sync where vLLM serves no adapters (docs/lora.md)",
    ),
    Integration(
        name="FSDPEngine._build_module: leaf-layer FSDP wrapping for the thinker",
        group="patches",
        kind="patch",
        target=_FSDP,
        attributes=_in(_FSDP, "FSDPEngine._build_module"),
        apply=f"{_WORKERS}:patch_fsdp_engine",
        when="always",
        why="the thinker's audio encoder layers, vision blocks and decoder layers become the FSDP units; each forward "
        "of the built thinker runs every encoder (a dummy where the micro-batch has no such stream), so all ranks "
        "issue the same collectives",
    ),
    Integration(
        name="maybe_fix_3d_position_ids: repacks multimodal RoPE ids of equal-length batches",
        group="patches",
        kind="patch",
        target="verl.utils.tensordict_utils",
        attributes=_in("verl.utils.tensordict_utils", "maybe_fix_3d_position_ids"),
        apply=f"{_UTILS}:patch_tensordict_utils",
        when="always",
        why="TransferQueue packs equal-length (4, L) RoPE ids ragged on the wrong dimension; verl's fix misses it",
    ),
    Integration(
        name="engine base: the repacking position-id fix",
        group="patches",
        kind="patch",
        target="verl.workers.engine.base",
        attributes=_in("verl.workers.engine.base", "maybe_fix_3d_position_ids"),
        apply=f"{_WORKERS}:rebind_position_id_fix",
        when="always",
        why="the module imported verl's function by name; it gets the same wrapper",
    ),
    Integration(
        name="engine workers: the repacking position-id fix",
        group="patches",
        kind="patch",
        target="verl.workers.engine_workers",
        attributes=_in("verl.workers.engine_workers", "maybe_fix_3d_position_ids"),
        apply=f"{_WORKERS}:rebind_position_id_fix",
        when="always",
        why="the module imported verl's function by name; it gets the same wrapper",
    ),
    Integration(
        name="vLLM server: Omni placeholder collapse and placeholders never sampled",
        group="patches",
        kind="patch",
        target=_SERVER,
        attributes=_in(_SERVER, "qwen2_5_vl_dedup_image_tokens", "get_vision_placeholder_token_ids"),
        apply=f"{_ROLLOUT}:patch_vllm_server",
        when="always",
        why="vLLM expands one placeholder per stream itself; sampling a placeholder token would break the next turn",
    ),
    Integration(
        name="vLLM server: failed engine calls recorded for the watchdog",
        group="patches",
        kind="patch",
        target=_SERVER,
        attributes=_in(_SERVER, "vLLMHttpServer.collective_rpc", "vLLMHttpServer.engine_call_failure"),
        apply=f"{_ROLLOUT}:record_engine_call_failures",
        when="always",
        why="a weight sync that fails in vLLM's worker leaves verl's sender waiting forever; the trainer's watchdog "
        "reads the failure (engine_call_failure, a method the plugin adds) and ends the run",
    ),
    Integration(
        name="vLLM adapter: thinker weights under full-checkpoint names",
        group="patches",
        kind="patch",
        target="verl.workers.rollout.vllm_rollout.vllm_rollout",
        attributes=_in("verl.workers.rollout.vllm_rollout.vllm_rollout", "ServerAdapter.update_weights"),
        apply=f"{_ROLLOUT}:patch_vllm_adapter",
        when="always",
        why="vLLM's thinker model expects 'thinker.'-prefixed names; the actor holds the bare thinker (LoRA adapters: "
        "'base_model.model.thinker.*', encoder adapters refused, docs/lora.md)",
    ),
    # MAPO-AT and the group filter in verl's trainer and actor
    Integration(
        name="ReplayBuffer._dapo_filtered_keys: failed rewards neutralised before the group filter",
        group="patches",
        kind="patch",
        target=_REPLAY,
        attributes=_in(_REPLAY, "ReplayBuffer._dapo_filtered_keys"),
        apply=f"{_TRAINER}:patch_replay_buffer",
        when="always",
        why="verl's zero-variance group filter compares a group's rewards while it polls, before the trainer's "
        "advantage step; a failed judge call's NaN would decide whether the group is kept; inert unless the trainer "
        "gives the buffer its hook (algorithm.filter_groups with a reward function that marks failures)",
    ),
    Integration(
        name="ReplayBuffer state read by the group filter hook",
        group="patches",
        kind="read",
        target=_REPLAY,
        attributes=_in(
            _REPLAY, "ReplayBuffer.finished_keys", "ReplayBuffer._dapo_classification_cache", "ReplayBuffer.partitions"
        ),
        apply=f"{_TRAINER}:check_replay_buffer_state",
        when="always",
        why="the hook neutralises the failed rewards of the groups verl is about to classify: the finished prompt "
        "uids not yet in verl's classification cache, and their trajectory keys",
    ),
    Integration(
        name="ReplayBuffer.poll_interval set from trainer.v1.sampler.poll_interval",
        group="patches",
        kind="read",
        target=_REPLAY,
        attributes=_in(_REPLAY, "ReplayBuffer.poll_interval"),
        apply=f"{_TRAINER}:check_poll_interval",
        when="always",
        why="verl 0.9.1 polls for a sync step's finished trajectories every 2 s with no option for it; the trainer "
        "sets the buffer's attribute only when the option is given (tiny CPU models generate in well under 2 s)",
    ),
    Integration(
        name="forward_step: MAPO-AT attention capture",
        group="patches",
        kind="patch",
        target=_FSDP,
        attributes=_in(_FSDP, "FSDPEngineWithLMHead.forward_step"),
        apply=f"{_WORKERS}:patch_forward_step",
        when="always",
        why="L_attn needs the late layers' attention to audio keys; off unless algorithm.mapo_at.attention_loss",
    ),
    Integration(
        name="forward_backward_batch: MAPO-AT relevance-weight sum of the mini-batch",
        group="patches",
        kind="patch",
        target=_FSDP,
        attributes=_in(_FSDP, "FSDPEngine.forward_backward_batch"),
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
        attributes=_in("verl.workers.engine_workers", "ppo_loss"),
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
        attributes=_in("verl.workers.rollout.replica", "RolloutReplicaRegistry._registry['hf']"),
        apply=f"{_VERL}:register_hf_replica",
        when="always",
        why="rollout.name=hf: transformers generation, for machines without a vLLM build",
    ),
    Integration(
        name="hf (async server adapter)",
        group="rollouts",
        kind="registration",
        target="verl.workers.rollout.base",
        attributes=_in("verl.workers.rollout.base", "_ROLLOUT_REGISTRY[('hf', 'async')]"),
        apply=f"{_VERL}:register_hf_adapter",
        when="always",
        why="the adapter verl's hybrid engine drives for rollout.name=hf",
    ),
    Integration(
        name="modality_agent (agent loop: deficit responses for contrastive weighting)",
        group="rollouts",
        kind="registration",
        target="verl.experimental.agent_loop.agent_loop",
        attributes=_in("verl.experimental.agent_loop.agent_loop", "_agent_loop_registry['modality_agent']"),
        apply=f"{_VERL}:register_agent_loop",
        when="always",
        why="contrastive weighting needs responses under a stream-deficit view of each prompt",
    ),
    Integration(
        name="mapo_stratified",
        group="advantage_estimators",
        kind="registration",
        target="verl.trainer.ppo.core_algos",
        attributes=_in("verl.trainer.ppo.core_algos", "ADV_ESTIMATOR_REGISTRY['mapo_stratified']"),
        apply=f"{_VERL}:register_estimator",
        when="always",
        why="algorithm.adv_estimator=mapo_stratified (MAPLE §4.1)",
    ),
    Integration(
        name="mapo_relevance",
        group="policy_losses",
        kind="registration",
        target="verl.trainer.ppo.core_algos",
        attributes=_in("verl.trainer.ppo.core_algos", "POLICY_LOSS_REGISTRY['mapo_relevance']"),
        apply=f"{_VERL}:register_policy_loss",
        when="always",
        why="actor.policy_loss.loss_mode=mapo_relevance (MAPO-AT's relevance mask, docs/method.md §5)",
    ),
    Integration(
        name="sync -> verl_modality.trainer.modality_trainer.ModalityTrainerSync",
        group="trainers",
        kind="registration",
        target="verl.trainer.ppo.v1.trainer_sync",
        attributes=_in("verl.trainer.ppo.v1.trainer_base", "TRAINER_REGISTRY['sync']"),
        apply="verl_modality.trainer.modality_trainer:install",
        when="always",
        why="per-tag flow, curriculum, MAPO-AT pass; every override calls verl's method unchanged when none is selected",
        replaces="verl.trainer.ppo.v1.trainer_sync:PPOTrainerSync",
    ),
    Integration(
        name="modality",
        group="reward_managers",
        kind="registration",
        target="verl.experimental.reward_loop.reward_manager",
        attributes=_in("verl.experimental.reward_loop.reward_manager.registry", "REWARD_MANAGER['modality']"),
        apply=f"{_VERL}:register_reward_manager",
        when="always",
        why="reward_manager.name=modality: verl's naive manager plus each response's token length and an error on a "
        "non-finite score the reward function did not mark failed (the caption judge and contrastive weighting are "
        "the reward function's, verl_modality.rewards.score)",
        loads=("verl_modality.rewards.reward_manager",),
    ),
)

# ---------------------------------------------------------------------------------------------------------------
# applying

_INSTALLED: set[str] = set()
_STATE: dict[str, str] = {}  # name -> "applied", "deferred" or "error: ..."
_DEFERRED: dict[str, tuple[Integration, ModuleType]] = {}  # name -> (entry, target module)
#: Tracebacks of entries that failed in this process (the doctor reports them).
LOAD_ERRORS: list[str] = []
FAILURE = "verl-modality failed to load into verl; its algorithms and models are NOT available:\n"
APPLIED = "applied"
VERIFIED = "verified"


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


def is_disabled(item: Integration) -> bool:
    off = disabled()
    return item.name in off or item.group in off


def applies_here(item: Integration) -> bool:
    """Whether ``item.when`` holds in this process and ``VERL_MODALITY_DISABLE`` does not switch it off."""
    if is_disabled(item):
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


def _initializing(module_name: str) -> bool:
    module = sys.modules.get(module_name)
    return module is not None and bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _loading(item: Integration) -> bool:
    """A plugin module the entry needs is being imported right now (its own import of the target fired the hook)."""
    module_name, _, attr = item.apply.partition(":")
    module = sys.modules.get(module_name)
    if module is not None and (not hasattr(module, attr) or _initializing(module_name)):
        return True
    return any(_initializing(name) for name in item.loads)


def _apply(item: Integration, module: ModuleType) -> None:
    """Run the entry's function on its target module; ``applied`` once it returned."""
    _DEFERRED.pop(item.name, None)
    try:
        resolve(item)(module)
    except Exception as exc:
        # Not raised into the import of the target (verl's or transformers' own): loud, and failed in the doctor.
        _STATE[item.name] = f"error: {type(exc).__name__}: {exc}"
        report_failure(f"integration {item.name!r} on {item.target}:\n{traceback.format_exc()}")
        return
    _STATE[item.name] = APPLIED


def _runner(item: Integration) -> Callable[[ModuleType], None]:
    def run(module: ModuleType) -> None:
        if _loading(item):
            # That module is half imported: the entry runs once it is (see finish_loading, settle).
            _STATE[item.name] = "deferred"
            _DEFERRED[item.name] = (item, module)
            return
        _apply(item, module)

    run.__qualname__ = f"apply[{item.name}]"
    return run


def finish_loading(module_name: str) -> None:
    """Run the entries deferred because ``module_name`` was being imported when their target was; the module calls
    this as its last statement."""
    for item, target in list(_DEFERRED.values()):
        if item.apply.partition(":")[0] == module_name or module_name in item.loads:
            _apply(item, target)


def settle() -> None:
    """Run every deferred entry whose plugin modules have finished importing."""
    for item, target in list(_DEFERRED.values()):
        if not _loading(item):
            _apply(item, target)


def install(items: tuple[Integration, ...] = INTEGRATIONS) -> list[Integration]:
    """Hook every applicable entry on its target's import (at once where the target is imported); idempotent.
    Returns the entries hooked by this call or earlier ones."""
    from verl_modality.integrations.import_hooks import when_imported

    settle()
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
    """``applied`` (its function ran), ``deferred``, ``waiting for <target>``, ``disabled (...)``, ``not applicable
    (<when>)``, ``not installed`` (applicable, but this process loaded the plugin before, e.g. ``VERL_PLATFORM=cpu``
    was set) or ``error: ...``.

    ``import_target`` imports the target first where it is importable (what the doctor does), so that ``waiting``
    means the module cannot be imported in this environment.
    """
    if is_disabled(item):
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
    settle()
    return _STATE.get(item.name, f"waiting for {item.target}")


# ---------------------------------------------------------------------------------------------------------------
# verifying


def _key(expr: str, namespace: dict[str, Any]) -> Any:
    """A subscript of a declared path: a literal, or a dotted name of the module (``MoEActivation.SILU``)."""
    try:
        return ast.literal_eval(expr)
    except (ValueError, SyntaxError):
        head, *rest = expr.strip().split(".")
        value = namespace[head]
        for part in rest:
            value = getattr(value, part)
        return value


def locate(module_name: str, path: str) -> tuple[Any, Any, Any]:
    """``(owner, key, value)`` of ``path`` in the imported module ``module_name``: the object holding the last part
    (a module, class or registry), the attribute name or registry key, and its value (:data:`patching.ABSENT` when
    missing). Raises ``LookupError`` when a part before the last is missing."""
    module = sys.modules[module_name]
    parts = re.findall(r"\.?([A-Za-z_]\w*)|\[([^\]]+)\]", path)
    owner: Any = module
    for i, (name, sub) in enumerate(parts):
        key = name if name else _key(sub, vars(module))
        last = i == len(parts) - 1
        value = getattr(owner, key, patching.ABSENT) if name else owner.get(key, patching.ABSENT)
        if last:
            return owner, key, value
        if value is patching.ABSENT:
            raise LookupError(f"{module_name}.{path}: no {key!r} in {owner!r}")
        owner = value
    raise LookupError(f"{module_name}.{path}: empty path")


def _instance_attribute(owner: Any, key: str) -> bool:
    """``key`` is set on instances of the class ``owner`` by its ``__init__`` (or is a class attribute)."""
    init = getattr(owner, "__init__", None)
    return hasattr(owner, key) or key in getattr(getattr(init, "__code__", None), "co_names", ())


def _problems(item: Integration, ours: bool) -> list[str]:
    """What differs from the expected state of each declared attribute: the plugin's object (``ours``) or, for an
    entry that did not apply, verl's own (a registration's key absent, or the entry it declares it replaces)."""
    problems = []
    for module_name, path in item.attributes:
        where = f"{module_name}.{path}"
        try:
            owner, key, value = locate(module_name, path)
        except LookupError as exc:
            if ours or item.kind != "registration":  # a registry key's missing parent is verl's own state
                problems.append(f"{where}: cannot be resolved ({exc})")
            continue
        if item.kind == "read":
            if not (isinstance(owner, type) and _instance_attribute(owner, key)):
                problems.append(f"{where}: this version has no such attribute")
            continue
        mine = patching.is_ours(owner, key, value)
        if ours:
            if value is patching.ABSENT:
                problems.append(f"{where}: missing")
            elif not mine:
                problems.append(f"{where}: is not the plugin's ({value!r})")
            elif patching.is_marked(getattr(value, "__wrapped__", None)):
                problems.append(f"{where}: the plugin's wrapper wraps another of its wrappers")
            change = patching.change_of(owner, key)
            if change is not None and change.replaced is not patching.ABSENT and item.kind == "registration":
                declared = _resolve_name(item.replaces) if item.replaces else patching.ABSENT
                if declared is not change.replaced:
                    problems.append(f"{where}: replaced {change.replaced!r}, which the entry does not declare")
        elif value is not patching.ABSENT and mine:
            problems.append(f"{where}: is the plugin's although the entry does not apply")
        elif item.kind == "registration" and value is not patching.ABSENT:
            if not item.replaces or value is not _resolve_name(item.replaces):
                problems.append(f"{where}: holds {value!r}, not verl's own")
    return problems


def _resolve_name(ref: str) -> Any:
    module_name, _, path = ref.partition(":")
    return locate(importlib.import_module(module_name).__name__, path)[2]


def verify(item: Integration) -> str:
    """Check every declared attribute of an entry whose modules are imported: ``verified`` (the plugin's objects
    where the entry applied, verl's own where it is disabled or not applicable), ``unverified: <why>`` (a module not
    imported) or ``FAILED: <what differs>``. Imports nothing."""
    state = status(item)
    applied = state == APPLIED
    if not applied and not (state.startswith(("disabled", "not applicable"))):
        return f"unverified: {state}"
    missing = sorted({m for m, _ in item.attributes if m not in sys.modules})
    if missing:
        return f"unverified: {', '.join(missing)} not imported"
    if item.kind == "read":  # verl's state, which the plugin leaves alone: checked where the entry applies
        problems = _problems(item, ours=True) if applied else []
    else:
        problems = _problems(item, ours=applied)
    return f"FAILED: {'; '.join(problems)}" if problems else VERIFIED
