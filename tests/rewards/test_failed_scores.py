import numpy as np
import pytest
import torch
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

from verl_modality.rewards.failed_scores import neutralize_failed

NAN = float("nan")


def test_failed_sample_gets_group_mean_and_zero_grpo_advantage():
    scores = np.array([1.0, 0.0, NAN, 0.5, NAN, NAN])
    groups = ["a", "a", "a", "b", "c", "c"]
    failed = np.isnan(scores)
    new, stats = neutralize_failed(scores, groups, failed)
    np.testing.assert_allclose(new, [1.0, 0.0, 0.5, 0.5, 0.0, 0.0])
    assert stats == {"reward/failed": 3.0, "reward/failed_groups": 1.0}
    # verl's own GRPO: the neutralised samples get exactly zero advantage
    token_scores = torch.zeros(6, 3)
    token_scores[:, -1] = torch.tensor(new, dtype=torch.float32)
    adv, _ = compute_grpo_outcome_advantage(token_scores, torch.ones(6, 3), np.array(groups, dtype=object))
    assert adv[2].abs().max() == 0 and adv[4:].abs().max() == 0
    assert adv[0, 0] > 0 > adv[1, 0]


def test_unmarked_nan_is_an_error_and_nothing_failed_is_identity():
    with pytest.raises(ValueError, match="not marked as failed"):
        neutralize_failed(np.array([1.0, NAN]), ["a", "a"], np.array([False, False]))
    scores = np.array([0.2, 0.7])
    new, stats = neutralize_failed(scores, ["a", "b"], np.array([False, False]))
    np.testing.assert_array_equal(new, scores)
    assert stats["reward/failed"] == 0.0


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        neutralize_failed(np.zeros(2), ["a"], np.zeros(2, dtype=bool))
