"""verl's zero-variance group filter (``algorithm.filter_groups``) sees failed rewards neutralised, and refuses a
QA-only metric on caption data; verl's own ``ReplayBuffer.sample`` runs over the in-memory store."""

import datasets
import pytest
import torch
from memory_store import MemoryStore
from omegaconf import OmegaConf
from verl.trainer.ppo.v1 import replay_buffer as rb

from verl_modality.trainer.features.failed_rewards import FailedRewards
from verl_modality.trainer.features.group_filter import GroupFilter, filter_metric

NAN = float("nan")
SCORE = "pkg://verl_modality.rewards.score"
JUDGE = "verl_modality/rewards/caption_judge.py"
# four prompt groups of three trajectories; None marks a failed judge call (NaN score, judge_failed=1)
GROUPS = {
    "ga": [1.0, 0.0, None],  # valid members differ: kept, the failed one gets 0.5
    "gb": [1.0, 1.0, None],  # valid members agree: no signal, filtered (a NaN would have kept it)
    "gc": [None, None, None],  # nothing valid: 0 for all, filtered
    "gd": [0.0, 1.0, 1.0],  # no failure: kept
}


def _cfg(metric="reward", path=SCORE, enable=True):
    return OmegaConf.create(
        {
            "algorithm": {"filter_groups": {"enable": enable, "metric": metric}},
            "reward": {"custom_reward_function": {"path": path}},
        }
    )


def _fill(store, groups=GROUPS):
    """verl's layout: a prompt key per group (tag ``is_prompt``), trajectories ``<uid>_<session>_0`` with
    ``rm_scores`` (the score at the last token) and ``extra_fields.reward_extra_info``."""
    for uid, scores in groups.items():
        store.tag("train", [uid], [{"is_prompt": True, "status": "finished", "global_steps": 0}])
        keys = [f"{uid}_{i}_0" for i in range(len(scores))]
        for key, s in zip(keys, scores, strict=True):
            value = NAN if s is None else s
            store.partitions.setdefault("train", {})[key] = {
                "rm_scores": torch.tensor([0.0, value]),
                "extra_fields": {"reward_extra_info": {"score": value, "acc": None, "judge_failed": float(s is None)}},
            }
        store.tag("train", keys, [{"status": "success", "global_steps": 0} for _ in keys])


def _buffer(metric, refills, batch_size=2):
    return rb.ReplayBuffer(
        trainer_mode="sync",
        trainer_config={},
        max_off_policy_threshold=None,
        max_off_policy_strategy="drop",
        sampler_kwargs={},
        poll_interval=0.0,
        refill_fn=refills.append,
        filter_groups_metric=metric,
        train_batch_size=batch_size,
        gen_batch_size=1,
    )


def _sample(monkeypatch, metric, guarded=True, groups=GROUPS, batch_size=2):
    store = MemoryStore()
    _fill(store, groups)
    monkeypatch.setattr(rb, "tq", store)  # verl's replay buffer talks to TransferQueue through this module name
    refills = []
    buffer = _buffer(metric, refills, batch_size)
    failed = FailedRewards(_cfg(metric))
    group_filter = GroupFilter(_cfg(metric), failed)
    if guarded:
        assert group_filter.guard(buffer, store) and group_filter.labels
    batch, metrics = buffer.sample(global_steps=0, partition_id="train", batch_size=batch_size)
    return store, batch, metrics, failed


def _score(store, key):
    return store.partitions["train"][key]["rm_scores"].tolist()


@pytest.mark.parametrize("metric", ["reward", "score"])
def test_failed_rewards_are_neutralised_before_verls_filter_compares_a_group(monkeypatch, metric):
    store, batch, metrics, failed = _sample(monkeypatch, metric)
    assert sorted({k.split("_")[0] for k in batch.keys}) == ["ga", "gd"]
    assert metrics["training/filter_groups/evicted_samples"] == 2  # gb and gc, counted by verl
    assert metrics[rb.DAPO_FILTERED_REWARD_COUNTS_KEY] == {1.0: 1, 0.0: 1}
    assert "gb_0_0" not in store.partitions["train"] and "gc_2_0" not in store.partitions["train"]
    assert _score(store, "ga_2_0") == [0.0, 0.5]  # the mean of 1.0 and 0.0, where the NaN sat
    info = store.partitions["train"]["ga_2_0"]["extra_fields"]["reward_extra_info"]
    assert info["score"] == 0.5 and info["judge_failed"] == 1.0 and info["acc"] is None
    # at the advantages: nothing left to rewrite, the failures are counted with the batch and the filtered groups
    store.calls.clear()
    out = failed.apply(store, batch, group_filter=True)
    assert out == {"reward/failed": 1.0, "reward/failed_groups": 0.0, "reward/failed_filtered": 4.0}
    assert ("put", "train") not in store.calls
    assert _score(store, "ga_2_0") == [0.0, 0.5]


@pytest.mark.parametrize("metric", ["reward", "score"])
def test_agreeing_valid_scores_make_a_group_without_variance_exactly(monkeypatch, metric):
    # np.mean([0.7] * 3) is 0.6999999999999998: the failed member gets 0.7 itself, or the group would look varied
    groups = {"ge": [0.7, 0.7, 0.7, None], "gf": [0.1, 0.3, None, None]}
    store, batch, metrics, failed = _sample(monkeypatch, metric, groups=groups, batch_size=1)
    assert {k.split("_")[0] for k in batch.keys} == {"gf"} and metrics["training/filter_groups/evicted_samples"] == 1
    info = store.partitions["train"]["gf_3_0"]["extra_fields"]["reward_extra_info"]
    assert info["score"] == 0.2 and _score(store, "gf_3_0")[1] == pytest.approx(0.2)
    assert failed.apply(store, batch, group_filter=True)["reward/failed_filtered"] == 1.0


