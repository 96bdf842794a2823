"""The curriculum inside the trainer: one tag per batch, the step-end check, zero-shot order from validation, state."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from verl_modality.trainer.features.curriculum_steps import CurriculumSteps, dataset_tags

TAGS = ["V"] * 4 + ["A"] * 4 + ["VA"] * 4


def _cfg(order="static", est="mapo_stratified", **more):
    return OmegaConf.create({"algorithm": {"adv_estimator": est}, "data": {"curriculum": {"order": order, **more}}})


def test_off_by_default_and_adaptive_needs_mapo():
    off = CurriculumSteps(OmegaConf.create({"algorithm": {"adv_estimator": "grpo"}, "data": {}}), mapo_active=False)
    assert not off.enabled and not off.active and off.labels == [] and off.state_dict() is None
    off.start(TAGS, 2)
    assert not off.active
    assert CurriculumSteps(_cfg("static", "grpo"), mapo_active=False).labels == ["curriculum static"]
    with pytest.raises(ValueError, match="order=adaptive .* with 'grpo' use 'static' or 'mixed'"):
        CurriculumSteps(_cfg("adaptive", "grpo"), mapo_active=False)
    with pytest.raises(ValueError, match="data.curriculum.window"):
        CurriculumSteps(_cfg(window="five"), mapo_active=True)


class _Dataset:
    def __init__(self, tags):
        self.tags = tags

    def __len__(self):
        return len(self.tags)

    def __getitem__(self, i):
        return {"input_ids": torch.tensor([i]), "modality_tag": self.tags[i]}


def test_static_order_draws_one_tag_per_batch_and_checks_it():
    steps = CurriculumSteps(_cfg("static"), mapo_active=True)
    steps.start(TAGS, 2)
    plan = steps.curriculum.plan_preview()
    seen = []
    for global_step in range(1, 7):
        batch = steps.next_batch(_Dataset(TAGS), 2)
        tags = [str(t) for t in batch["modality_tag"]]
        assert len(set(tags)) == 1 and len(set(batch["uid"])) == 2
        seen.append(tags[0])
        metrics = steps.end_step(tags, np.ones(2, dtype=bool), None, global_step)
        assert any(k.startswith("curriculum/") for k in metrics)
    # uni (blocks of V and A in a seeded order) -> bi, two batches of two prompts per tag
    assert sorted(seen[:4]) == ["A", "A", "V", "V"] and seen[4:] == ["VA", "VA"]
    assert seen == plan  # the curriculum's own preview of the epoch
    tag = [str(t) for t in steps.next_batch(_Dataset(TAGS), 2)["modality_tag"]][0]
    with pytest.raises(RuntimeError, match=f"should hold tag '{tag}' only, got \\['A', 'V'\\]"):
        steps.end_step(["V", "A"], np.ones(2, dtype=bool), None, 7)


def test_padding_rows_do_not_count_in_the_step_check():
    steps = CurriculumSteps(_cfg("static"), mapo_active=True)
    steps.start(TAGS, 2)
    tag = str(steps.next_batch(_Dataset(TAGS), 2)["modality_tag"][0])
    other = "VA" if tag != "VA" else "V"
    steps.end_step([tag, tag, other], np.array([True, True, False]), None, 1)
    tag = str(steps.next_batch(_Dataset(TAGS), 2)["modality_tag"][0])
    other = "VA" if tag != "VA" else "V"
    with pytest.raises(RuntimeError, match="should hold tag"):
        steps.end_step([tag, tag, other], np.array([True, True, True]), None, 2)


def test_adaptive_order_takes_zero_shot_accuracy_from_the_first_validation_only():
    steps = CurriculumSteps(_cfg("adaptive"), mapo_active=True)
    steps.start(TAGS, 2)
    steps.after_validation({"V": 0.9, "A": 0.2, "VA": 0.5}, global_step=3)  # not before training: ignored
    assert steps.curriculum.zero_shot is None
    steps.after_validation({"V": 0.9, "A": 0.2, "VA": 0.5}, global_step=0)
    assert steps.curriculum.zero_shot == {"V": 0.9, "A": 0.2, "VA": 0.5}
    batch = steps.next_batch(_Dataset(TAGS), 2)
    assert set(batch["modality_tag"]) == {"A"}  # lowest zero-shot accuracy first (MAPLE §4.2)


def test_state_round_trip_continues_where_it_stopped():
    def run(steps, n):
        out = []
        for s in range(n):
            tags = [str(t) for t in steps.next_batch(_Dataset(TAGS), 2)["modality_tag"]]
            steps.end_step(tags, np.ones(2, dtype=bool), None, s + 1)
            out.append(tags[0])
        return out

    a = CurriculumSteps(_cfg("mixed", seed=3), mapo_active=True)
    a.start(TAGS, 2)
    run(a, 3)
    state = a.state_dict()
    b = CurriculumSteps(_cfg("mixed", seed=3), mapo_active=True)
    b.start(TAGS, 2)
    b.load_state_dict(state)
    assert run(b, 5) == run(a, 5)


def test_dataset_tags_reads_the_dataframe_column():
    class DS:
        dataframe = {"modality_tag": np.array(["V", "AS"], dtype=object)}

    assert dataset_tags(DS()) == ["V", "AS"]
