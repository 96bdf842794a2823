"""The trainer's own layer, without Ray: the registry swap, and verl's hooks handed to the features (each feature has
its own tests under tests/trainer/features/)."""

import datasets
import numpy as np
import pytest
from omegaconf import OmegaConf

from verl_modality.trainer import modality_trainer as mt
from verl_modality.trainer.features.failed_rewards import FailedRewards
from verl_modality.trainer.features.group_filter import GroupFilter
from verl_modality.trainer.features.replay_poll import ReplayPoll
from verl_modality.trainer.features.tag_validation import TagValidation


def test_install_replaces_only_verls_sync_trainer():
    from verl.trainer.ppo.v1 import get_trainer_cls
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    assert issubclass(mt.ModalityTrainerSync, PPOTrainerSync)
    assert get_trainer_cls("sync") is mt.ModalityTrainerSync  # the plugin installed it when verl's module loaded
    assert mt.install() == "trainer/sync"  # idempotent
    assert get_trainer_cls("colocate_async").__name__ == "PPOTrainerColocateAsync"


def test_every_verl_hook_it_overrides_exists_in_verls_trainer():
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    own = {
        k for k, v in vars(mt.ModalityTrainerSync).items() if callable(v) and k != "__init__"
    }  # fit, on_init_end too
    assert own and all(hasattr(PPOTrainerSync, k) for k in own), sorted(
        k for k in own if not hasattr(PPOTrainerSync, k)
    )


def test_validation_metrics_per_tag_on_top_of_verls():
    trainer = object.__new__(mt.ModalityTrainerSync)  # only the validation-metrics path, no Ray
    trainer.tag_validation = TagValidation(enabled=True)
    trainer.tag_validation.uid_tags = {"u1": ("V", "exact"), "u2": ("V", "superset"), "u3": ("AS", "exact")}
    uids = ["u1", "u1", "u2", "u3"]
    extra = {"reward": [1.0, 0.0, 0.0, 1.0], "acc": [1.0, None, 0.0, 1.0]}  # a missing acc falls back to reward
    m = trainer._val_metrics_update(["demo"] * 4, uids, extra, [1, 1, 1, 1])
    assert m["val-core/tag/V/acc"] == pytest.approx(1 / 3)
    assert m["val-core/tag/AS/acc"] == 1.0
    assert m["val-core/tag/pooled/acc"] == 0.5
    assert m["val-aux/stratum/exact/acc"] == pytest.approx(2 / 3) and m["val-aux/stratum/superset/acc"] == 0.0
    # a caption whose judge failed (marked): acc None and judge_failed 1 -> unscored, not its NaN reward
    failed = {"reward": [1.0, float("nan"), 0.0, 1.0], "acc": [1.0, None, 0.0, 1.0], "judge_failed": [0, 1, 0, 0]}
    m = trainer._val_metrics_update(["demo"] * 4, uids, failed, [1, 1, 1, 1])
    assert m["val-core/tag/V/acc"] == 0.5 and m["val-aux/tag/unscored"] == 1
    assert any(k.startswith("val-core/demo/") for k in m)  # verl's own metrics are still there
    trainer.tag_validation = TagValidation(enabled=False)
    m = trainer._val_metrics_update(["demo"] * 4, uids, extra, [1, 1, 1, 1])
    assert m and not any(k.startswith("val-core/tag/") for k in m)  # off: verl's metrics only


def test_validate_records_tags_around_verls_loop_and_restores_the_loader(monkeypatch):
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    from verl_modality.trainer.features.curriculum_steps import CurriculumSteps

    batches = [{"modality_tag": np.array(["V"], dtype=object)}]

    def verls_validate(self):  # what verl's loop does with the loader: uids after the yield
        for b in self.val_dataloader:
            b["uid"] = np.array(["u1"], dtype=object)
        return {"val-core/tag/V/acc": 1.0}

    monkeypatch.setattr(PPOTrainerSync, "_validate", verls_validate)
    trainer = object.__new__(mt.ModalityTrainerSync)
    trainer.val_dataloader = batches
    trainer.global_steps = 0
    trainer.tag_validation = TagValidation(enabled=True)
    trainer.curriculum = object.__new__(CurriculumSteps)
    trainer.curriculum.curriculum = None
    assert trainer._validate() == {"val-core/tag/V/acc": 1.0}
    assert trainer.tag_validation.uid_tags == {"u1": ("V", None)} and trainer.val_dataloader is batches


def _filter_config(metric, path="pkg://verl_modality.rewards.score"):
    sampler = {
        "custom_sampler": None,
        "max_off_policy_threshold": None,
        "max_off_policy_strategy": "drop",
        "sampler_kwargs": {},
        "sync_refill_failed_groups": False,
    }
    return OmegaConf.create(
        {
            "trainer": {"v1": {"trainer_mode": "sync", "sampler": sampler}},
            "algorithm": {"filter_groups": {"enable": True, "metric": metric, "max_inflight_gen_batches": 1}},
            "reward": {
                "reward_model": {"enable": False, "enable_resource_pool": False},
                "custom_reward_function": {"path": path},
            },
            "data": {"train_batch_size": 2},
        }
    )


