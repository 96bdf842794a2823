"""Per-tag validation metrics: by hand, and the uid -> tag bookkeeping around verl's validation loop."""

import numpy as np
import pytest

from verl_modality.trainer.features import tag_validation as tv


def test_tag_accuracy_metrics_by_hand():
    tags = ["V", "V", "A", "VAS", "V", "A"]
    scores = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    m = tv.tag_accuracy_metrics(tags, scores)
    assert m["val-core/tag/V/acc"] == pytest.approx(2 / 3)
    assert m["val-core/tag/A/acc"] == 0.5
    assert m["val-core/tag/VAS/acc"] == 0.0
    assert m["val-aux/tag/V/count"] == 3
    assert m["val-core/tag/pooled/acc"] == pytest.approx(3 / 6)
    assert m["val-core/tag/tag_mean/acc"] == pytest.approx((2 / 3 + 0.5 + 0.0) / 3)
    # levels pooled over samples: uni = (2 + 1) / 5; no bi tag, so U-B, B-T and the gap are not logged
    assert m["val-aux/level/uni/acc"] == pytest.approx(0.6) and m["val-aux/level/tri/acc"] == 0.0
    assert m["val-aux/modality_gap/u_t"] == pytest.approx(1.0)
    assert not {"val-aux/level/bi/acc", "val-aux/modality_gap/gap", "val-aux/modality_gap/u_b"} & set(m)
    assert tv.tag_accuracies(m) == {"A": 0.5, "V": pytest.approx(2 / 3), "VAS": 0.0}  # pooled, tag_mean left out
    with pytest.raises(ValueError, match="2 tags for 1"):
        tv.tag_accuracy_metrics(["V", "A"], [1.0])


def test_tag_accuracy_metrics_gap_strata_and_unscored():
    tags = ["V", "V", "VA", "VA", "VAS", "VAS", "VAS"]
    scores = [1.0, 1.0, 1.0, 0.0, 0.0, None, float("nan")]
    strata = ["exact", "exact", "superset", "exact", "deficit", "exact", "exact"]
    m = tv.tag_accuracy_metrics(tags, scores, strata)
    # uni 1.0, bi 0.5, tri 0.0: U-B = 0.5, U-T = 1.0, B-T = 1.0, gap = 2.5 / 3 (docs/method.md §8)
    gap = (m["val-aux/modality_gap/u_b"], m["val-aux/modality_gap/u_t"], m["val-aux/modality_gap/b_t"])
    assert gap == (0.5, 1.0, 1.0)
    assert m["val-aux/modality_gap/gap"] == pytest.approx(2.5 / 3)
    assert m["val-aux/stratum/exact/acc"] == pytest.approx(2 / 3) and m["val-aux/stratum/superset/acc"] == 1.0
    assert m["val-aux/stratum/deficit/acc"] == 0.0
    assert m["val-aux/tag/unscored"] == 2 and m["val-aux/tag/VAS/count"] == 1


def test_validation_scores_prefer_acc_and_leave_failed_judges_unscored():
    assert tv.validation_scores({"reward": [1.0, 0.5]}) == [1.0, 0.5]
    extra = {"reward": [1.0, 0.0, 0.3], "acc": [1.0, None, 0.0]}  # a missing acc falls back to the reward
    assert tv.validation_scores(extra) == [1.0, 0.0, 0.0]
    failed = {"reward": [1.0, float("nan")], "acc": [1.0, None], "judge_failed": [0, 1]}
    assert tv.validation_scores(failed) == [1.0, None]


def test_uid_recorder_sees_uids_assigned_after_yield():
    batches = [{"modality_tag": np.array(["V", "A"], dtype=object)}, {"modality_tag": np.array(["VAS"], dtype=object)}]
    sink = {}
    rec = tv.UidTagRecorder(batches, sink)
    assert len(rec) == 2
    for i, b in enumerate(rec):  # what verl's _validate does: assign uids after the loader yields
        b["uid"] = np.array([f"u{i}{j}" for j in range(len(b["modality_tag"]))], dtype=object)
    assert sink == {"u00": ("V", None), "u01": ("A", None), "u10": ("VAS", None)}
    with pytest.raises(KeyError, match="modality_tag"):
        for _b in tv.UidTagRecorder([{"uid": np.array(["x"])}], {}):
            pass


class _Owner:
    def __init__(self, batches):
        self.val_dataloader = batches


def test_recording_wraps_the_loader_for_one_validation_and_metrics_look_uids_up():
    batches = [{"modality_tag": np.array(["V", "AS"], dtype=object), "stratum": np.array(["exact", "superset"])}]
    owner = _Owner(batches)
    feature = tv.TagValidation(enabled=True)
    with feature.recording(owner):
        assert isinstance(owner.val_dataloader, tv.UidTagRecorder)
        for b in owner.val_dataloader:
            b["uid"] = np.array(["u1", "u2"], dtype=object)
    assert owner.val_dataloader is batches
    m = feature.metrics(["u1", "u1", "u2"], {"reward": [1.0, 0.0, 1.0]})
    assert m["val-core/tag/V/acc"] == 0.5 and m["val-core/tag/AS/acc"] == 1.0
    assert m["val-aux/stratum/superset/acc"] == 1.0
    with pytest.raises(KeyError, match="no modality tag recorded for validation uids \\['u9'\\]"):
        feature.metrics(["u1", "u9"], {"reward": [1.0, 0.0]})
    with pytest.raises(RuntimeError), feature.recording(owner):
        raise RuntimeError("validation failed")
    assert owner.val_dataloader is batches  # restored on errors too


def test_uid_recorder_names_verl_when_the_loop_sets_no_uid():
    with pytest.raises(KeyError, match="did not set batch_dict\\['uid'\\]"):
        for _b in tv.UidTagRecorder([{"modality_tag": np.array(["V"], dtype=object)}], {}):
            pass  # a verl that stopped assigning uids after the loader


def test_verl_validate_still_sets_the_uids_the_recorder_reads():
    """The three things of verl's ``_validate`` that the module docstring says per-tag validation relies on."""
    import ast
    import inspect
    import textwrap

    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    tree = ast.parse(textwrap.dedent(inspect.getsource(PPOTrainer._validate)))
    loops = [n for n in ast.walk(tree) if isinstance(n, ast.For) and ast.unparse(n.iter) == "self.val_dataloader"]
    assert len(loops) == 1, "verl's _validate no longer iterates self.val_dataloader"
    loop = loops[0]
    name = ast.unparse(loop.target)
    body = [ast.unparse(s) for s in loop.body]
    sets_uid = [i for i, s in enumerate(body) if s.startswith(f"{name}['uid'] = ")]
    rollout = [i for i, s in enumerate(body) if "generate_sequences" in s]
    assert sets_uid and rollout and sets_uid[0] < rollout[0], "verl no longer sets batch_dict['uid'] before the rollout"
    source = ast.unparse(tree)
    assert "sample_uids.extend(data.pop('uid')" in source, "verl's sample_uids are no longer the responses' uid field"
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "self._val_metrics_update"]
    assert calls and any(
        ast.unparse(a) == "sample_uids" for c in calls for a in [*c.args, *(k.value for k in c.keywords)]
    )
