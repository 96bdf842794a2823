"""The features' checkpoint state: written next to verl's checkpoint, restored exactly, refused when it does not fit."""

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from verl_modality.trainer.features.curriculum_steps import CurriculumSteps
from verl_modality.trainer.features.state import STATE_FILE, TrainerState, resumed_folder, step_folder
from verl_modality.trainer.features.tag_flow import TagFlow

TAGS = ["V"] * 4 + ["A"] * 4


def _state(est="mapo_stratified", order="static"):
    cfg = OmegaConf.create(
        {
            "algorithm": {"adv_estimator": est, "mapo": {"adaptive_weights": True}},
            "data": {"curriculum": {"order": order}},
        }
    )
    flow = TagFlow(cfg)
    steps = CurriculumSteps(cfg, flow.mapo_active)
    steps.start(TAGS, 2)
    return TrainerState(flow, steps)


def _advance(state, n):
    for s in range(n):
        state.curriculum.curriculum.take(2)
        tag = state.curriculum.curriculum.step_tag
        state.curriculum.end_step([tag, tag], np.ones(2, dtype=bool), {tag: 0.1 * (s + 1)}, s + 1)
        state.tag_flow.adaptive_weights(4).weights({tag: 0.1 * (s + 1)}, step=s + 1)


def test_save_then_restore_gives_the_same_state(tmp_path):
    a = _state()
    _advance(a, 3)
    folder = step_folder(str(tmp_path), 3)
    path = a.save(folder, 3, 4)
    assert (
        path == f"{tmp_path}/global_step_3/{STATE_FILE}"
        and not (tmp_path / "global_step_3" / f"{STATE_FILE}.tmp").exists()
    )
    b = _state()
    assert b.restore(folder, 3, 4) == path
    assert b.state_dict(3, 4) == a.state_dict(3, 4)
    assert json.loads(open(path).read())["adaptive_weights"]["entries"]


def test_restore_refuses_what_does_not_fit(tmp_path):
    a = _state()
    folder = step_folder(str(tmp_path), 2)
    a.save(folder, 2)
    with pytest.raises(ValueError, match="saved at global step 2, but verl resumed step 5"):
        _state().restore(folder, 5)
    with pytest.raises(FileNotFoundError, match=STATE_FILE):
        _state().restore(str(tmp_path / "elsewhere"), 2)
    with pytest.raises(FileNotFoundError, match="looked in None"):
        _state().restore(None, 2)
    no_curriculum = _state(order="none")
    no_curriculum.save(folder, 2)
    with pytest.raises(ValueError, match="no 'curriculum' state"):
        _state().restore(folder, 2)
    state = json.loads((tmp_path / "global_step_2" / STATE_FILE).read_text())
    state["version"] = 1
    (tmp_path / "global_step_2" / STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(ValueError, match="state version 1, expected 2"):
        _state().restore(folder, 2)


def test_enabled_only_with_mapo_or_a_curriculum():
    assert _state().enabled and _state("grpo", "static").enabled and _state(order="none").enabled
    assert not _state("grpo", "none").enabled
    assert _state("grpo", "none").state_dict(0) == {"version": 2, "global_steps": 0}


def test_resumed_folder_follows_verls_resume_mode(tmp_path):
    (tmp_path / "global_step_4").mkdir()
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("4")
    auto = OmegaConf.create({"resume_mode": "auto", "default_local_dir": str(tmp_path), "resume_from_path": None})
    assert resumed_folder(auto) == str(tmp_path / "global_step_4")
    path = OmegaConf.create(
        {"resume_mode": "resume_path", "resume_from_path": str(tmp_path / "x"), "default_local_dir": "."}
    )
    assert resumed_folder(path) == str(tmp_path / "x")


def test_a_checkpoint_of_another_world_size_stops_the_resume_naming_both(tmp_path):
    import types

    from verl_modality.trainer.features.state import check_world_size

    actor = tmp_path / "global_step_3" / "actor"
    actor.mkdir(parents=True)
    for rank in (0, 1):
        (actor / f"model_world_size_2_rank_{rank}.pt").write_bytes(b"")

    def trainer(nodes: int, per_node: int, mode: str = "auto"):
        return types.SimpleNamespace(resume_mode=mode, nnodes=nodes, n_gpus_per_node=per_node)

    folder = str(tmp_path / "global_step_3")
    check_world_size(folder, trainer(1, 2))  # the same size: verl loads it
    check_world_size(folder, trainer(2, 1))  # two nodes of one rank: also world size 2
    check_world_size(folder, trainer(1, 1, mode="disable"))  # no resume
    check_world_size(None, trainer(1, 1))  # nothing to resume
    with pytest.raises(ValueError, match=r"saved at world size 2, but this run has world size 1 \(trainer.nnodes=1 x"):
        check_world_size(folder, trainer(1, 1))
    with pytest.raises(ValueError, match="world size 4"):
        check_world_size(folder, trainer(2, 2))
