"""What the trainer's features keep in verl's checkpoints: ``global_step_N/verl_modality_state.json`` (the adaptive
weights' history and the curriculum's position), written before verl's tracker file and restored on resume exactly.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from verl_modality.algorithms.advantage import ESTIMATOR_NAME
from verl_modality.trainer.features.curriculum_steps import CurriculumSteps
from verl_modality.trainer.features.tag_flow import TagFlow

logger = logging.getLogger(__name__)

STATE_FILE = "verl_modality_state.json"
STATE_VERSION = 2


def step_folder(checkpoint_dir: str, global_step: int) -> str:
    """verl's checkpoint folder of a step."""
    return os.path.join(checkpoint_dir, f"global_step_{global_step}")


def resumed_folder(trainer_config: Any) -> str | None:
    """The checkpoint folder verl resumes from (``resume_path``, else the latest under ``default_local_dir``)."""
    from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path

    if trainer_config.resume_mode == "resume_path":
        folder = trainer_config.resume_from_path
    else:
        folder = find_latest_ckpt_path(os.path.abspath(trainer_config.default_local_dir))
    return None if folder is None else os.path.abspath(folder)


def check_world_size(folder: str | None, trainer_config: Any) -> None:
    """Stop a resume from a checkpoint written at another world size, naming both sizes: verl's FSDP checkpoints
    hold one shard file per rank (``model_world_size_<W>_rank_<r>.pt``) and load only at the world size that wrote
    them (verl itself would fail later, inside a worker, on a missing shard file)."""
    from verl_modality.models.checkpoint import checkpoint_world_size

    if folder is None or trainer_config.resume_mode == "disable" or not os.path.isdir(os.path.join(folder, "actor")):
        return
    saved = checkpoint_world_size(os.path.join(folder, "actor"))
    nodes, per_node = int(trainer_config.nnodes), int(trainer_config.n_gpus_per_node)
    if saved != nodes * per_node:
        raise ValueError(
            f"{folder}: the checkpoint was saved at world size {saved}, but this run has world size {nodes * per_node} "
            f"(trainer.nnodes={nodes} x trainer.n_gpus_per_node={per_node}); verl resumes an FSDP checkpoint only at "
            f"the world size that wrote it: resume with {saved} ranks, or write the actor into a model folder with "
            "`verl-modality export` and start a new run from it"
        )


class TrainerState:
    """The state of the tag flow (adaptive weights, under MAPO) and of the curriculum, as one JSON document."""

    def __init__(self, tag_flow: TagFlow, curriculum: CurriculumSteps):
        self.tag_flow = tag_flow
        self.curriculum = curriculum

    @property
    def enabled(self) -> bool:
        """Whether this run keeps state of its own in checkpoints."""
        return self.tag_flow.mapo_active or self.curriculum.enabled

    def state_dict(self, global_step: int, steps_per_epoch: int | None = None) -> dict:
        """Everything the features add to a checkpoint, as JSON-serialisable data."""
        state: dict[str, Any] = {"version": STATE_VERSION, "global_steps": int(global_step)}
        weights = self.tag_flow.state_dict(steps_per_epoch)
        if weights is not None:
            state["adaptive_weights"] = weights
        curriculum = self.curriculum.state_dict()
        if curriculum is not None:
            state["curriculum"] = curriculum
        return state

    def load_state_dict(self, state: dict, source: str, global_step: int, steps_per_epoch: int | None = None) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"{source}: state version {state.get('version')!r}, expected {STATE_VERSION}")
        if int(state.get("global_steps", -1)) != int(global_step):
            raise ValueError(
                f"{source}: saved at global step {state.get('global_steps')}, but verl resumed step {global_step}"
            )
        wanted = (("adaptive_weights", self.tag_flow.mapo_active), ("curriculum", self.curriculum.active))
        for key, on in wanted:
            if on and key not in state:
                raise ValueError(f"{source}: no '{key}' state; the checkpoint was written with other settings")
        if self.tag_flow.mapo_active:
            self.tag_flow.load_state_dict(state["adaptive_weights"], steps_per_epoch)
        if self.curriculum.active:
            self.curriculum.load_state_dict(state["curriculum"])

    def save(self, folder: str, global_step: int, steps_per_epoch: int | None = None) -> str:
        """Write the state file into ``folder`` (atomically); returns its path."""
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, STATE_FILE)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.state_dict(global_step, steps_per_epoch), f, indent=1)
        os.replace(tmp, path)
        return path

    def restore(self, folder: str | None, global_step: int, steps_per_epoch: int | None = None) -> str:
        """Load the state file of the checkpoint verl resumed (``global_step`` > 0); returns its path."""
        path = os.path.join(folder, STATE_FILE) if folder else None
        if path is None or not os.path.exists(path):
            raise FileNotFoundError(
                f"resuming step {global_step} with {ESTIMATOR_NAME} or data.curriculum, but the checkpoint has no "
                f"{STATE_FILE} (looked in {folder}); it was not written by such a run, so the adaptive-weight "
                "history / curriculum position cannot be restored"
            )
        with open(path) as f:
            self.load_state_dict(json.load(f), path, global_step, steps_per_epoch)
        logger.info("restored verl-modality state from %s", path)
        return path
