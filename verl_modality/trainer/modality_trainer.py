"""verl's synchronous V1 trainer composed with the plugin's features (:mod:`verl_modality.trainer.features`).

:class:`ModalityTrainerSync` replaces verl's ``sync`` trainer entry (``trainer.v1.trainer_mode=sync``, the default).
Each override hands one of verl's hook points to the features that act there; a feature that is not selected does
nothing, and with none selected every override calls verl's method and nothing else, so vanilla runs are unchanged
(proved end to end against verl's own ``PPOTrainerSync`` in tests/trainer/test_main_ppo_cpu.py). Two things always
act, and only where verl fails anyway: a resume from a checkpoint of another world size stops with both sizes named,
and a watchdog ends the run, naming what died, when a Ray actor or a vLLM engine dies (:mod:`.features.dead_actors`).

=========================  ==========================================================================================
verl's hook                features
=========================  ==========================================================================================
``on_init_end``, ``fit``    watchdog: a dead Ray actor or vLLM engine ends the run within a minute, named
``_build_replay_buffer``   group filter: failed rewards neutralised before verl's filter compares a group; replay
                           poll: ``trainer.v1.sampler.poll_interval``
``_init_dataloader``       curriculum: built over the training rows' tags; group filter, zero variance: their metric
                           against the tasks
``_fetch_one_gen_batch``   curriculum: the step's prompts, one tag per batch
``_step_once``             zero variance: a step with no group left is skipped; the actor mini-batch comes back
``_balance_batch``         zero variance: failed rewards, then the zero-variance groups dropped (MAPLE's early
                           filtering) and the first epoch's zero-variance prompts recorded (mid-training filtering)
``_compute_old_log_prob``  MAPO-AT: the audio-ablated pass, relevance weights
``_compute_advantage``     failed rewards (unless zero variance or the group filter rewrote them), then tag flow
                           (tags to the estimator, ``mapo/*``, ``pg_var/*``, ``streams/*``), MAPO-AT's attention-loss
                           inputs, the curriculum's step end
``_update_actor``          MAPO-AT: the relevance loss's flag and the attention loss's settings for the actor
``_compute_metrics``       zero variance: a skipped step logs its counts and timings only
``_log_rollout_data``      zero variance: a skipped step has no advantages to dump
``_validate``              tag validation (uid -> tag), the adaptive curriculum's zero-shot order
``_val_metrics_update``    tag validation: ``val-core/tag/*``, ``val-aux/{level,modality_gap,stratum}/*``
``_save_checkpoint``       state: ``global_step_N/verl_modality_state.json``
``_load_checkpoint``       a checkpoint of another world size stops the resume, naming both sizes; state: restored
=========================  ==========================================================================================
"""

from __future__ import annotations

from typing import Any

import numpy as np
import transfer_queue as tq
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from verl_modality.trainer.features.curriculum_steps import CurriculumSteps, dataset_tags
from verl_modality.trainer.features.dead_actors import Watchdog, rollout_servers
from verl_modality.trainer.features.failed_rewards import FailedRewards
from verl_modality.trainer.features.group_filter import GroupFilter
from verl_modality.trainer.features.mapo_at_pass import MapoATPass
from verl_modality.trainer.features.replay_poll import ReplayPoll
from verl_modality.trainer.features.state import TrainerState, check_world_size, resumed_folder, step_folder
from verl_modality.trainer.features.tag_flow import TagFlow
from verl_modality.trainer.features.tag_validation import TagValidation, tag_accuracies
from verl_modality.trainer.features.zero_variance import SkippedStep, ZeroVariance, actor_dp_size, skipped_metrics

#: First words of the line the trainer prints when it starts (what a run's log shows of it).
TRAINER_BANNER = "[verl-modality] trainer: ModalityTrainerSync"


