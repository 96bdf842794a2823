"""The one way the plugin changes another package's attribute: :func:`wrap`, :func:`add` and :func:`register`.

Each is idempotent (a second call changes nothing), marks what it installs with :data:`MARK` (a wrapper also gets
``functools.wraps`` of the original, so ``__wrapped__`` is verl's own function) and records the change, so that
:func:`is_ours` can tell the plugin's object from the original one (``verl-modality doctor`` verifies every entry of
:mod:`verl_modality.integrations.registry` with it). :func:`register` never replaces an entry of a registry silently:
it refuses unless the caller names the entry it replaces.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

#: the attribute that marks an object the plugin installed (wrapper, added method, log filter)
MARK = "__verl_modality__"


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


#: an attribute or registry key that does not exist
ABSENT: Any = _Absent()


@dataclass(frozen=True)
class Change:
    value: Any  # what the plugin put there
    replaced: Any  # what was there before (ABSENT for a new entry)


# (id(owner or mapping), attribute or key) -> the change; owners are modules, classes and module-level registries
_CHANGES: dict[tuple[int, Any], Change] = {}
# (wrapper factory, original) -> wrapper: by-name copies of one function get the same wrapper object
_WRAPPERS: dict[tuple[Callable, Any], Any] = {}


def _record(owner: Any, key: Any, value: Any, replaced: Any) -> None:
    _CHANGES[(id(owner), key)] = Change(value, replaced)


def change_of(owner: Any, key: Any) -> Change | None:
    """What the plugin put at ``owner``'s ``key`` (attribute or registry key) in this process, or None."""
    return _CHANGES.get((id(owner), key))


def is_marked(value: Any) -> bool:
    """``value`` is an object the plugin made (a list holding one counts: a logger's filters)."""
    if isinstance(value, list | tuple):
        return any(is_marked(v) for v in value)
    return bool(getattr(value, MARK, False))


def same(a: Any, b: Any) -> bool:
    """Identity, or equality for plain data (a registry may hold a string or a dict the plugin built)."""
    return a is b or (type(a) is type(b) and isinstance(a, str | dict | tuple) and a == b)


def is_ours(owner: Any, key: Any, value: Any) -> bool:
    """``value`` (now at ``owner``'s ``key``) is what the plugin installed there."""
    change = change_of(owner, key)
    return is_marked(value) or (change is not None and same(change.value, value))


def wrap(owner: Any, name: str, make: Callable[[Any], Any]) -> Any:
    """Replace ``owner.name`` (a module or class attribute) by ``make(original)``, once.

    The wrapper gets ``functools.wraps(original)`` and :data:`MARK`; wrapping the same original with the same
    ``make`` again (a module that imported the function by name) gives the same wrapper. Returns the wrapper.
    """
    current = getattr(owner, name)
    if is_marked(current):
        return current
    wrapper = _WRAPPERS.get((make, current))
    if wrapper is None:
        wrapper = make(current)
        # a class's __dict__ (CPUOffloadPolicy) is not a function's attributes
        updated = () if isinstance(current, type) else functools.WRAPPER_UPDATES
        functools.update_wrapper(wrapper, current, updated=updated)
        setattr(wrapper, MARK, True)
        _WRAPPERS[(make, current)] = wrapper
    setattr(owner, name, wrapper)
    _record(owner, name, wrapper, current)
    return wrapper


def add(owner: Any, name: str, value: Any) -> Any:
    """Give ``owner`` the new attribute ``name`` (marked); refuses to replace one it already has."""
    current = getattr(owner, name, ABSENT)
    if current is value:
        return value
    if current is not ABSENT:
        raise RuntimeError(f"{owner!r} already has {name!r} ({current!r}); the plugin adds it only where it is new")
    setattr(value, MARK, True)
    setattr(owner, name, value)
    _record(owner, name, value, ABSENT)
    return value


def register(
    mapping: MutableMapping,
    key: Any,
    value: Any,
    *,
    replaces: Any = ABSENT,
    add: Callable[[], Any] | None = None,
) -> Any:
    """Put ``value`` under ``key`` in a registry ``mapping``, once.

    A key that holds something else is refused, unless that is exactly ``replaces`` (a replacement the registry
    entry declares); a declared replacement whose original is missing is refused too. ``add`` makes the entry
    through the registry's own function instead of ``mapping[key] = value``.
    """
    current = mapping.get(key, ABSENT)
    if same(current, value):
        if change_of(mapping, key) is None:
            _record(mapping, key, value, ABSENT)
        return value
    if current is not ABSENT and current is not replaces:
        raise RuntimeError(
            f"{key!r} is already registered as {current!r}; the plugin refuses to replace it"
            + (f" (it replaces only {replaces!r})" if replaces is not ABSENT else "")
        )
    if replaces is not ABSENT and current is ABSENT:
        raise RuntimeError(f"{key!r}: the plugin replaces {replaces!r} there, which this version does not register")
    if add is None:
        mapping[key] = value
    else:
        add()
    if not same(mapping.get(key, ABSENT), value):
        raise RuntimeError(f"{key!r}: the registry's own function did not register {value!r}")
    _record(mapping, key, value, current)
    return value
