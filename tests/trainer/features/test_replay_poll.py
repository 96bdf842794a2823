"""``trainer.v1.sampler.poll_interval``: checked when the trainer is built, set on verl's own replay buffer."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from verl_modality.trainer.features.replay_poll import ReplayPoll


def _config(**sampler):
    return OmegaConf.create({"trainer": {"v1": {"sampler": {"max_off_policy_threshold": 8, **sampler}}}})


def _verl_buffer():
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

    return ReplayBuffer("sync", OmegaConf.create({}), None, "drop", OmegaConf.create({}))


def test_unset_leaves_verls_period():
    feature = ReplayPoll(_config())
    buffer = _verl_buffer()
    feature.apply(buffer)
    assert not feature.enabled and feature.labels == [] and buffer.poll_interval == 2.0


def test_set_reaches_verls_buffer_and_its_wait():
    import time

    feature = ReplayPoll(_config(poll_interval=0.05))
    buffer = _verl_buffer()
    feature.apply(buffer)
    assert buffer.poll_interval == 0.05 and feature.labels == ["replay poll every 0.05 s"]
    start = time.monotonic()
    buffer._wait_for_next_poll("train", time.time())  # verl's own wait now sleeps the set period
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (0, r"trainer.v1.sampler.poll_interval=0: expected a finite number > 0 and <= 60"),
        (-1.0, r"trainer.v1.sampler.poll_interval=-1.0"),
        (120, r"trainer.v1.sampler.poll_interval=120"),
        ("often", r"trainer.v1.sampler.poll_interval='often'"),
    ],
)
def test_bad_values_name_the_option(value, match):
    with pytest.raises(ValueError, match=match):
        ReplayPoll(_config(poll_interval=value))


def test_a_buffer_without_the_attribute_is_refused():
    with pytest.raises(RuntimeError, match="has no poll_interval"):
        ReplayPoll(_config(poll_interval=0.1)).apply(object())


def test_the_registry_check_fails_on_a_verl_that_keeps_it_otherwise():
    from types import SimpleNamespace

    from verl_modality.integrations.verl_trainer import check_poll_interval

    class Buffer:
        def __init__(self):
            self.period = 2.0

        def _wait_for_next_poll(self, partition_id, last):
            return self.period

    with pytest.raises(RuntimeError, match=r"ReplayBuffer.__init__ does not use poll_interval"):
        check_poll_interval(SimpleNamespace(ReplayBuffer=Buffer))
    import verl.trainer.ppo.v1.replay_buffer as verls

    check_poll_interval(verls)  # verl 0.9.1 itself passes