def _bare_trainer(config):
    trainer = object.__new__(mt.ModalityTrainerSync)
    trainer.config, trainer.trainer_mode = config, "sync"
    trainer.failed_rewards = FailedRewards(config)
    trainer.group_filter = GroupFilter(config, trainer.failed_rewards)
    trainer.replay_poll = ReplayPoll(config)
    return trainer


def test_verls_replay_buffer_is_guarded_where_its_group_filter_reads_the_rewards():
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

    trainer = _bare_trainer(_filter_config("score"))
    buffer = trainer._build_replay_buffer()  # verl's own construction, then the guard
    assert type(buffer) is ReplayBuffer and buffer.filter_groups_metric == "score"
    from verl_modality.integrations.verl_trainer import HOOK

    assert getattr(ReplayBuffer._dapo_filtered_keys, "__verl_modality__", False)  # the registry's patch
    assert callable(getattr(buffer, HOOK, None)) and trainer.group_filter.guarded
    plain = _bare_trainer(_filter_config("score", "pkg://verl_modality.rewards.choice"))._build_replay_buffer()
    assert getattr(plain, HOOK, None) is None  # no reward function that marks failures: verl's method as is
    assert buffer.poll_interval == plain.poll_interval == 2.0  # verl's period unless trainer.v1.sampler.poll_interval
    polled = _filter_config("score")
    polled.trainer.v1.sampler.poll_interval = 0.1
    assert _bare_trainer(polled)._build_replay_buffer().poll_interval == 0.1


def test_a_qa_metric_on_caption_rows_is_refused_at_start_up(monkeypatch):
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    # the caption judge never returns acc: refused by the config alone, before verl's __init__ runs
    with pytest.raises(ValueError, match="filter_groups.metric=acc: the reward function"):
        mt.ModalityTrainerSync(_filter_config("acc", "pkg://verl_modality.rewards.caption_judge"))
    # the router: refused once verl has loaded the training data, before any worker starts
    frame = datasets.Dataset.from_dict({"id": ["q0", "c1"], "task": ["qa", "caption"]})

    def verls_init_dataloader(self):
        self.train_dataset = type("Data", (), {"dataframe": frame})()

    monkeypatch.setattr(PPOTrainerSync, "_init_dataloader", verls_init_dataloader)
    trainer = _bare_trainer(_filter_config("acc"))
    with pytest.raises(ValueError, match=r"1 caption row\(s\) \(task column; first: row 1 \(id 'c1'\)\)"):
        trainer._init_dataloader()


@pytest.mark.slow
def test_group_filter_sees_failed_judge_calls_neutralised_end_to_end(tmp_path, tiny_model_dir):
    """verl's main_ppo on captions with a judge whose every 3rd call fails (marked), group filtering on ``score``."""
    import hashlib
    import json
    import math

    from chat_server import ChatServer, Reply
    from helpers import SMALL_BATCH

    from verl_modality.data.synthetic import make_demo_data
    from verl_modality.trainer.launch import run_main_ppo

    def judge(body, index):
        if index % 3 == 2:
            return Reply(status=500, body=b"judge overloaded")
        digest = hashlib.sha256(json.dumps(body["messages"]).encode()).digest()
        grades = [round(d % 6 * 0.2, 1) for d in digest[:3]]  # on the judge's 0.2 grid
        return Reply(json.dumps(dict(zip(("missing", "errors", "fusion"), grades, strict=True))))

    data = tmp_path / "data"
    make_demo_data(data, seed=1, n_train=8, n_test=1, caption_every=1, progress=False)
    with ChatServer(judge) as srv:
        kw = "+reward.custom_reward_function.reward_kwargs.judge"
        overrides = [
            f"actor_rollout_ref.model.path={tiny_model_dir}",
            f"data.train_files={data / 'train.parquet'}",
            f"data.val_files={data / 'test.parquet'}",
            f"trainer.default_local_dir={tmp_path / 'ckpt'}",
            *SMALL_BATCH,
            "trainer.total_training_steps=1",
            "trainer.val_before_train=False",
            "trainer.test_freq=-1",
            "trainer.save_freq=-1",
            "algorithm.filter_groups.enable=True",
            "algorithm.filter_groups.metric=score",
            "reward.custom_reward_function.path=pkg://verl_modality.rewards.score",
            f"{kw}.base_url={srv.base_url}",
            f"{kw}.model=judge-model",
            f"{kw}.api_key_env=VM_E2E_JUDGE_KEY",
            f"{kw}.on_failure=mark",
            f"{kw}.max_retries=0",
        ]
        result = run_main_ppo("mapo_cpu_demo", tmp_path, overrides, env={"VM_E2E_JUDGE_KEY": "sk"}, timeout=170)
    assert result.returncode == 0, result.log_tail(80)
    assert "failed rewards before the group filter" in result.log_path.read_text(errors="replace")
    step = result.steps()[1]
    # a third of the judge calls failed: each is in the batch (neutralised) or in a group the filter removed
    assert step["reward/failed"] + step["reward/failed_filtered"] > 0
    # the filter kept only groups with variance, failed members counted at their group's mean (a NaN, or a mean a
    # last bit off the agreeing members' score, once let zero-variance groups through)
    zero_var = [v for k, v in step.items() if k.endswith("/zero_var_frac")]
    assert zero_var and all(v == 0.0 for v in zero_var)
    assert math.isfinite(step["actor/pg_loss"]) and math.isfinite(step["critic/score/mean"])
