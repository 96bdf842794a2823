"""Failed rewards (``judge_failed``) become their group's mean valid score, in the step's stored ``rm_scores``."""

import numpy as np
import pytest
import torch
from memory_store import MemoryStore
from omegaconf import OmegaConf

from verl_modality.trainer.features.failed_rewards import FailedRewards, failed_flags, rewrite_scores

NAN = float("nan")


def _cfg(path):
    return OmegaConf.create({"reward": {"custom_reward_function": {"path": path}}})


def test_only_our_marking_reward_functions_turn_it_on():
    assert FailedRewards(_cfg("verl_modality/rewards/caption_judge.py")).enabled
    assert FailedRewards(_cfg("pkg://verl_modality.rewards.score")).enabled
    assert FailedRewards(_cfg("/site-packages/verl_modality/rewards/score.py")).enabled
    assert not FailedRewards(_cfg("verl_modality/rewards/choice.py")).enabled
    assert not FailedRewards(_cfg("pkg://verl_modality.rewards.choice")).enabled
    assert not FailedRewards(OmegaConf.create({})).enabled


def test_failed_flags_read_reward_extra_info():
    extra = [{"reward_extra_info": {"judge_failed": 1.0}}, {"reward_extra_info": {}}, None, {}]
    assert failed_flags(extra).tolist() == [True, False, False, False]


def test_rewrite_scores_puts_the_new_score_where_the_old_one_sat():
    rows = [torch.tensor([0.0, 0.0, NAN]), torch.tensor([0.0, 0.7, 0.0]), torch.tensor([0.0, 0.0]), torch.ones(2)]
    out = rewrite_scores(rows, np.array([0.25, 0.5, 0.75, 9.0]), np.array([True, True, True, False]))
    assert out[0].tolist() == [0.0, 0.0, 0.25]  # at the NaN
    assert out[1].tolist() == [0.0, 0.5, 0.0]  # a finite marked score: at its last non-zero entry
    assert out[2].tolist() == [0.0, 0.75]  # all zero: at the last token
    assert out[3] is rows[3]


def _step(store, scores, failed, groups):
    rows = [
        {
            "group": g,
            "rm_scores": torch.tensor(s),
            "extra_fields": {"reward_extra_info": {"judge_failed": float(f)}},
        }
        for s, f, g in zip(scores, failed, groups, strict=True)
    ]
    return store.add("train", rows)


def test_apply_rewrites_the_stored_scores_of_failed_samples():
    store = MemoryStore()
    batch = _step(store, [[0.0, 1.0], [0.0, NAN], [0.0, 0.0], [NAN], [NAN]], [0, 1, 0, 1, 1], ["a", "a", "a", "b", "b"])
    feature = FailedRewards(_cfg("verl_modality/rewards/caption_judge.py"))
    metrics = feature.apply(store, batch)
    assert metrics == {"reward/failed": 3.0, "reward/failed_groups": 1.0}
    got = store.kv_batch_get(batch.keys, "train", ["rm_scores"])["rm_scores"].unbind()
    # group a: the failed member gets the mean of 1.0 and 0.0; group b has no valid score: 0 for all
    assert [r.tolist() for r in got] == [[0.0, 1.0], [0.0, 0.5], [0.0, 0.0], [0.0], [0.0]]


def test_apply_without_failures_writes_nothing_and_a_nan_not_marked_is_an_error():
    store = MemoryStore()
    batch = _step(store, [[1.0], [0.0]], [0, 0], ["a", "a"])
    feature = FailedRewards(_cfg("verl_modality.rewards.score"))
    assert feature.apply(store, batch) == {"reward/failed": 0.0, "reward/failed_groups": 0.0}
    assert ("put", "train") not in store.calls
    batch = _step(store, [[NAN], [0.0], [NAN]], [0, 0, 1], ["a", "a", "a"])
    with pytest.raises(ValueError, match="not finite and not marked"):
        feature.apply(store, batch)


def test_group_ids_split_keys_as_verl_does_with_underscores_in_the_uid():
    from verl_modality.trainer.features.failed_rewards import group_ids

    assert group_ids(["a_b_c_3_0", "a_b_c_3_1", "uid_0_0", "x-y_12_7"]) == ["a_b_c", "a_b_c", "uid", "x-y"]
