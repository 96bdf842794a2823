"""MAPLE's early filtering (drop, never regenerate) and mid-training filtering over the in-memory store: on a seeded
batch with known zero-variance groups, exactly the kept groups stay, counted per tag; a step with nothing left is
skipped; the actor's mini-batch is the kept count's for the step only."""

import numpy as np
import pytest
import torch
from memory_store import MemoryStore
from omegaconf import OmegaConf

from verl_modality.data.curriculum import CurriculumConfig, TagCurriculum
from verl_modality.trainer.features.zero_variance import SkippedStep, ZeroVariance

N = 4


def _cfg(batch=6, mini=6, n=N, **zero_variance):
    return OmegaConf.create(
        {
            "algorithm": {"adv_estimator": "mapo_stratified", "zero_variance": {"drop": True, **zero_variance}},
            "data": {"train_batch_size": batch, "curriculum": {"order": "static"}},
            "actor_rollout_ref": {"actor": {"ppo_mini_batch_size": mini}, "rollout": {"n": n}},
        }
    )


def _store(rewards: dict[str, tuple[str, list[float]]], seed=0):
    """Groups ``uid -> (tag, rewards)`` as verl stores trajectories: ``<uid>_<session>_0`` in step order, shuffled
    within the step as verl's replay buffer hands them out."""
    store = MemoryStore()
    rows, keys = [], []
    for uid, (tag, values) in rewards.items():
        for i, r in enumerate(values):
            key = f"{uid}_{i}_0"
            keys.append(key)
            rows.append(
                {
                    "rm_scores": torch.tensor([0.0, r]),
                    "extra_fields": {"reward_extra_info": {"acc": r, "score": r}},
                    "modality_tag": tag,
                }
            )
    order = np.random.default_rng(seed).permutation(len(keys))
    part = store.partitions.setdefault("train", {})
    for i in order:
        part[keys[i]] = rows[i]
    from transfer_queue import KVBatchMeta

    batch = KVBatchMeta(
        keys=[keys[i] for i in order], tags=[{"status": "success"} for _ in order], partition_id="train"
    )
    return store, batch


STEP = {  # two V and one A group without variance; three groups with
    "u0": ("V", [1.0, 1.0, 1.0, 1.0]),
    "u1": ("V", [1.0, 0.0, 1.0, 1.0]),
    "u2": ("A", [0.0, 0.0, 0.0, 0.0]),
    "u3": ("A", [0.0, 1.0, 0.0, 0.0]),
    "u4": ("V", [0.0, 0.0, 0.0, 0.0]),
    "u5": ("A", [1.0, 1.0, 0.0, 1.0]),
}


def test_the_kept_groups_are_exactly_those_with_variance():
    cfg = _cfg()
    zv = ZeroVariance(cfg)
    store, batch = _store(STEP)
    metrics = {}
    with zv.step():
        step = zv.read(store, batch)
        assert step.zero == {"u0", "u2", "u4"}
        kept = zv.select(store, batch, step, dp_size=1, metrics=metrics)
        assert {k.split("_")[0] for k in kept.keys} == {"u1", "u3", "u5"} and len(kept) == 3 * N
        assert cfg.actor_rollout_ref.actor.ppo_mini_batch_size == 3  # one update over the kept groups
    assert cfg.actor_rollout_ref.actor.ppo_mini_batch_size == 6  # the configured value after the step
    assert sorted(store.partitions["train"]) == sorted(kept.keys)  # dropped trajectories cleared
    assert kept.keys == [k for k in batch.keys if k in set(kept.keys)]  # order kept
    assert metrics == {
        "zero_variance/kept_groups": 3.0,
        "zero_variance/dropped_groups": 3.0,
        "zero_variance/rounded_off_groups": 0.0,
        "zero_variance/samples_per_update": 12.0,
        "zero_variance/skipped_step": 0.0,
        "zero_variance/kept/A": 2.0,
        "zero_variance/dropped/A": 1.0,
        "zero_variance/kept/V": 1.0,
        "zero_variance/dropped/V": 2.0,
    }


def test_the_metric_can_be_a_reward_extra_info_key_and_must_be_there():
    store, batch = _store(STEP)
    assert ZeroVariance(_cfg(metric="acc")).read(store, batch).zero == {"u0", "u2", "u4"}
    with pytest.raises(KeyError, match="metric=judge_score: the reward of trajectory .* has no 'judge_score'"):
        ZeroVariance(_cfg(metric="judge_score")).read(store, batch)


