"""``trainer.v1.sampler.poll_interval``: how often verl's sync replay buffer looks for a step's finished trajectories.

verl 0.9.1's ``ReplayBuffer`` sleeps a fixed 2 s between looks while the trainer waits for the step's rollouts
(``_wait_for_next_poll``), and has no option for it, so a step's ``timing_s/gen`` is a multiple of 2 s. Where
generation takes well under that (the tiny CPU models: 4, 6 or 8 s measured for under 2 s of generation) the wait is
most of the step. Set, this option sets the buffer's ``poll_interval`` when the trainer builds it; unset, verl's 2 s
stays. The buffer attribute it sets is a ``read`` entry of the integration registry, checked when verl's replay
buffer is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from verl_modality import options
from verl_modality.options import option

SECTION = "trainer.v1.sampler"


@dataclass(frozen=True)
class ReplayPollConfig:
    """The one plugin option under verl's ``trainer.v1.sampler`` (a key verl 0.9.1 does not have)."""

    poll_interval: float | None = option(None, gt=0, le=60, help="seconds between the sync buffer's looks (verl: 2)")

    def __post_init__(self) -> None:
        options.validate(self, SECTION)
        if self.poll_interval is not None and not math.isfinite(self.poll_interval):
            raise ValueError(f"{SECTION}.poll_interval={self.poll_interval}: expected a finite number > 0 and <= 60")

    @classmethod
    def from_config(cls, config: Any) -> ReplayPollConfig:
        from omegaconf import OmegaConf

        return cls(poll_interval=OmegaConf.select(config, f"{SECTION}.poll_interval", default=None))


class ReplayPoll:
    """Sets the replay buffer's poll period when ``trainer.v1.sampler.poll_interval`` is given; else does nothing."""

    def __init__(self, config: Any):
        self.config = ReplayPollConfig.from_config(config)
        self.enabled = self.config.poll_interval is not None
        self.labels = [f"replay poll every {self.config.poll_interval:g} s"] if self.enabled else []

    def apply(self, buffer: Any) -> None:
        if self.enabled:
            from verl_modality.integrations.verl_trainer import set_poll_interval

            set_poll_interval(buffer, self.config.poll_interval)
