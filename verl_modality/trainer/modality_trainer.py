"""verl's synchronous V1 trainer with what modality-aware training needs on top.

:class:`ModalityTrainerSync` replaces verl's ``sync`` trainer entry (``trainer.v1.trainer_mode=sync``, the default).
Its overrides only act when ``algorithm.adv_estimator=mapo_stratified`` (or, for per-tag validation of baselines,
``+algorithm.mapo.tag_metrics=true``); otherwise each one calls verl's method and nothing else, so vanilla runs are
unchanged. When active it:

* hands each row's ``modality_tag`` (a dataset column, stored per trajectory in TransferQueue) and the padding flags
  to the registered estimator through :mod:`verl_modality.algorithms.batch_context`;
* keeps the adaptive-weight history and logs per-tag statistics as ``mapo/<tag>/<stat>``;
* with tag metrics on, logs how the step's reward variance splits between and within tags and the implied
  Var(g_MA) / Var(g_MU) (``pg_var/*``, :mod:`verl_modality.algorithms.gradient_variance`);
* logs per tag what the rollout's prompts held (``streams/<tag>/{prompt,audio,video}_tokens``, the mean per response),
  which shows the ``data.modality`` policy at work (e.g. no audio tokens for V-tagged samples under ``exact``);
* reports validation accuracy per tag (``val-core/tag/<tag>/acc``) plus the pooled and tag-averaged accuracy, per
  uni/bi/tri level with the modality gap (``val-aux/level/*``, ``val-aux/modality_gap/*``) and per stratum
  (``val-aux/stratum/*``), as ``verl-modality report`` computes them;
* with ``data.curriculum.order`` set, draws each step's prompts from :class:`~verl_modality.data.curriculum.TagCurriculum`
  instead of verl's dataloader (one tag per batch, refills of filtered groups from the same tag), feeds it the step's
  difficulties and logs ``curriculum/*``;
* with ``algorithm.mapo_at.relevance_mask``, scores each step's responses once more without their audio (one no-grad
  actor pass, :mod:`verl_modality.trainer.relevance_pass`) and writes the relevance weights for the
  ``mapo_relevance`` policy loss (``mapo_at/*`` metrics);
* with one of our reward functions, replaces the scores of samples whose reward failed and was marked
  (``judge_failed``, the caption judge's ``on_failure: mark``) by their group's mean valid score, so they get zero
  advantage (:mod:`verl_modality.rewards.failed_scores`), and logs ``reward/failed``;
* saves its state next to verl's checkpoint (``global_step_N/verl_modality_state.json``) and restores it on resume.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections import defaultdict
from typing import Any

import numpy as np
import torch
import transfer_queue as tq
from omegaconf import OmegaConf
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils import tensordict_utils as tu
from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path
from verl.utils.dataset.rl_dataset import collate_fn

from verl_modality.algorithms.adaptive_weights import AdaptiveWeightState
from verl_modality.algorithms.advantage import ESTIMATOR_NAME
from verl_modality.algorithms.batch_context import BatchContext, batch_context
from verl_modality.algorithms.config import MapoATConfig, MapoConfig
from verl_modality.algorithms.gradient_variance import pg_variance_metrics
from verl_modality.algorithms.relevance import LOSS_MODE, relevance_metrics, relevance_weights
from verl_modality.data.curriculum import ALL, CurriculumConfig, TagCurriculum

logger = logging.getLogger(__name__)

STATE_FILE = "verl_modality_state.json"
STATE_VERSION = 2
TAG_FIELD = "modality_tag"
STRATUM_FIELD = "stratum"
#: reward functions that can mark a sample's reward as failed (``judge_failed``)
FAILING_REWARD_MODULES = ("verl_modality.rewards.score", "verl_modality.rewards.caption_judge")


def uses_mapo(config: Any) -> bool:
    """Whether this run selected our estimator."""
    return str(config.algorithm.adv_estimator) == ESTIMATOR_NAME


def wants_tag_metrics(config: Any) -> bool:
    """Per-tag validation metrics: on with ``mapo_stratified``, opt-in (``algorithm.mapo.tag_metrics``) otherwise."""
    return uses_mapo(config) or bool(OmegaConf.select(config, "algorithm.mapo.tag_metrics", default=False))


def tag_accuracy_metrics(
    tags: list[str], scores: list[float | None], strata: list[str] | None = None
) -> dict[str, float]:
    """Validation accuracy per tag, pooled over all responses, averaged over tags (each tag counts once), per
    uni/bi/tri level with the modality gap, and per stratum: the numbers of ``verl-modality report`` (SPEC section 8,
    :mod:`verl_modality.evaluation.metrics`).

    Shapes: ``tags``, ``scores`` (and ``strata``) are parallel lists of length N (one entry per validation response).
    A score of None or NaN (a caption whose judge failed) is left out and counted in ``val-aux/tag/unscored``.
    """
    from verl_modality.evaluation.metrics import gap_from_levels, pool_levels, pooled

    if len(tags) != len(scores) or (strata is not None and len(strata) != len(tags)):
        raise ValueError(f"{len(tags)} tags for {len(scores)} validation scores and {len(strata or [])} strata")
    by_tag: dict[str, list[float]] = defaultdict(list)
    by_stratum: dict[str, list[float]] = defaultdict(list)
    unscored = 0
    for i, (tag, score) in enumerate(zip(tags, scores, strict=True)):
        if score is None or not np.isfinite(float(score)):
            unscored += 1
            continue
        by_tag[tag].append(float(score))
        if strata is not None:
            by_stratum[str(strata[i])].append(float(score))
    out: dict[str, float] = {}
    per_tag = {tag: (float(np.mean(v)), len(v)) for tag, v in by_tag.items()}
    for tag in sorted(per_tag):
        out[f"val-core/tag/{tag}/acc"] = per_tag[tag][0]
        out[f"val-aux/tag/{tag}/count"] = float(per_tag[tag][1])
    if per_tag:
        out["val-core/tag/pooled/acc"] = float(pooled(per_tag))
        out["val-core/tag/tag_mean/acc"] = float(np.mean([a for a, _ in per_tag.values()]))
        levels = pool_levels(per_tag)
        for name, lvl in levels.items():
            if lvl is not None:
                out[f"val-aux/level/{name}/acc"] = lvl.accuracy
        gap = gap_from_levels(levels)
        for term in ("u_b", "u_t", "b_t", "gap"):
            if getattr(gap, term) is not None:
                out[f"val-aux/modality_gap/{term}"] = float(getattr(gap, term))
    for stratum in sorted(by_stratum):
        out[f"val-aux/stratum/{stratum}/acc"] = float(np.mean(by_stratum[stratum]))
    if unscored:
        out["val-aux/tag/unscored"] = float(unscored)
    return out


def stream_token_metrics(
    tags: list[str], prompt_ids: Any, prompt_mask: Any, audio_id: int, video_id: int
) -> dict[str, float]:
    """Mean prompt / audio / video token counts per tag. Shapes: ``prompt_ids``, ``prompt_mask`` ``(N, P)``."""
    ids, mask = np.asarray(prompt_ids), np.asarray(prompt_mask).astype(bool)
    if ids.shape != mask.shape or len(tags) != ids.shape[0]:
        raise ValueError(f"{len(tags)} tags, prompt ids {ids.shape}, mask {mask.shape}")
    counts = {
        "prompt_tokens": mask.sum(1),
        "audio_tokens": ((ids == audio_id) & mask).sum(1),
        "video_tokens": ((ids == video_id) & mask).sum(1),
    }
    tags_arr = np.asarray(tags)
    return {
        f"streams/{tag}/{name}": float(values[tags_arr == tag].mean())
        for tag in sorted(set(tags))
        for name, values in counts.items()
    }


def stats_to_metrics(per_tag: dict[str, dict[str, float]], prefix: str = "mapo") -> dict[str, float]:
    """``{tag: {stat: value}}`` -> flat logger keys ``mapo/<tag>/<stat>``."""
    return {f"{prefix}/{tag}/{name}": float(value) for tag, stats in per_tag.items() for name, value in stats.items()}


class _UidTagRecorder:
    """Wraps the validation dataloader and remembers ``uid -> (modality_tag, stratum)`` for every batch verl processes.

    verl's ``_validate`` assigns ``batch_dict["uid"]`` after the loader yields the batch, so each batch is read back
    when the next one is requested (and the last one when the loop ends).
    """

    def __init__(self, loader: Any, sink: dict[str, tuple[str, str | None]]):
        self._loader = loader
        self._sink = sink

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self):
        for batch_dict in self._loader:
            yield batch_dict
            self._record(batch_dict)

    def _record(self, batch_dict: dict) -> None:
        if TAG_FIELD not in batch_dict:
            raise KeyError(
                f"validation data has no '{TAG_FIELD}' column; per-tag metrics need it (see docs/data_schema.md)"
            )
        strata = batch_dict.get(STRATUM_FIELD)
        for i, (uid, tag) in enumerate(zip(batch_dict["uid"], batch_dict[TAG_FIELD], strict=True)):
            self._sink[str(uid)] = (str(tag), None if strata is None else str(strata[i]))


#: First words of the line the trainer prints when it starts (what a run's log shows of it).
TRAINER_BANNER = "[verl-modality] trainer: ModalityTrainerSync"


class ModalityTrainerSync(PPOTrainerSync):
    """verl's ``PPOTrainerSync`` plus per-tag data flow, metrics and state; a no-op layer for other estimators."""

    def __init__(self, config):
        super().__init__(config)
        self.mapo_active = uses_mapo(config)
        self.tag_metrics = wants_tag_metrics(config)
        self.mapo_config: MapoConfig | None = None
        self.mapo_state: AdaptiveWeightState | None = None
        self._val_uid_tags: dict[str, tuple[str, str | None]] = {}
        if self.mapo_active:
            self.mapo_config = MapoConfig.from_algorithm_config(config.algorithm)  # fail before Ray work starts
        self.mapo_at = MapoATConfig.from_algorithm_config(config.algorithm)
        self._check_mapo_at(config)
        # only the caption judge (directly or through the router) marks failed rewards; otherwise verl's flow is untouched
        reward_path = str(OmegaConf.select(config, "reward.custom_reward_function.path", default="") or "")
        self.checks_failed_rewards = reward_path.replace("/", ".").endswith(FAILING_REWARD_MODULES)
        self.curriculum_config = CurriculumConfig.from_config(config.data)
        self.curriculum: TagCurriculum | None = None
        if self.curriculum_config.order == "adaptive" and not self.mapo_active:
            raise ValueError(
                "data.curriculum.order=adaptive orders tags by the difficulties of algorithm.adv_estimator="
                f"{ESTIMATOR_NAME}; with {config.algorithm.adv_estimator!r} use 'static' or 'mixed'"
            )
        acting = [
            name
            for name, on in (
                (ESTIMATOR_NAME, self.mapo_active),
                ("per-tag metrics", self.tag_metrics),
                ("MAPO-AT", self.mapo_at.enabled),
                (f"curriculum {self.curriculum_config.order}", self.curriculum_config.enabled),
                ("failed-reward checks", self.checks_failed_rewards),
            )
            if on
        ]
        print(
            f"{TRAINER_BANNER}; "
            + (f"acting for: {', '.join(acting)}" if acting else "nothing selected: every step runs verl's own code"),
            flush=True,
        )

    def _check_mapo_at(self, config) -> None:
        loss_mode = OmegaConf.select(config, "actor_rollout_ref.actor.policy_loss.loss_mode", default="vanilla")
        if self.mapo_at.relevance_mask != (loss_mode == LOSS_MODE):
            raise ValueError(
                f"algorithm.mapo_at.relevance_mask={self.mapo_at.relevance_mask} needs "
                f"actor_rollout_ref.actor.policy_loss.loss_mode={LOSS_MODE} and the other way round "
                f"(loss_mode is {loss_mode!r})"
            )
        if self.mapo_at.relevance_mask and OmegaConf.select(config, "algorithm.rollout_correction.rollout_is"):
            raise ValueError(
                "algorithm.mapo_at.relevance_mask passes its weights as rollout_is_weights; it cannot be combined "
                "with algorithm.rollout_correction.rollout_is"
            )

    @property
    def has_state(self) -> bool:
        """Whether this run keeps state of its own in checkpoints."""
        return self.mapo_active or self.curriculum_config.enabled

    # ------------------------------------------------------------------------------------------- curriculum
    def _init_dataloader(self):
        super()._init_dataloader()
        if self.curriculum_config.enabled:
            tags = [str(t) for t in self.train_dataset.dataframe[TAG_FIELD]]
            self.curriculum = TagCurriculum(tags, int(self.config.data.train_batch_size), self.curriculum_config)
            logger.warning(
                "curriculum %s: %d steps per curriculum epoch over %d prompts (verl counts %d)",
                self.curriculum_config.order,
                self.curriculum.steps_per_epoch,
                len(tags),
                self.steps_per_epoch,
            )

    def _fetch_one_gen_batch(self):
        if self.curriculum is None:
            return super()._fetch_one_gen_batch()
        gen_batch_size = self.config.data.get("gen_batch_size", None) or self.config.data.train_batch_size
        indices = self.curriculum.take(int(gen_batch_size))
        batch_dict = collate_fn([self.train_dataset[i] for i in indices])
        batch_dict["uid"] = np.array([str(uuid.uuid4()) for _ in indices], dtype=object)
        return tu.get_tensordict(batch_dict)

    def _end_curriculum_step(self, tags: list[str], valid: np.ndarray, ctx: BatchContext | None, metrics: dict):
        cur = self.curriculum
        step_tag = cur.step_tag
        held = sorted({t for t, v in zip(tags, valid, strict=True) if v})
        if step_tag != ALL and held != [step_tag]:
            raise RuntimeError(f"curriculum step {self.global_steps} should hold tag {step_tag!r} only, got {held}")
        metrics.update(cur.metrics())
        difficulties = {t: s["difficulty"] for t, s in ctx.stats.items()} if ctx is not None else None
        cur.end_step(difficulties)
        prio = {t: round(p, 4) for t, p in cur.priorities().items() if p == p}
        print(
            f"[verl-modality] step {self.global_steps}: curriculum {cur.config.order}, epoch {cur.epoch}, "
            f"tag {step_tag}, priorities {prio}",
            flush=True,
        )

    # ------------------------------------------------------------------------------------------------ state
    def _ensure_mapo_state(self) -> AdaptiveWeightState:
        if self.mapo_state is None:
            window = self.mapo_config.history_window
            if window is None:  # MAPLE App. E: about one epoch of steps
                window = max(1, int(getattr(self, "steps_per_epoch", 1) or 1))
            self.mapo_state = AdaptiveWeightState(self.mapo_config, window=window)
        return self.mapo_state

    def mapo_state_dict(self) -> dict:
        """Everything this trainer adds to a checkpoint, as JSON-serialisable data."""
        state = {"version": STATE_VERSION, "global_steps": int(self.global_steps)}
        if self.mapo_active:
            state["adaptive_weights"] = self._ensure_mapo_state().state_dict()
        if self.curriculum is not None:
            state["curriculum"] = self.curriculum.state_dict()
        return state

    def load_mapo_state_dict(self, state: dict, source: str) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"{source}: state version {state.get('version')!r}, expected {STATE_VERSION}")
        if int(state.get("global_steps", -1)) != int(self.global_steps):
            raise ValueError(
                f"{source}: saved at global step {state.get('global_steps')}, but verl resumed step {self.global_steps}"
            )
        for key, wanted in (("adaptive_weights", self.mapo_active), ("curriculum", self.curriculum is not None)):
            if wanted and key not in state:
                raise ValueError(f"{source}: no '{key}' state; the checkpoint was written with other settings")
        if self.mapo_active:
            self._ensure_mapo_state().load_state_dict(state["adaptive_weights"])
        if self.curriculum is not None:
            self.curriculum.load_state_dict(state["curriculum"])

    def _save_checkpoint(self):
        if self.has_state:
            # Written before verl's tracker file, so a checkpoint that verl considers complete always has our state.
            folder = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, STATE_FILE + ".tmp")
            with open(tmp, "w") as f:
                json.dump(self.mapo_state_dict(), f, indent=1)
            os.replace(tmp, os.path.join(folder, STATE_FILE))
        return super()._save_checkpoint()

    def _resumed_folder(self) -> str | None:
        trainer = self.config.trainer
        if trainer.resume_mode == "resume_path":
            folder = trainer.resume_from_path
        else:
            folder = find_latest_ckpt_path(os.path.abspath(trainer.default_local_dir))
        return None if folder is None else os.path.abspath(folder)

    def _load_checkpoint(self):
        result = super()._load_checkpoint()
        if self.has_state:
            if self.mapo_active:
                self._ensure_mapo_state()
            if self.global_steps > 0:
                folder = self._resumed_folder()
                path = os.path.join(folder, STATE_FILE) if folder else None
                if path is None or not os.path.exists(path):
                    raise FileNotFoundError(
                        f"resuming step {self.global_steps} with {ESTIMATOR_NAME} or data.curriculum, but the "
                        f"checkpoint has no {STATE_FILE} (looked in {folder}); it was not written by such a run, so "
                        "the adaptive-weight history / curriculum position cannot be restored"
                    )
                with open(path) as f:
                    self.load_mapo_state_dict(json.load(f), path)
                logger.info("restored verl-modality state from %s", path)
        return result

    # ---------------------------------------------------------------------------------------- MAPO-AT pass
    def _compute_old_log_prob(self, batch, metrics: dict):
        batch = super()._compute_old_log_prob(batch, metrics)
        if self.mapo_at.enabled:
            self._relevance_pass(batch, metrics)
        return batch

    def _update_actor(self, batch, metrics: dict):
        if self.mapo_at.attention_loss:
            from verl_modality.models.qwen2_5_omni import placeholder_token_ids

            at = self.mapo_at
            batch.extra_info["mapo_at"] = {
                "layers": list(at.layers),
                "eta": at.eta,
                "kappa": at.kappa,
                "tau_base": at.tau_base,
                "c_mask": at.c_mask,
                "audio_token_id": placeholder_token_ids(self.tokenizer)["audio"],
            }
        return super()._update_actor(batch, metrics)

    def _attention_loss_inputs(self, batch):
        """Task reward and |A_i| per response, repeated over its tokens, for the actor's attention loss; returns the
        batch meta that lists the new fields (the actor reads the fields a meta lists)."""
        from tensordict import TensorDict

        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=["rm_scores", "advantages", "response_mask"]
        )
        reward = [float(r.sum()) for r in data["rm_scores"].unbind()]
        adv = [float(a.abs().max()) if a.numel() else 0.0 for a in data["advantages"].unbind()]
        masks = data["response_mask"].unbind()
        fields = {
            "mapo_attn_reward": [torch.full((m.numel(),), r) for m, r in zip(masks, reward, strict=True)],
            "mapo_attn_adv": [torch.full((m.numel(),), a) for m, a in zip(masks, adv, strict=True)],
        }
        out = TensorDict(
            {k: torch.nested.as_nested_tensor(v, layout=torch.jagged) for k, v in fields.items()}, batch_size=len(batch)
        )
        return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=out)

    def _relevance_pass(self, batch, metrics: dict) -> None:
        from transfer_queue import KVBatchMeta
        from verl.utils.tensordict_utils import list_of_dict_to_tensordict
        from verl.workers.utils.padding import response_from_nested, response_to_nested

        from verl_modality.data import schema
        from verl_modality.trainer import relevance_pass as rp

        fields = [*rp.ROW_FIELDS, "responses", "response_mask", "entropy"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        columns = {f: rp.as_list(data[f]) for f in rp.ROW_FIELDS}
        rows = [{f: columns[f][i] for f in rp.ROW_FIELDS} for i in range(len(batch))]
        responses = data["responses"].unbind()
        masks = data["response_mask"].unbind()
        h_full = data["entropy"].unbind()
        dh = [torch.zeros_like(h, dtype=torch.float32) for h in h_full]
        audio = [i for i, row in enumerate(rows) if "A" in str(row[schema.AVAILABLE])]
        if audio:
            # every row goes through the pass (verl's micro-batching needs the batch's size); rows without audio are
            # scored as they are and keep dh = 0
            cache: dict = {}
            twins = [
                rp.twin_trajectory(
                    rows[i],
                    responses[i].tolist(),
                    masks[i],
                    self.processor,
                    self.config.data,
                    self.mapo_at.ablation,
                    cache,
                    drop="A" if i in set(audio) else "",
                )
                for i in range(len(rows))
            ]
            keys = list(batch.keys)
            tags = [{"status": "success"} for _ in keys]
            tq.kv_batch_put(
                keys=keys, partition_id=rp.TWIN_PARTITION, fields=list_of_dict_to_tensordict(twins), tags=tags
            )
            try:
                meta = KVBatchMeta(
                    keys=keys,
                    tags=tags,
                    partition_id=rp.TWIN_PARTITION,
                    extra_info={
                        "calculate_entropy": True,
                        "compute_loss": False,
                        "temperature": self.config.actor_rollout_ref.rollout.temperature,
                    },
                )
                self.actor_rollout_wg.compute_log_prob(meta)
                out = tq.kv_batch_get(
                    keys=keys, partition_id=rp.TWIN_PARTITION, select_fields=["entropy", "response_mask"]
                )
                h_ablated = response_from_nested(out["entropy"], out["response_mask"]).unbind()
            finally:
                tq.kv_clear(keys=keys, partition_id=rp.TWIN_PARTITION)
            for i in audio:
                dh[i] = (h_ablated[i].float() - h_full[i].float()).detach()
        mask_nested = data["response_mask"]
        dh_padded = torch.nested.as_nested_tensor(dh, layout=torch.jagged).to_padded_tensor(0.0)
        mask_padded = mask_nested.to_padded_tensor(0)
        weights = relevance_weights(dh_padded, mask_padded, self.mapo_at.tau_base, self.mapo_at.c_mask)
        from tensordict import TensorDict

        fields = {}
        if self.mapo_at.relevance_mask:
            fields["rollout_is_weights"] = response_to_nested(weights, mask_nested)
        if self.mapo_at.attention_loss:
            from verl_modality.algorithms.attention_loss import content_token_mask

            responses_padded = data["responses"].to_padded_tensor(self.tokenizer.pad_token_id or 0)
            content = content_token_mask(responses_padded, self.tokenizer, mask_padded.bool()).float()
            fields["mapo_dh"] = response_to_nested(dh_padded, mask_nested)
            fields["mapo_attn_content"] = response_to_nested(content, mask_nested)
        output = TensorDict(fields, batch_size=len(batch))
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=output)
        metrics.update(relevance_metrics(dh_padded, weights, mask_padded))
        metrics["mapo_at/audio_fraction"] = len(audio) / max(1, len(batch))

    # ------------------------------------------------------------------------------------------- advantages
    def _read_step_fields(self, batch, with_prompts: bool) -> tuple[list[str], Any]:
        """The rows' tags, and their prompt ids (nested) when asked, in one TransferQueue read."""
        fields = [TAG_FIELD, "prompts"] if with_prompts else [TAG_FIELD]
        try:
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
            raw = data[TAG_FIELD]
        except Exception as err:  # TransferQueue raises its own types for unknown fields
            raise KeyError(
                f"per-tag training needs a '{TAG_FIELD}' column in the training data (see docs/data_schema.md): {err}"
            ) from err
        tags = [str(t) for t in (raw.tolist() if hasattr(raw, "tolist") else list(raw))]
        return tags, (data["prompts"] if with_prompts else None)

    def _stream_metrics(self, prompts: Any, tags: list[str], valid: np.ndarray) -> dict[str, float]:
        pad = -1
        ids = prompts.to_padded_tensor(padding=pad).cpu().numpy()
        keep = np.flatnonzero(valid)
        tokens = self._stream_token_ids
        return stream_token_metrics([tags[i] for i in keep], ids[keep], ids[keep] != pad, tokens[0], tokens[1])

    def _pg_variance_metrics(self, batch, tags: list[str], valid: np.ndarray) -> dict[str, float]:
        """``pg_var/*``: the between/within-tag split of the step's sequence scores (sum of ``rm_scores``, verl's
        ``token_level_scores``), :func:`~verl_modality.algorithms.gradient_variance.pg_variance_metrics`.

        Not under ``mapo/``: there every second part is a tag (``mapo/<tag>/<stat>``, read by the run summary and the
        tests), and baselines with tag metrics log this too."""
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["rm_scores"])
        scores = np.array([float(r.sum()) for r in data["rm_scores"].unbind()])
        # a metric must not stop the step: non-finite scores are the estimator's to report, left out here
        keep = valid & np.isfinite(scores)
        if not keep.any():
            return {}
        return pg_variance_metrics(scores, tags, keep)

    @property
    def _stream_token_ids(self) -> tuple[int, int] | None:
        """(audio, video) placeholder ids; None for a tokenizer without them (no stream tokens to count)."""
        if not hasattr(self, "_stream_ids_cache"):
            from verl_modality.models.qwen2_5_omni import placeholder_token_ids

            try:
                ids = placeholder_token_ids(self.tokenizer)
                self._stream_ids_cache = (ids["audio"], ids["video"])
            except ValueError:
                self._stream_ids_cache = None
        return self._stream_ids_cache

    def _neutralize_failed_rewards(self, batch, metrics: dict) -> None:
        """Scores of samples the reward function marked failed (``judge_failed``) become their group's mean valid
        score before any advantage is computed (:mod:`verl_modality.rewards.failed_scores`)."""
        from verl_modality.rewards.failed_scores import neutralize_failed

        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=["rm_scores", "extra_fields"]
        )
        infos = [getattr(e, "data", e) for e in list(data["extra_fields"])]
        failed = np.array(
            [bool((e or {}).get("reward_extra_info", {}).get("judge_failed", 0)) for e in infos], dtype=bool
        )
        if not failed.any():
            metrics["reward/failed"] = 0.0
            return
        rows = [r.detach().clone() for r in data["rm_scores"].unbind()]
        groups = [str(k).split("_")[0] for k in batch.keys]
        totals = np.array([float(r.sum()) if not torch.isnan(r).any() else float("nan") for r in rows])
        new, stats = neutralize_failed(totals, groups, failed)
        for i in np.flatnonzero(failed):
            r = rows[i]
            where = torch.isnan(r)
            if not where.any():  # a failure marked with a finite score: the score sits at the last non-zero entry
                nz = torch.nonzero(r).flatten()
                where = torch.zeros_like(r, dtype=torch.bool)
                where[int(nz[-1]) if nz.numel() else r.numel() - 1] = True
            rows[i] = torch.where(where, torch.as_tensor(new[i], dtype=r.dtype), torch.zeros_like(r))
        from tensordict import TensorDict

        scores = data["rm_scores"]
        value = (
            torch.nested.as_nested_tensor(rows, layout=torch.jagged)
            if getattr(scores, "is_nested", False)
            else torch.stack(rows)
        )
        tq.kv_batch_put(
            keys=batch.keys,
            partition_id=batch.partition_id,
            fields=TensorDict({"rm_scores": value}, batch_size=len(batch)),
        )
        metrics.update(stats)
        logger.warning("%d sample(s) with a failed reward got their group's mean score", int(failed.sum()))

    def _compute_advantage(self, batch, metrics: dict):
        if self.checks_failed_rewards:
            self._neutralize_failed_rewards(batch, metrics)
        if not (self.tag_metrics or self.curriculum is not None or self.mapo_at.attention_loss):
            return super()._compute_advantage(batch, metrics)
        count_streams = self.tag_metrics and self._stream_token_ids is not None
        tags, prompts = self._read_step_fields(batch, with_prompts=count_streams)
        valid = np.array([not tag.get("is_padding", False) for tag in batch.tags], dtype=bool)
        if count_streams:
            metrics.update(self._stream_metrics(prompts, tags, valid))
        if self.tag_metrics:
            metrics.update(self._pg_variance_metrics(batch, tags, valid))
        ctx = None
        if self.mapo_active:
            ctx = BatchContext(modality_tags=tags, valid=valid, state=self._ensure_mapo_state(), step=self.global_steps)
            with batch_context(ctx):
                out = super()._compute_advantage(batch, metrics)
            metrics.update(stats_to_metrics(ctx.stats))
        else:
            out = super()._compute_advantage(batch, metrics)
        if self.mapo_at.attention_loss:
            out = self._attention_loss_inputs(out)
        if self.curriculum is not None:  # the step's batch is final here, before any checkpoint of this step
            self._end_curriculum_step(tags, valid, ctx, metrics)
        return out

    # ------------------------------------------------------------------------------------------- validation
    def _validate(self) -> dict[str, float]:
        if not self.tag_metrics:
            return super()._validate()
        self._val_uid_tags = {}
        loader = self.val_dataloader
        self.val_dataloader = _UidTagRecorder(loader, self._val_uid_tags)
        try:
            metrics = super()._validate()
        finally:
            self.val_dataloader = loader
        cur = self.curriculum
        if cur is not None and cur.config.order == "adaptive" and cur.zero_shot is None and self.global_steps == 0:
            prefix, suffix = "val-core/tag/", "/acc"
            acc = {
                k[len(prefix) : -len(suffix)]: v
                for k, v in metrics.items()
                if k.startswith(prefix)
                and k.endswith(suffix)
                and k[len(prefix) : -len(suffix)] not in ("pooled", "tag_mean")
            }
            cur.set_zero_shot(acc)  # first-epoch order (MAPLE §4.2): lowest zero-shot accuracy first
            print(f"[verl-modality] curriculum zero-shot accuracy from validation: {acc}", flush=True)
        return metrics

    def _val_metrics_update(self, data_sources, sample_uids, reward_extra_infos_dict, sample_turns, **kwargs):
        metrics = super()._val_metrics_update(
            data_sources, sample_uids, reward_extra_infos_dict, sample_turns, **kwargs
        )
        if self.tag_metrics:
            rewards = reward_extra_infos_dict["reward"]
            acc = reward_extra_infos_dict.get("acc")  # the reward function's accuracy, where it reports one
            if acc:  # a row without acc (None: e.g. a caption whose judge failed) is unscored, not its NaN reward
                failed = reward_extra_infos_dict.get("judge_failed") or [None] * len(acc)
                scores = [None if f else (r if a is None else a) for a, r, f in zip(acc, rewards, failed, strict=True)]
            else:
                scores = rewards
            missing = [u for u in sample_uids if str(u) not in self._val_uid_tags]
            if missing:
                raise KeyError(f"no modality tag recorded for validation uids {missing[:5]} ({len(missing)} in all)")
            tags = [self._val_uid_tags[str(u)][0] for u in sample_uids]
            strata = [self._val_uid_tags[str(u)][1] for u in sample_uids]
            metrics.update(tag_accuracy_metrics(tags, scores, None if None in strata else strata))
        return metrics


def install(module: Any = None) -> str:
    """Make :class:`ModalityTrainerSync` verl's ``sync`` trainer (verl's ``register_trainer`` refuses re-registration)."""
    from verl.trainer.ppo.v1 import trainer_base

    registry = trainer_base.TRAINER_REGISTRY
    if registry.get("sync") not in (PPOTrainerSync, ModalityTrainerSync):
        raise RuntimeError(
            f"verl's 'sync' trainer is {registry.get('sync')!r}, not PPOTrainerSync; refusing to replace"
        )
    registry["sync"] = ModalityTrainerSync
    return "trainer/sync"


install()  # also done by the plugin's import hook; here for when this module is imported before verl's trainer
