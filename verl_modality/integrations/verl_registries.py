"""The algorithms' registrations into verl's ``core_algos`` (the algorithms themselves know nothing of verl).

Each function takes the verl module that holds the registry; :mod:`verl_modality.integrations.registry` calls it
once that module is imported.
"""

from __future__ import annotations

from types import ModuleType


def register_estimator(core_algos: ModuleType) -> None:
    """``mapo_stratified`` in ``ADV_ESTIMATOR_REGISTRY`` (``verl.trainer.ppo.core_algos``)."""
    from verl_modality.algorithms.advantage import ESTIMATOR_NAME, mapo_stratified_advantage

    if core_algos.ADV_ESTIMATOR_REGISTRY.get(ESTIMATOR_NAME) is not mapo_stratified_advantage:
        core_algos.register_adv_est(ESTIMATOR_NAME)(mapo_stratified_advantage)


def register_policy_loss(core_algos: ModuleType) -> None:
    """``mapo_relevance`` in ``POLICY_LOSS_REGISTRY`` (``verl.trainer.ppo.core_algos``)."""
    from verl_modality.algorithms.relevance import LOSS_MODE, compute_policy_loss_mapo_relevance

    if core_algos.POLICY_LOSS_REGISTRY.get(LOSS_MODE) is not compute_policy_loss_mapo_relevance:
        core_algos.register_policy_loss(LOSS_MODE)(compute_policy_loss_mapo_relevance)