def test_without_the_guard_verls_filter_keeps_groups_because_of_a_nan(monkeypatch):
    _, _, metrics, _ = _sample(monkeypatch, "reward", guarded=False)
    assert "training/filter_groups/evicted_samples" not in metrics  # gb [1, 1, NaN] and gc [NaN] x3 pass the test


def test_a_metric_the_filter_does_not_read_is_left_alone_but_score_follows(monkeypatch):
    store = MemoryStore()
    _fill(store)
    feature = FailedRewards(_cfg())
    keys = [k for k in store.partitions["train"] if k.startswith("ga_")]
    assert feature.before_group_filter(store, "train", keys, "judge_missing") == {"ga": 1}
    info = store.partitions["train"]["ga_2_0"]["extra_fields"]["reward_extra_info"]
    assert info["score"] == 0.5 and "judge_missing" not in info  # absent keys are not invented
    store.partitions["train"]["gb_0_0"]["extra_fields"]["reward_extra_info"]["judge_missing"] = 0.2
    store.partitions["train"]["gb_1_0"]["extra_fields"]["reward_extra_info"]["judge_missing"] = 0.6
    store.partitions["train"]["gb_2_0"]["extra_fields"]["reward_extra_info"]["judge_missing"] = NAN
    keys = [k for k in store.partitions["train"] if k.startswith("gb_")]
    feature.before_group_filter(store, "train", keys, "judge_missing")
    assert store.partitions["train"]["gb_2_0"]["extra_fields"]["reward_extra_info"]["judge_missing"] == 0.4


def test_guard_needs_the_filter_and_a_marking_reward_function():
    buffer = _buffer("reward", [])
    assert not GroupFilter(_cfg(enable=False), FailedRewards(_cfg())).guard(buffer, MemoryStore())
    choice = _cfg(path="pkg://verl_modality.rewards.choice")
    assert not GroupFilter(choice, FailedRewards(choice)).guard(buffer, MemoryStore())
    assert filter_metric(_cfg(enable=False)) is None and filter_metric(_cfg("acc")) == "acc"


def test_a_qa_metric_on_caption_data_is_refused_with_the_reason():
    with pytest.raises(
        ValueError, match=r"metric=acc: the reward function .*caption_judge scores captions and returns no 'acc'"
    ):
        GroupFilter(_cfg("acc", JUDGE), FailedRewards(_cfg("acc", JUDGE)))
    guard = GroupFilter(_cfg("acc"), FailedRewards(_cfg("acc")))
    guard.check_tasks(["qa", "qa"])  # QA data: acc is every row's correctness
    guard.check_tasks(None)  # no task column
    with pytest.raises(
        ValueError, match=r"metric=acc: .* 2 caption row\(s\) \(task column; first: row 1 \(id 'c1'\)\)"
    ):
        guard.check_tasks(["qa", "caption", "caption"], ["q0", "c1", "c2"])
    frame = datasets.Dataset.from_dict({"id": ["q0", "c1"], "task": ["qa", "caption"]})
    dataset = type("Data", (), {"dataframe": frame})  # verl's RLHFDataset keeps the rows as ``dataframe``
    with pytest.raises(ValueError, match=r"1 caption row\(s\) .*Filter on 'score' .* or 'reward'"):
        guard.check_dataset(dataset)
    # score / reward are every row's: fine on caption data; another reward function is not ours to judge
    GroupFilter(_cfg("score"), FailedRewards(_cfg("score"))).check_dataset(dataset)
    biased = _cfg("acc", "tests/trainer/biased_reward.py")
    GroupFilter(biased, FailedRewards(biased)).check_dataset(dataset)


def test_the_hook_finds_the_trajectories_of_a_uid_with_underscores():
    """Trajectory keys are ``<uid>_<session>_<index>`` (verl's trainer splits them with ``rsplit("_", 2)``): a uid
    that holds underscores keeps its trajectories, and a uid that is a prefix of it gets none of them."""
    from collections import defaultdict
    from types import SimpleNamespace

    from verl_modality.integrations.verl_trainer import groups_to_classify
    from verl_modality.trainer.features.failed_rewards import group_ids

    keys = ["p_1_a_0_0", "p_1_a_1_0", "p_0_0", "p_1_b_0_0"]
    buffer = SimpleNamespace(
        finished_keys=defaultdict(set, train={"p_1_a", "p"}),
        _dapo_classification_cache=defaultdict(dict, train={"p": None}),  # classified already
        partitions=defaultdict(dict, train={k: {} for k in keys}),
    )
    assert groups_to_classify(buffer, "train", group_ids) == ["p_1_a_0_0", "p_1_a_1_0"]


@pytest.mark.parametrize("attribute", ["finished_keys", "_dapo_classification_cache", "partitions"])
def test_a_buffer_whose_verl_internals_differ_is_refused_at_start_up(monkeypatch, attribute):
    import importlib.metadata as md

    monkeypatch.setattr(rb, "tq", MemoryStore())
    buffer = _buffer("reward", [])
    setattr(buffer, attribute, {})  # a plain dict: not verl 0.9.1's defaultdict of partitions
    group_filter = GroupFilter(_cfg("reward"), FailedRewards(_cfg("reward")))
    with pytest.raises(RuntimeError, match=rf"verl {md.version('verl')}: ReplayBuffer\.{attribute} is 'dict'"):
        group_filter.guard(buffer, MemoryStore())