class ModalityTrainerSync(PPOTrainerSync):
    """verl's ``PPOTrainerSync`` plus the plugin's features; a no-op layer when none is selected."""

    store: Any = tq  # TransferQueue's kv_batch_get / kv_batch_put / kv_clear

    def __init__(self, config):
        # every feature reads and checks its options here, before any Ray work starts; these two first, as verl's
        # __init__ builds the replay buffer that the group filter guards
        self.failed_rewards = FailedRewards(config)
        self.group_filter = GroupFilter(config, self.failed_rewards)
        self.zero_variance = ZeroVariance(config)
        self.replay_poll = ReplayPoll(config)
        super().__init__(config)
        self.tag_flow = TagFlow(config)
        self.tag_validation = TagValidation(self.tag_flow.tag_metrics)
        self.mapo_at = MapoATPass(config)
        self.curriculum = CurriculumSteps(config, self.tag_flow.mapo_active)
        self.state = TrainerState(self.tag_flow, self.curriculum)
        self.watchdog = Watchdog(
            lambda: rollout_servers(getattr(self, "llm_server_manager", None)),
            lambda: int(getattr(self, "global_steps", 0)),
        )
        acting = [
            *self.tag_flow.labels,
            *self.mapo_at.labels,
            *self.curriculum.labels,
            *([self.failed_rewards.label] if self.failed_rewards.enabled else []),
            *self.group_filter.labels,
            *self.zero_variance.labels,
            *self.replay_poll.labels,
        ]
        print(
            f"{TRAINER_BANNER}; "
            + (f"acting for: {', '.join(acting)}" if acting else "nothing selected: every step runs verl's own code"),
            flush=True,
        )

    def on_init_end(self):
        with self.watchdog.watching():  # verl's first weight sync to the rollout servers
            return super().on_init_end()

    def fit(self, *args, **kwargs):
        with self.watchdog.watching():
            return super().fit(*args, **kwargs)

    @property
    def _steps_per_epoch(self) -> int | None:
        return getattr(self, "steps_per_epoch", None)

    def _build_replay_buffer(self):
        buffer = super()._build_replay_buffer()
        self.group_filter.guard(buffer, self.store)
        self.replay_poll.apply(buffer)
        return buffer

    def _init_dataloader(self):
        super()._init_dataloader()
        self.group_filter.check_dataset(self.train_dataset)  # verl loads the training data here, before any worker
        self.zero_variance.check_dataset(self.train_dataset)
        if self.curriculum.enabled:
            tags = dataset_tags(self.train_dataset)
            self.curriculum.start(tags, int(self.config.data.train_batch_size), self._steps_per_epoch)

    def _fetch_one_gen_batch(self):
        if not self.curriculum.active:
            return super()._fetch_one_gen_batch()
        n = self.config.data.get("gen_batch_size", None) or self.config.data.train_batch_size
        return self.curriculum.next_batch(self.train_dataset, int(n))

    def _step_once(self, metrics: dict, timing_raw: dict, sample_batch_size: int):
        if not self.zero_variance.enabled:
            return super()._step_once(metrics, timing_raw, sample_batch_size)
        with self.zero_variance.step():
            try:
                return super()._step_once(metrics, timing_raw, sample_batch_size)
            except SkippedStep as skipped:  # nothing to train on: the step ends here, its samples cleared by fit
                if self.curriculum.active:
                    valid = np.ones(len(skipped.step.keys), dtype=bool)
                    metrics.update(self.curriculum.end_step(skipped.step.tags, valid, None, self.global_steps))
                return skipped.batch

    def _balance_batch(self, batch, metrics, logging_prefix="global_seqlen", keep_minibatch=False):
        if self.zero_variance.enabled and logging_prefix == "global_seqlen":
            if self.failed_rewards.enabled:  # a failed reward's NaN must not decide whether its group has variance
                metrics.update(self.failed_rewards.apply(self.store, batch))
            step = self.zero_variance.read(self.store, batch)
            self.curriculum.observe(step.zero, set(step.groups) - step.zero)
            if self.zero_variance.drop:
                batch = self.zero_variance.select(
                    self.store, batch, step, actor_dp_size(self.actor_rollout_wg), metrics
                )
        return super()._balance_batch(batch, metrics, logging_prefix, keep_minibatch)

    def _compute_old_log_prob(self, batch, metrics: dict):
        batch = super()._compute_old_log_prob(batch, metrics)
        if self.mapo_at.enabled:
            metrics.update(
                self.mapo_at.relevance_pass(
                    self.store,
                    batch,
                    self.actor_rollout_wg.compute_log_prob,
                    self.processor,
                    self.tokenizer,
                    self.config.data,
                    self.config.actor_rollout_ref.rollout.temperature,
                )
            )
        return batch

    def _compute_advantage(self, batch, metrics: dict):
        if self.failed_rewards.enabled and not self.zero_variance.enabled:
            metrics.update(self.failed_rewards.apply(self.store, batch, group_filter=self.group_filter.guarded))
        if not (self.tag_flow.tag_metrics or self.curriculum.active or self.mapo_at.attention_loss):
            return super()._compute_advantage(batch, metrics)
        step = self.tag_flow.read(self.store, batch, self.tokenizer)
        metrics.update(self.tag_flow.step_metrics(self.store, batch, step, self.tokenizer))
        with self.tag_flow.advantage_context(step, self.global_steps, self._steps_per_epoch, metrics) as ctx:
            out = super()._compute_advantage(batch, metrics)
        if self.mapo_at.attention_loss:
            out = self.mapo_at.attention_loss_inputs(self.store, out)
        if self.curriculum.active:  # the step's batch is final here, before any checkpoint of this step
            difficulties = {t: s["difficulty"] for t, s in ctx.stats.items()} if ctx is not None else None
            metrics.update(self.curriculum.end_step(step.tags, step.valid, difficulties, self.global_steps))
        return out

    def _update_actor(self, batch, metrics: dict):
        batch.extra_info.update(self.mapo_at.update_settings(self.tokenizer))
        return super()._update_actor(batch, metrics)

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        if self.zero_variance.skipped:  # no advantages or log-probs to summarise
            metrics.update(skipped_metrics(timing_raw, global_steps, epoch))
            return None
        return super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)

    def _log_rollout_data(self, batch, timing_raw: dict, rollout_data_dir: str):
        if self.zero_variance.skipped:
            return None
        return super()._log_rollout_data(batch, timing_raw, rollout_data_dir)

    def _validate(self) -> dict[str, float]:
        if not self.tag_validation.enabled:
            return super()._validate()
        with self.tag_validation.recording(self):
            metrics = super()._validate()
        self.curriculum.after_validation(tag_accuracies(metrics), self.global_steps)
        return metrics

    def _val_metrics_update(self, data_sources, sample_uids, reward_extra_infos_dict, sample_turns, **kwargs):
        metrics = super()._val_metrics_update(
            data_sources, sample_uids, reward_extra_infos_dict, sample_turns, **kwargs
        )
        if self.tag_validation.enabled:
            metrics.update(self.tag_validation.metrics(sample_uids, reward_extra_infos_dict))
        return metrics

    def _save_checkpoint(self):
        if self.state.enabled:
            # written before verl's tracker file, so a checkpoint that verl considers complete always has our state
            folder = step_folder(self.config.trainer.default_local_dir, self.global_steps)
            self.state.save(folder, self.global_steps, self._steps_per_epoch)
        return super()._save_checkpoint()

    def _load_checkpoint(self):
        check_world_size(resumed_folder(self.config.trainer), self.config.trainer)  # before verl's workers try
        result = super()._load_checkpoint()
        if self.state.enabled and self.global_steps > 0:
            self.state.restore(resumed_folder(self.config.trainer), self.global_steps, self._steps_per_epoch)
        return result


def install(module: Any = None) -> str:
    """Make :class:`ModalityTrainerSync` verl's ``sync`` trainer in place of verl's ``PPOTrainerSync`` (a replacement
    the registry entry declares; any other ``sync`` trainer is refused)."""
    from verl.trainer.ppo.v1 import trainer_base

    from verl_modality.integrations.patching import register

    register(trainer_base.TRAINER_REGISTRY, "sync", ModalityTrainerSync, replaces=PPOTrainerSync)
    return "trainer/sync"


# Imported before verl's trainer, this module fires the registry's hook on it while half loaded: the registry applies
# the entry now, where it applies (VERL_MODALITY_DISABLE=trainers leaves verl's trainer alone).
from verl_modality.integrations.registry import finish_loading  # noqa: E402

finish_loading(__name__)
