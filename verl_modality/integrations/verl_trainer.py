"""Changes to ``verl.trainer.ppo.v1``: a hook on the replay buffer's zero-variance group filter.

verl's sync replay buffer classifies each finished prompt group (``ReplayBuffer._dapo_filtered_keys``) as it polls
TransferQueue, before the trainer sees the step. A buffer that carries :data:`HOOK` (set by the trainer's group
filter feature, :mod:`verl_modality.trainer.features.group_filter`, when failed rewards must be neutralised first)
has the hook run around that classification; every other buffer goes straight to verl's method.
"""

from __future__ import annotations

import functools

#: the buffer attribute holding ``hook(partition_id, classify) -> (filtered uids, metric-value counts)``
HOOK = "verl_modality_group_filter_hook"


def patch_replay_buffer(module) -> None:
    """``ReplayBuffer._dapo_filtered_keys`` runs the buffer's :data:`HOOK` when it has one."""
    cls = module.ReplayBuffer
    original = cls._dapo_filtered_keys
    if getattr(original, "__verl_modality__", False):
        return

    @functools.wraps(original)
    def _dapo_filtered_keys(self, partition_id):
        hook = getattr(self, HOOK, None)
        if hook is None:
            return original(self, partition_id)
        return hook(partition_id, lambda: original(self, partition_id))

    _dapo_filtered_keys.__verl_modality__ = True
    cls._dapo_filtered_keys = _dapo_filtered_keys
