"""The one-tag-per-batch curriculum sampler (docs/method.md §2.5): batches, orders, padding, refills, exact resume."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from omegaconf import OmegaConf

from verl_modality.data.curriculum import ALL, CurriculumConfig, TagCurriculum
from verl_modality.vocabulary import TAGS, level

# 10 samples per uni tag, 6 per bi tag, 3 VAS: uneven on purpose (batch 4 leaves partial batches)
SIZES = {"V": 10, "A": 10, "S": 10, "VA": 6, "VS": 6, "AS": 6, "VAS": 3}
TAG_OF = [tag for tag, n in SIZES.items() for _ in range(n)]
B = 4


def _sampler(order, **kw):
    return TagCurriculum(TAG_OF, B, CurriculumConfig(order=order, **kw))


def _epoch(sampler, difficulties=None):
    """One epoch of plain steps: [(tag, indices)], ending each step with ``difficulties(tag)`` if given."""
    out = []
    for _ in range(sampler.steps_per_epoch):
        idx = sampler.take(B)
        tag = sampler.step_tag
        out.append((tag, idx))
        sampler.end_step({tag: difficulties(tag)} if difficulties else None)
    return out


@pytest.mark.parametrize("order", ["static", "adaptive", "mixed"])
def test_each_batch_one_tag_and_every_sample_once_per_epoch(order):
    zero_shot = {t: i / 10 for i, t in enumerate(TAGS)}
    s = _sampler(order, zero_shot=zero_shot, seed=3)
    assert s.steps_per_epoch == (sum(math.ceil(n / B) for n in SIZES.values()) if order != "mixed" else 13)
    for epoch in range(2):
        steps = _epoch(s, difficulties=lambda t: 0.1)
        seen = Counter()
        for tag, idx in steps:
            assert len(idx) == B
            if order != "mixed":
                assert {TAG_OF[i] for i in idx} == {tag}
            else:
                assert tag == ALL
            seen.update(idx)
        # every sample at least once; the only repeats are the documented same-tag pads of partial batches
        assert set(seen) == set(range(len(TAG_OF))), epoch
        pads = sum(seen.values()) - len(TAG_OF)
        expected = sum(-n % B for n in SIZES.values()) if order != "mixed" else -len(TAG_OF) % B
        assert pads == expected
        # a pad repeats a sample of its own batch only when the tag has fewer samples than a batch (VAS: 3 < 4)
        assert all(len(set(idx)) == min(len(idx), SIZES.get(tag, len(TAG_OF))) for tag, idx in steps)


def test_static_order_is_uni_then_bi_then_tri_shuffled_within_levels():
    orders = []
    for epoch in range(3):
        s = _sampler("static", seed=epoch)
        tags = [tag for tag, _ in _epoch(s)]
        levels = [level(t) for t in tags]
        assert levels == sorted(levels, key=("uni", "bi", "tri").index)
        assert Counter(tags) == {t: math.ceil(n / B) for t, n in SIZES.items()}
        orders.append(tags)
    assert len({tuple(o) for o in orders}) > 1  # the shuffle depends on the seed


def test_adaptive_first_epoch_follows_zero_shot_accuracy():
    zero_shot = {"V": 0.9, "A": 0.2, "S": 0.5, "VA": 0.1, "VS": 0.7, "AS": 0.3, "VAS": 0.6}
    s = _sampler("adaptive", zero_shot=zero_shot)
    tags = [tag for tag, _ in _epoch(s)]
    # lowest accuracy first; a tag keeps its turn until its batches of the epoch are done
    expected = [t for t in sorted(zero_shot, key=zero_shot.get) for _ in range(math.ceil(SIZES[t] / B))]
    assert tags == expected


def test_adaptive_later_epochs_follow_scripted_difficulties():
    zero_shot = dict.fromkeys(TAGS, 0.5)
    script = {"V": 0.1, "A": 3.0, "S": 0.5, "VA": 2.0, "VS": 1.0, "AS": 0.2, "VAS": 4.0}
    s = _sampler("adaptive", zero_shot=zero_shot, window=2)
    _epoch(s, difficulties=script.get)  # epoch 0 records each tag's difficulties
    assert s.priorities() == pytest.approx(script)
    tags = [tag for tag, _ in _epoch(s, difficulties=script.get)]
    expected = [t for t in sorted(script, key=lambda t: -script[t]) for _ in range(math.ceil(SIZES[t] / B))]
    assert tags == expected
    # priorities are the mean of the last `window` values and react within an epoch
    s2 = _sampler("adaptive", zero_shot=zero_shot, window=2)
    _epoch(s2, difficulties=script.get)
    first = s2.take(B) and s2.step_tag
    assert first == "VAS"
    s2.end_step({"VAS": -10.0})  # VAS becomes the easiest: mean(4.0, -10.0) = -3.0
    assert s2.priorities()["VAS"] == pytest.approx(-3.0)
    assert s2.take(B) and s2.step_tag == "A"


def test_adaptive_without_zero_shot_explains_itself():
    s = _sampler("adaptive")
    with pytest.raises(RuntimeError, match="zero-shot accuracies for its first epoch"):
        s.take(B)
    with pytest.raises(ValueError, match=r"missing for tag\(s\) \['VAS'\]"):
        s.set_zero_shot({t: 0.5 for t in TAGS if t != "VAS"})


def test_refills_stay_in_the_step_tag_and_later_batches_are_padded():
    s = _sampler("static", seed=1)
    first = s.take(B)
    tag = s.step_tag
    refill = s.take(6)  # filtered groups replaced within the same step
    assert {TAG_OF[i] for i in first + refill} == {tag}
    s.end_step()
    # the tag's permutation is used up sooner; its remaining batches draw extra same-tag samples
    steps = [(tag, first + refill)]
    while sum(s.served.values()) < s.steps_per_epoch:
        idx = s.take(B)
        steps.append((s.step_tag, idx))
        s.end_step()
    assert all({TAG_OF[i] for i in idx} == {t} for t, idx in steps)
    assert set().union(*[set(idx) for _, idx in steps]) == set(range(len(TAG_OF)))
    assert s.extra_samples == sum(len(idx) for _, idx in steps) - len(TAG_OF)


@pytest.mark.parametrize("order", ["static", "adaptive", "mixed"])
def test_resume_reproduces_the_sequence_exactly(order):
    kw = {"zero_shot": {t: (i * 7 % 5) / 5 for i, t in enumerate(TAGS)}, "seed": 11}
    diff = {t: (i * 3 % 7) / 7 for i, t in enumerate(TAGS)}

    def run(sampler, n, start=0):
        out = []
        for k in range(start, start + n):
            idx = sampler.take(B)
            if k % 3 == 0:
                idx = idx + sampler.take(2)  # a refill
            out.append((sampler.step_tag, idx))
            sampler.end_step({sampler.step_tag: diff.get(sampler.step_tag, 0.0) + k / 100})
        return out

    straight = run(_sampler(order, **kw), 30)  # spans more than two epochs
    first = _sampler(order, **kw)
    head = run(first, 17)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = _sampler(order, **kw)
    resumed.load_state_dict(state)
    assert head + run(resumed, 13, start=17) == straight
    assert resumed.state_dict() == _replay_state(order, kw, run)


def _replay_state(order, kw, run):
    s = _sampler(order, **kw)
    run(s, 30)
    return s.state_dict()


def test_resume_refuses_other_data_or_settings():
    s = _sampler("static")
    state = s.state_dict()
    with pytest.raises(ValueError, match="batch_size=4, this run has 8"):
        TagCurriculum(TAG_OF, 8, CurriculumConfig(order="static")).load_state_dict(state)
    with pytest.raises(ValueError, match="pool_sizes"):
        TagCurriculum(TAG_OF[:-1], B, CurriculumConfig(order="static")).load_state_dict(state)


def test_config_from_verl_data_section():
    cfg = OmegaConf.create({"curriculum": {"order": "adaptive", "window": 3, "zero_shot": {"av": 0.5, "V": 0.1}}})
    c = CurriculumConfig.from_config(cfg)
    assert (c.order, c.window, c.zero_shot) == ("adaptive", 3, {"VA": 0.5, "V": 0.1})
    assert not CurriculumConfig.from_config(OmegaConf.create({})).enabled
    with pytest.raises(ValueError, match="order='uni-first'"):
        CurriculumConfig(order="uni-first")
    with pytest.raises(ValueError, match=r"unknown option\(s\) data.curriculum.\['ordr'\]"):
        CurriculumConfig.from_config(OmegaConf.create({"curriculum": {"ordr": "static"}}))
    with pytest.raises(ValueError, match="unknown modality tag 'X' in row 1"):
        TagCurriculum(["V", "X"], 1, CurriculumConfig(order="static"))


def test_metrics_name_the_tag_and_priorities():
    s = _sampler("adaptive", zero_shot=dict.fromkeys(TAGS, 0.5))
    s.take(B)
    m = s.metrics()
    assert m["curriculum/tag_index"] == TAGS.index(s.step_tag) and m["curriculum/epoch"] == 0
    s.end_step({s.step_tag: 0.25})
    assert s.metrics()[f"curriculum/priority/{TAGS[0]}"] == 0.25
