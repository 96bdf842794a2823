"""The plugin's components in verl's registries: the algorithms in ``core_algos`` (the algorithms themselves know
nothing of verl), the ``hf`` rollout, the ``modality_agent`` agent loop, and verl's FSDP engines for the ``cpu``
platform.

Each function takes the verl module that holds the registry; :mod:`verl_modality.integrations.registry` calls it
once that module is imported. Every entry goes in through :func:`verl_modality.integrations.patching.register`, which
refuses to replace an entry verl already has. (The ``cpu`` platform and the trainer register through functions
beside them, named in the same registry.)
"""

from __future__ import annotations

from types import ModuleType

from verl_modality.integrations.patching import register


def register_estimator(core_algos: ModuleType) -> None:
    """``mapo_stratified`` in ``ADV_ESTIMATOR_REGISTRY`` (``verl.trainer.ppo.core_algos``)."""
    from verl_modality.algorithms.advantage import ESTIMATOR_NAME, mapo_stratified_advantage

    fn = mapo_stratified_advantage
    register(
        core_algos.ADV_ESTIMATOR_REGISTRY,
        ESTIMATOR_NAME,
        fn,
        add=lambda: core_algos.register_adv_est(ESTIMATOR_NAME)(fn),
    )


def register_policy_loss(core_algos: ModuleType) -> None:
    """``mapo_relevance`` in ``POLICY_LOSS_REGISTRY`` (``verl.trainer.ppo.core_algos``)."""
    from verl_modality.algorithms.relevance import LOSS_MODE, compute_policy_loss_mapo_relevance

    fn = compute_policy_loss_mapo_relevance
    register(core_algos.POLICY_LOSS_REGISTRY, LOSS_MODE, fn, add=lambda: core_algos.register_policy_loss(LOSS_MODE)(fn))


def register_hf_replica(module: ModuleType) -> None:
    """``rollout.name=hf`` in verl's ``RolloutReplicaRegistry`` (``module``: ``verl.workers.rollout.replica``)."""
    from verl_modality.rollout import hf_rollout

    replicas = module.RolloutReplicaRegistry
    add = lambda: replicas.register(hf_rollout.NAME, load_hf_replica)  # noqa: E731
    register(replicas._registry, hf_rollout.NAME, load_hf_replica, add=add)


def load_hf_replica() -> type:
    """The ``hf`` replica class (verl's replica registry holds loaders)."""
    from verl_modality.rollout import hf_rollout

    return hf_rollout.HFReplica


def register_hf_adapter(module: ModuleType) -> None:
    """The ``(hf, async)`` server adapter in verl's ``_ROLLOUT_REGISTRY`` (``module``:
    ``verl.workers.rollout.base``)."""
    from verl_modality.rollout import hf_rollout

    register(module._ROLLOUT_REGISTRY, (hf_rollout.NAME, "async"), f"{hf_rollout.__name__}.HFServerAdapter")


def register_agent_loop(module: ModuleType) -> None:
    """``modality_agent`` in verl's agent loop registry (``module``: ``verl.experimental.agent_loop.agent_loop``)."""
    from verl_modality.rollout import deficit_agent_loop as loop

    register(module._agent_loop_registry, loop.AGENT_NAME, {"_target_": f"{loop.__name__}.{loop.CLASS_NAME}"})


def register_reward_manager(module: ModuleType) -> None:
    """``modality`` in verl's reward-manager registry (``module``: ``verl.experimental.reward_loop.reward_manager``)."""
    from verl_modality.rewards.reward_manager import NAME, ModalityRewardManager

    add = lambda: module.register(NAME)(ModalityRewardManager)  # noqa: E731
    register(module.registry.REWARD_MANAGER, NAME, ModalityRewardManager, add=add)


def register_cpu_engines(module: ModuleType | None = None) -> list[tuple[str, str]]:
    """Make verl's FSDP engines resolvable for ``device='cpu'``; returns the (model_type, backend) pairs added."""
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    from verl_modality.platform.cpu import PLATFORM_NAME

    added = []
    for model_type, cls in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
        for backend in ("fsdp", "fsdp2"):
            slot = EngineRegistry._engines.setdefault(model_type, {}).setdefault(backend, {})
            if PLATFORM_NAME not in slot:
                added.append((model_type, backend))
            register(slot, PLATFORM_NAME, cls)
    return added
