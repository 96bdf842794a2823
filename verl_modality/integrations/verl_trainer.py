"""Changes to ``verl.trainer.ppo.v1``: a hook on the replay buffer's zero-variance group filter, and the buffer state
that hook reads.

verl's sync replay buffer classifies each finished prompt group (``ReplayBuffer._dapo_filtered_keys``) as it polls
TransferQueue, before the trainer sees the step. A buffer that carries :data:`HOOK` (set by the trainer's group
filter feature, :mod:`verl_modality.trainer.features.group_filter`, when failed rewards must be neutralised first)
has the hook run around that classification; every other buffer goes straight to verl's method. The hook reads
:data:`STATE` of the buffer, private to verl (declared as a ``read`` entry of the registry):
:func:`check_replay_buffer_state` checks verl's class when it is imported, :func:`require_state` the trainer's buffer
at start-up, and :func:`groups_to_classify` is the one place that reads it.
"""

from __future__ import annotations

from typing import Any

from verl_modality.integrations.patching import wrap

#: the buffer attribute holding ``hook(partition_id, classify) -> (filtered uids, metric-value counts)``
HOOK = "verl_modality_group_filter_hook"
#: verl's private ``ReplayBuffer`` state the hook reads, with the type of its value per partition
STATE = {"finished_keys": set, "_dapo_classification_cache": dict, "partitions": dict}


def patch_replay_buffer(module) -> None:
    """``ReplayBuffer._dapo_filtered_keys`` runs the buffer's :data:`HOOK` when it has one."""
    wrap(module.ReplayBuffer, "_dapo_filtered_keys", hooked_filter)


def hooked_filter(original):
    def _dapo_filtered_keys(self, partition_id):
        hook = getattr(self, HOOK, None)
        if hook is None:
            return original(self, partition_id)
        return hook(partition_id, lambda: original(self, partition_id))

    return _dapo_filtered_keys


def _verl_version() -> str:
    import importlib.metadata as md

    try:
        return md.version("verl")
    except md.PackageNotFoundError:
        return "unknown"


def _differs(what: str) -> RuntimeError:
    return RuntimeError(
        f"verl {_verl_version()}: {what}; verl-modality's group-filter hook (algorithm.filter_groups with failed-reward "
        "marking) reads this private state of verl 0.9.1's ReplayBuffer and cannot run on this verl"
    )


def check_replay_buffer_state(module) -> None:
    """verl's ``ReplayBuffer.__init__`` still sets every attribute of :data:`STATE`."""
    init = module.ReplayBuffer.__init__
    names = getattr(getattr(init, "__code__", None), "co_names", ())
    missing = [name for name in STATE if name not in names]
    if missing:
        raise _differs(f"verl.trainer.ppo.v1.replay_buffer.ReplayBuffer sets no {', '.join(missing)}")


def require_state(buffer: Any) -> None:
    """The trainer's buffer keeps :data:`STATE` as verl 0.9.1 does (``defaultdict`` partition -> set / dict); raises
    naming the attribute and verl's version otherwise."""
    for name, kind in STATE.items():
        value = getattr(buffer, name, None)
        if not isinstance(value, dict) or getattr(value, "default_factory", None) is not kind:
            found = "missing" if value is None else repr(type(value).__name__)
            raise _differs(f"ReplayBuffer.{name} is {found}, not a defaultdict of partition -> {kind.__name__}")


def check_poll_interval(module) -> None:
    """verl's ``ReplayBuffer`` still keeps its sync sampling poll period in ``poll_interval``: set by ``__init__``,
    slept by ``_wait_for_next_poll``."""
    for name in ("__init__", "_wait_for_next_poll"):
        method = getattr(module.ReplayBuffer, name, None)
        if "poll_interval" not in getattr(getattr(method, "__code__", None), "co_names", ()):
            raise RuntimeError(
                f"verl {_verl_version()}: ReplayBuffer.{name} does not use poll_interval; "
                "trainer.v1.sampler.poll_interval (verl-modality) cannot be applied on this verl"
            )


def set_poll_interval(buffer: Any, seconds: float) -> None:
    """Set verl's replay buffer's poll period (``trainer.v1.sampler.poll_interval``)."""
    if not isinstance(getattr(buffer, "poll_interval", None), int | float):
        raise RuntimeError(
            f"trainer.v1.sampler.poll_interval: the replay buffer {type(buffer).__name__} has no poll_interval "
            f"(verl {_verl_version()}); remove the option for this verl or this custom sampler"
        )
    buffer.poll_interval = float(seconds)


def groups_to_classify(buffer: Any, partition_id: str, group_of) -> list[str]:
    """Trajectory keys of the finished groups of ``partition_id`` that verl's filter has not classified yet
    (``group_of``: trajectory keys -> their prompt uids)."""
    new = buffer.finished_keys[partition_id] - buffer._dapo_classification_cache[partition_id].keys()
    stored = list(buffer.partitions[partition_id])
    return [key for key, uid in zip(stored, group_of(stored), strict=True) if uid in new]
