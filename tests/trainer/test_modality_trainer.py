"""The trainer layer's own logic, without Ray: tag metrics, the validation uid recorder, the registry swap."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from verl_modality.trainer import modality_trainer as mt


def test_tag_accuracy_metrics_by_hand():
    tags = ["V", "V", "A", "VAS", "V", "A"]
    scores = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    m = mt.tag_accuracy_metrics(tags, scores)
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
    with pytest.raises(ValueError, match="2 tags for 1"):
        mt.tag_accuracy_metrics(["V", "A"], [1.0])


def test_tag_accuracy_metrics_gap_strata_and_unscored():
    tags = ["V", "V", "VA", "VA", "VAS", "VAS", "VAS"]
    scores = [1.0, 1.0, 1.0, 0.0, 0.0, None, float("nan")]
    strata = ["exact", "exact", "superset", "exact", "deficit", "exact", "exact"]
    m = mt.tag_accuracy_metrics(tags, scores, strata)
    # uni 1.0, bi 0.5, tri 0.0: U-B = 0.5, U-T = 1.0, B-T = 1.0, gap = 2.5 / 3 (SPEC section 8)
    assert (m["val-aux/modality_gap/u_b"], m["val-aux/modality_gap/u_t"], m["val-aux/modality_gap/b_t"]) == (
        0.5,
        1.0,
        1.0,
    )
    assert m["val-aux/modality_gap/gap"] == pytest.approx(2.5 / 3)
    assert m["val-aux/stratum/exact/acc"] == pytest.approx(2 / 3) and m["val-aux/stratum/superset/acc"] == 1.0
    assert m["val-aux/stratum/deficit/acc"] == 0.0
    assert m["val-aux/tag/unscored"] == 2 and m["val-aux/tag/VAS/count"] == 1


def test_stats_to_metrics_names():
    flat = mt.stats_to_metrics({"VA": {"weight": 0.5, "count": 8}, "S": {"weight": 1}})
    assert flat == {"mapo/VA/weight": 0.5, "mapo/VA/count": 8.0, "mapo/S/weight": 1.0}


def test_stream_token_metrics_by_hand():
    audio, video, pad = 7, 9, -1
    ids = np.array([[pad, 1, 7, 7, 2], [9, 9, 9, 1, 2], [pad, pad, 7, 9, 2]])
    m = mt.stream_token_metrics(["A", "V", "A"], ids, ids != pad, audio, video)
    assert m == {
        "streams/A/prompt_tokens": (4 + 3) / 2,
        "streams/A/audio_tokens": (2 + 1) / 2,
        "streams/A/video_tokens": (0 + 1) / 2,
        "streams/V/prompt_tokens": 5.0,
        "streams/V/audio_tokens": 0.0,
        "streams/V/video_tokens": 3.0,
    }
    with pytest.raises(ValueError, match="2 tags"):
        mt.stream_token_metrics(["A", "V"], ids, ids != pad, audio, video)


def test_uid_recorder_sees_uids_assigned_after_yield():
    batches = [{"modality_tag": np.array(["V", "A"], dtype=object)}, {"modality_tag": np.array(["VAS"], dtype=object)}]
    sink = {}
    rec = mt._UidTagRecorder(batches, sink)
    for i, b in enumerate(rec):  # what verl's _validate does: assign uids after the loader yields
        b["uid"] = np.array([f"u{i}{j}" for j in range(len(b["modality_tag"]))], dtype=object)
    assert sink == {"u00": ("V", None), "u01": ("A", None), "u10": ("VAS", None)}
    with pytest.raises(KeyError, match="modality_tag"):
        for _b in mt._UidTagRecorder([{"uid": np.array(["x"])}], {}):
            pass


def test_gating_on_estimator_name():
    def cfg(est, **mapo):
        return OmegaConf.create({"algorithm": {"adv_estimator": est, **({"mapo": mapo} if mapo else {})}})

    assert mt.uses_mapo(cfg("mapo_stratified")) and mt.wants_tag_metrics(cfg("mapo_stratified"))
    assert not mt.uses_mapo(cfg("grpo")) and not mt.wants_tag_metrics(cfg("grpo"))
    assert mt.wants_tag_metrics(cfg("grpo", tag_metrics=True)) and not mt.uses_mapo(cfg("grpo", tag_metrics=True))


def test_install_replaces_only_verls_sync_trainer():
    from verl.trainer.ppo.v1 import get_trainer_cls
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    assert issubclass(mt.ModalityTrainerSync, PPOTrainerSync)
    assert get_trainer_cls("sync") is mt.ModalityTrainerSync  # the plugin installed it when verl's module loaded
    assert mt.install() == "trainer/sync"  # idempotent
    assert get_trainer_cls("colocate_async").__name__ == "PPOTrainerColocateAsync"


def test_validation_metrics_per_tag_on_top_of_verls():
    trainer = object.__new__(mt.ModalityTrainerSync)  # only the validation-metrics path, no Ray
    trainer.tag_metrics = True
    trainer._val_uid_tags = {"u1": ("V", "exact"), "u2": ("V", "superset"), "u3": ("AS", "exact")}
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
    trainer._val_uid_tags = {}
    with pytest.raises(KeyError, match="no modality tag recorded"):
        trainer._val_metrics_update(["demo"] * 4, uids, extra, [1, 1, 1, 1])