def test_a_remainder_is_rounded_off_by_the_stated_rule():
    # 3 kept groups of n=3 at 2 ranks: 9 samples do not split, 2 groups (6 samples) do; the last kept group goes
    steps = {uid: (tag, values[:3]) for uid, (tag, values) in STEP.items()}
    cfg = _cfg(n=3)
    zv = ZeroVariance(cfg)
    store, batch = _store(steps)
    metrics = {}
    with zv.step():
        step = zv.read(store, batch)
        kept = zv.select(store, batch, step, dp_size=2, metrics=metrics)
        varied = [g for g in dict.fromkeys(step.groups) if g not in step.zero]
        assert {k.split("_")[0] for k in kept.keys} == set(varied[:2])
        assert cfg.actor_rollout_ref.actor.ppo_mini_batch_size == 2
    assert metrics["zero_variance/rounded_off_groups"] == 1.0 and metrics["zero_variance/samples_per_update"] == 6.0


def test_two_mini_batches_stay_two():
    cfg = _cfg(batch=6, mini=3)
    zv = ZeroVariance(cfg)
    store, batch = _store(STEP)
    with zv.step():
        kept = zv.select(store, batch, zv.read(store, batch), dp_size=1, metrics={})
        assert len(kept) == 2 * N and cfg.actor_rollout_ref.actor.ppo_mini_batch_size == 1  # 2 updates of 1 group


def test_a_step_without_variance_is_skipped_and_logged():
    flat = {uid: (tag, [1.0] * N) for uid, (tag, _) in STEP.items()}
    zv = ZeroVariance(_cfg())
    store, batch = _store(flat)
    metrics = {}
    with zv.step(), pytest.raises(SkippedStep) as skipped:
        zv.select(store, batch, zv.read(store, batch), dp_size=1, metrics=metrics)
    assert zv.skipped and skipped.value.batch is batch and metrics["zero_variance/skipped_step"] == 1.0
    assert metrics["zero_variance/kept_groups"] == 0.0 and metrics["zero_variance/dropped_groups"] == 6.0
    assert len(store.partitions["train"]) == 6 * N  # left for verl's end-of-step clear
    with zv.step():
        assert not zv.skipped  # the next step starts afresh


@pytest.mark.parametrize(
    ("more", "match"),
    [
        ({"algorithm": {"filter_groups": {"enable": True}}}, "choose one"),
        ({"data": {"curriculum": {"order": "none"}}, "algorithm": {"zero_variance": {"retire": True}}}, "retire=true"),
        ({"algorithm": {"adv_estimator": "gae"}}, "not with a critic"),
        ({"actor_rollout_ref": {"actor": {"ppo_mini_batch_size": 4}}}, "multiple of"),
        ({"algorithm": {"zero_variance": {"metric": ""}}}, "metric=''"),
        ({"algorithm": {"zero_variance": {"dorp": True}}}, "unknown option"),
        ({"trainer": {"v1": {"sync": {"parameter_sync_step": 2}}}}, "parameter_sync_step=2"),
    ],
)
def test_bad_settings_are_refused_naming_the_option(more, match):
    with pytest.raises(ValueError, match=match):
        ZeroVariance(OmegaConf.merge(_cfg(), more))


def test_off_by_default():
    zv = ZeroVariance(OmegaConf.create({"algorithm": {"adv_estimator": "grpo"}}))
    assert not zv.enabled and zv.labels == []


# ------------------------------------------------------------------------------------- mid-training filtering
TAGS = ["V"] * 4 + ["A"] * 4


def _epoch(cur: TagCurriculum, zero_rows: set[int]) -> list[int]:
    """Run one curriculum epoch, reporting ``zero_rows`` as zero-variance; the indices served."""
    served = []
    while True:
        rows = cur.take(2)  # the first take of an epoch opens it
        served += rows
        cur.observe([r for r in rows if r in zero_rows], [r for r in rows if r not in zero_rows])
        cur.end_step(None)
        if all(cur.served[t] >= cur.blocks[t] for t in cur.pools):
            return served


def test_prompts_without_variance_in_the_first_epoch_leave_from_the_second():
    cur = TagCurriculum(TAGS, 2, CurriculumConfig(order="static"), retire=True)
    first = _epoch(cur, zero_rows={0, 1, 5})
    assert sorted(first) == list(range(8))
    second = _epoch(cur, zero_rows=set(range(8)))  # later epochs are not recorded
    assert set(second) == {2, 3, 4, 6, 7} and len(second) == 6  # A has 3 left: its second batch draws one extra
    assert cur.retired == [0, 1, 5] and cur.steps_per_epoch == 1 + 2
    third = _epoch(cur, zero_rows=set())
    assert set(third) == {2, 3, 4, 6, 7} and cur.retired == [0, 1, 5]


