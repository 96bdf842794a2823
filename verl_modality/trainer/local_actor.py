"""verl's own actor (``TrainingWorker`` on ``FSDPEngineWithLMHead``), run in this process on one rank.

The actor is configured exactly as ``python -m verl.trainer.main_ppo`` configures it: from verl's ``ppo_trainer``
Hydra config plus overrides, converted with verl's ``omega_conf_to_dataclass``, wired as
``ActorRolloutRefWorker.init_model`` wires it, with verl's ``ppo_loss``. Used by the CPU demo and the tests; on a
GPU machine the same code runs on CUDA.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tensordict import TensorDict

#: Overrides that make verl's default actor run on a CPU-only machine (see docs/cpu.md).
CPU_ACTOR_OVERRIDES = (
    "actor_rollout_ref.model.use_remove_padding=False",
    "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
    "actor_rollout_ref.actor.strategy=fsdp2",
    "actor_rollout_ref.actor.fsdp_config.strategy=fsdp2",
    "actor_rollout_ref.actor.use_torch_compile=False",
    "actor_rollout_ref.actor.fsdp_config.use_torch_compile=False",
    "actor_rollout_ref.actor.fsdp_config.model_dtype=fp32",
    "actor_rollout_ref.actor.fsdp_config.dtype=float32",
    "+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}",
    "actor_rollout_ref.actor.use_kl_loss=False",
    "actor_rollout_ref.model.enable_gradient_checkpointing=False",
)


def compose_verl_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """verl's ``ppo_trainer`` config with Hydra ``overrides`` applied (what ``main_ppo`` would see)."""
    import verl
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=list(overrides))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_single_process_group() -> None:
    """Environment of a world-size-1 verl worker on loopback (what Ray would set for rank 0)."""
    defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    defaults.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())})
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


@dataclass
class LocalActor:
    """A verl actor on one process. Build with :meth:`create`."""

    config: DictConfig
    actor_config: Any
    worker: Any
    extra: dict = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        model_path: str | os.PathLike,
        *,
        mini_batch_size: int = 4,
        micro_batch_size: int = 2,
        lr: float = 1e-3,
        overrides: list[str] | tuple[str, ...] = (),
    ) -> LocalActor:
        """Build verl's actor for ``model_path`` (hub id or local path; full Omni checkpoints load their thinker)."""
        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers import engine_workers
        from verl.workers.config import TrainingWorkerConfig
        from verl.workers.engine_workers import TrainingWorker

        init_single_process_group()
        base = list(CPU_ACTOR_OVERRIDES) if _on_cpu() else []
        cfg = compose_verl_config(
            base
            + [
                f"actor_rollout_ref.model.path={model_path}",
                f"actor_rollout_ref.actor.ppo_mini_batch_size={mini_batch_size}",
                f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro_batch_size}",
                f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro_batch_size}",
                f"actor_rollout_ref.actor.optim.lr={lr}",
                "actor_rollout_ref.rollout.n=1",
                *overrides,
            ]
        )
        model_config = omega_conf_to_dataclass(cfg.actor_rollout_ref.model)
        actor_config = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
        actor_config.model_config = model_config
        training_config = TrainingWorkerConfig(
            model_type="language_model",
            model_config=model_config,
            engine_config=actor_config.engine,
            optimizer_config=actor_config.optim,
            checkpoint_config=actor_config.checkpoint,
        )
        # Same assignments as verl's ActorRolloutRefWorker.init_model.
        engine = training_config.engine_config
        engine.use_dynamic_bsz = actor_config.use_dynamic_bsz
        engine.infer_max_token_len_per_gpu = cfg.actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu
        engine.infer_micro_batch_size_per_gpu = cfg.actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu
        engine.max_token_len_per_gpu = actor_config.ppo_max_token_len_per_gpu
        engine.micro_batch_size_per_gpu = actor_config.ppo_micro_batch_size_per_gpu
        engine.use_remove_padding = model_config.get("use_remove_padding", False)

        worker = TrainingWorker(config=training_config)
        worker.reset()
        # The loss verl's ActorRolloutRefWorker uses (looked up there, so the plugin's MAPO-AT wrapper is included;
        # it is inert unless a batch carries the ``mapo_at`` knob).
        worker.set_loss_fn(partial(engine_workers.ppo_loss, config=actor_config))
        return cls(config=cfg, actor_config=actor_config, worker=worker)

    @property
    def module(self) -> torch.nn.Module:
        """The (FSDP-wrapped) Hugging Face model the actor trains."""
        return self.worker.engine.module

    @property
    def model_config(self) -> Any:
        return self.actor_config.model_config

    def compute_log_prob(self, batch: TensorDict, temperature: float = 1.0) -> dict[str, torch.Tensor]:
        """verl's ``compute_log_prob`` on a left/right padded batch; returns padded ``log_probs`` and ``entropy``.

        Shapes: returns ``(bs, response_len)`` tensors.
        """
        from verl.utils import tensordict_utils as tu
        from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

        td = left_right_2_no_padding(batch.clone())
        tu.assign_non_tensor(td, calculate_entropy=True, compute_loss=False, temperature=temperature)
        output = _result(self.worker.infer_batch(td))
        log_probs = no_padding_2_padding(tu.get(output, "log_probs"), td)
        entropy = no_padding_2_padding(tu.get(output, "entropy"), td)
        return {"log_probs": log_probs.float(), "entropy": entropy.float()}

    def update(self, batch: TensorDict, temperature: float = 1.0, nested: bool = False) -> dict[str, Any]:
        """verl's actor update (PPO mini-batches with the configured policy loss); returns verl's actor metrics.

        ``batch`` must carry ``old_log_probs`` and ``advantages`` ``(bs, response_len)`` besides the inputs.
        ``nested``: hand the actor the per-sequence layout ``main_ppo``'s trainer sends (:func:`to_nested_layout`),
        which the MAPO-AT attention loss reads, instead of verl's ``left_right_2_no_padding`` conversion.
        """
        from verl.utils import tensordict_utils as tu
        from verl.workers.utils.padding import left_right_2_no_padding

        cfg = self.actor_config
        td = to_nested_layout(batch) if nested else left_right_2_no_padding(batch.clone())
        tu.assign_non_tensor(
            td,
            temperature=temperature,
            calculate_entropy=bool(cfg.calculate_entropy or cfg.entropy_coeff != 0.0),
            global_batch_size=cfg.ppo_mini_batch_size,
            mini_batch_size=cfg.ppo_mini_batch_size,
            epochs=cfg.ppo_epochs,
            seed=cfg.data_loader_seed,
            dataloader_kwargs={"shuffle": cfg.shuffle},
            compute_loss=True,
        )
        output = _result(self.worker.train_mini_batch(td))
        return dict(tu.get(output, "metrics"))


