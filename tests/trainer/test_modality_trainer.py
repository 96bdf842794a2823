"""The trainer's own layer, without Ray: the registry swap, and verl's hooks handed to the features (each feature has
its own tests under tests/trainer/features/)."""

import numpy as np
import pytest

from verl_modality.trainer import modality_trainer as mt
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

    own = {k for k, v in vars(mt.ModalityTrainerSync).items() if callable(v) and k.startswith("_") and k != "__init__"}
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