def test_a_prompt_that_once_had_variance_stays():
    cur = TagCurriculum(TAGS, 4, CurriculumConfig(order="mixed"), retire=True)
    cur.take(4)
    cur.observe([0, 1], [2, 3])
    cur.observe([2], [0])  # seen again in the same epoch, now with variance: it stays
    cur.end_step(None)
    while cur.epoch == 0 and sum(cur.served.values()) < cur.steps_per_epoch:
        cur.take(2)
        cur.end_step(None)
    cur.take(4)  # opens the second epoch
    assert cur.retired == [1]


def test_resume_restores_the_filtered_set_exactly():
    config = CurriculumConfig(order="static", seed=3)
    cur = TagCurriculum(TAGS, 2, config, retire=True)
    _epoch(cur, zero_rows={0, 4, 5})
    cur.take(2)
    saved = cur.state_dict()
    again = TagCurriculum(TAGS, 2, config, retire=True)
    again.load_state_dict(saved)
    assert again.retired == cur.retired == [0, 4, 5] and again.state_dict() == saved
    cur.end_step(None)
    again.end_step(None)
    assert _epoch(again, set()) == _epoch(cur, set())
    mid = TagCurriculum(TAGS, 2, config, retire=True)  # a checkpoint in the first epoch keeps what it saw
    mid.take(2)
    mid.observe([mid.step_indices[0]], [])
    state = mid.state_dict()
    back = TagCurriculum(TAGS, 2, config, retire=True)
    back.load_state_dict(state)
    assert back.zero_rows == {mid.step_indices[0]}
    with pytest.raises(ValueError, match="retire changed since the checkpoint"):
        TagCurriculum(TAGS, 2, config).load_state_dict(state)


def test_nothing_left_is_an_error():
    cur = TagCurriculum(TAGS, 2, CurriculumConfig(order="mixed"), retire=True)
    with pytest.raises(RuntimeError, match="retired all 8 training prompts"):
        _epoch(cur, zero_rows=set(range(8)))
        cur.take(2)


def test_the_trainer_curriculum_maps_groups_back_to_prompts():
    from test_curriculum_steps import _Dataset

    from verl_modality.trainer.features.curriculum_steps import CurriculumSteps

    cfg = OmegaConf.merge(_cfg(retire=True), {"data": {"curriculum": {"order": "mixed"}}})
    steps = CurriculumSteps(cfg, mapo_active=True)
    steps.start(TAGS, 4)
    batch = steps.next_batch(_Dataset(TAGS), 4)
    uids, rows = list(batch["uid"]), [int(i) for i in batch["input_ids"].flatten()]
    steps.observe({uids[0], uids[2]}, {uids[1], uids[3]})
    assert steps.curriculum.zero_rows == {rows[0], rows[2]} and steps.curriculum.varied_rows == {rows[1], rows[3]}
    assert steps.rows == {}  # observed uids are forgotten


def test_a_qa_metric_on_caption_rows_is_refused_before_any_worker():
    import types

    import datasets

    ds = types.SimpleNamespace(dataframe=datasets.Dataset.from_dict({"task": ["qa", "caption"], "id": ["a", "b"]}))
    score = {"reward": {"custom_reward_function": {"path": "pkg://verl_modality.rewards.score"}}}
    with pytest.raises(ValueError, match=r"zero_variance.metric=acc: .* 1 caption row\(s\) .*first: row 1 \(id 'b'\)"):
        ZeroVariance(OmegaConf.merge(_cfg(metric="acc"), score)).check_dataset(ds)
    ZeroVariance(OmegaConf.merge(_cfg(metric="score"), score)).check_dataset(ds)  # every row has a score


def test_micro_batch_sizes_come_from_verls_settings():
    from verl_modality.trainer.features.zero_variance import micro_batch_sizes

    arr = {
        "actor": {"ppo_micro_batch_size_per_gpu": 16, "use_dynamic_bsz": False, "use_kl_loss": False},
        "rollout": {"log_prob_micro_batch_size_per_gpu": 8, "log_prob_use_dynamic_bsz": False},
        "ref": {"log_prob_micro_batch_size_per_gpu": 6, "log_prob_use_dynamic_bsz": False},
    }
    cfg = OmegaConf.create({"actor_rollout_ref": arr, "algorithm": {"use_kl_in_reward": False}})
    assert micro_batch_sizes(cfg) == (16, 8)  # no KL term: the reference does not run
    cfg.actor_rollout_ref.actor.use_kl_loss = True
    assert micro_batch_sizes(cfg) == (16, 24)  # the actor's and the reference's log-prob passes
    cfg.actor_rollout_ref.actor.use_dynamic_bsz = True
    cfg.actor_rollout_ref.rollout.log_prob_use_dynamic_bsz = True
    cfg.actor_rollout_ref.ref.log_prob_use_dynamic_bsz = True
    assert micro_batch_sizes(cfg) == (1, 1)  # packed by tokens: any count