def to_nested_layout(batch: TensorDict) -> TensorDict:
    """A left/right padded batch in the layout ``main_ppo``'s trainer hands verl's actor through TransferQueue.

    Every sequence unpadded (jagged nested tensors): ``prompts``, ``responses``, ``input_ids``, ``attention_mask``
    (ones), ``position_ids`` ``(4, L_i)``, and each response-shaped ``(bs, R)`` field (``response_mask``,
    ``old_log_probs``, ``advantages``, ...) cut to the sequence's response length; ``loss_mask`` is the response
    mask, as verl's agent loop stores it. Other fields are kept.
    """
    from verl.utils import tensordict_utils as tu

    td = batch.clone()
    bs, prompt_len, resp_len = batch["prompts"].shape[0], batch["prompts"].shape[1], batch["responses"].shape[1]
    mask = batch["attention_mask"].bool()
    r_lens = mask[:, prompt_len:].sum(-1).tolist()

    def jagged(rows: list[torch.Tensor]) -> torch.Tensor:
        return torch.nested.as_nested_tensor(rows, layout=torch.jagged)

    for key in list(batch.keys()):
        value = batch[key]
        if not isinstance(value, torch.Tensor) or value.is_nested:
            continue
        if key == "prompts":
            td[key] = jagged([value[i][mask[i, :prompt_len]] for i in range(bs)])
        elif key == "input_ids":
            td[key] = jagged([value[i][mask[i]] for i in range(bs)])
        elif key == "attention_mask":
            td[key] = jagged([torch.ones_like(value[i][mask[i]]) for i in range(bs)])
        elif key == "position_ids":
            rows = [value[i][..., mask[i]] for i in range(bs)]
            td[key] = tu.nested_tensor_from_tensor_list(rows, ragged_idx=rows[0].dim())
        elif tuple(value.shape[:2]) == (bs, resp_len):
            td[key] = jagged([value[i, : r_lens[i]] for i in range(bs)])
    td["loss_mask"] = td["response_mask"]
    return td


def _result(value: Any) -> Any:
    # verl's non-blocking dispatch may hand back a future-like object when called through a worker group.
    return value.get() if hasattr(value, "get") and not isinstance(value, TensorDict) else value


def _on_cpu() -> bool:
    from verl.utils.device import get_device_name

    return get_device_name() == "cpu"
