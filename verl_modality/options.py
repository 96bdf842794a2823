"""The one option loader: typed, frozen dataclasses describe each config section; this module reads and checks them.

A section's dataclass declares each option's type (``bool``, ``int``, ``float``, ``str``, ``Path``, ``X | None``,
``tuple[T, ...]``, ``dict[K, V]``, ``Any``) and, with :func:`option`, its allowed values (``choices``, bounds,
``nonempty``, ``distinct``). :func:`load` turns a mapping (a dict or an OmegaConf node) into the dataclass, refusing
unknown keys; the dataclass's ``__post_init__`` calls :func:`validate`, so direct construction is checked the same
way. Every message names the option in full, ``<section>.<name>=<value>: expected ...``, before any conversion can
fail on it. Values come out as plain Python (numpy scalars become ``int`` / ``float``, lists become tuples).

Command lines are built from the same dataclasses: :func:`add_arguments` adds one ``--flag`` per field (type,
default, choices, help), :func:`from_arguments` builds the dataclass from the parsed flags, and :func:`parse_pairs`
reads ``key=value`` items, so no default or choice is written twice. There a message names what the user typed
(``--steps 0: expected ...``, ``--warm-start max_steps='abc': ...``, :func:`flags_named`), not the dataclass path;
values read from a config file keep their full name.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: ``option(REQUIRED, ...)``: a field the caller must give (a required ``--flag`` on the command line).
REQUIRED: Any = dataclasses.MISSING

#: the section each dataclass last named its options under in :func:`validate` (``DemoConfig`` -> ``demo``)
_SECTIONS: dict[type, str] = {}


def option(
    default: Any,
    *,
    choices: tuple | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    nonempty: bool = False,
    distinct: bool = False,
    help: str | None = None,
    metavar: str | None = None,
    flag: str | None = None,
) -> Any:
    """A dataclass field with its allowed values (checked by :func:`validate`) and, for a command line built by
    :func:`add_arguments`, its help text, metavar and flag (default ``--<name>``). ``default=REQUIRED`` makes a field
    without a default."""
    rules = {"choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "nonempty": nonempty, "distinct": distinct}
    metadata = {"rules": rules, "help": help, "metavar": metavar, "flag": flag}
    if default is REQUIRED:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def plain(values: Any) -> Any:
    """An OmegaConf node as plain containers (resolved); anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf ships with verl
        return values
    if isinstance(values, DictConfig | ListConfig):
        return OmegaConf.to_container(values, resolve=True)
    return values


def load(cls: type, values: Any, section: str) -> Any:
    """``cls(**values)`` after refusing unknown keys; ``None`` gives the defaults."""
    values = plain(values)
    if values is None:
        return cls()
    if not isinstance(values, Mapping):
        raise ValueError(f"{section} must be a mapping of options, got {type(values).__name__}: {values!r}")
    refuse_unknown(cls, values, section)
    return cls(**{str(k): v for k, v in values.items()})


def refuse_unknown(cls: type, values: Mapping[str, Any], section: str) -> None:
    """Raise ``ValueError`` naming the keys of ``values`` that are not fields of ``cls``, and the known ones."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in values if k not in known)
    if unknown:
        raise ValueError(f"unknown option(s) {section}.{unknown}: known options are {sorted(known)}")


def validate(instance: Any, section: str) -> None:
    """Check every field of a (frozen) dataclass instance against its type and rules; store plain-Python values."""
    _SECTIONS[type(instance)] = section
    hints = typing.get_type_hints(type(instance))
    for f in dataclasses.fields(instance):
        name = f"{section}.{f.name}"
        value = check(name, getattr(instance, f.name), hints[f.name], f.metadata.get("rules", {}))
        object.__setattr__(instance, f.name, value)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _bounds(rules: Mapping[str, Any]) -> str:
    parts = []
    for key, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if rules.get(key) is not None:
            parts.append(f"{sign} {rules[key]:g}")
    return " and ".join(parts)


def _in_bounds(value: float, rules: Mapping[str, Any]) -> bool:
    ge, gt, le, lt = (rules.get(k) for k in ("ge", "gt", "le", "lt"))
    return (
        (ge is None or value >= ge)
        and (gt is None or value > gt)
        and (le is None or value <= le)
        and (lt is None or value < lt)
    )


def _plural(kind: Any) -> str:
    return {bool: "true / false values", int: "integers", float: "numbers", str: "strings"}.get(kind, str(kind))


def check(name: str, value: Any, kind: Any, rules: Mapping[str, Any] | None = None) -> Any:
    """``value`` checked against the type ``kind`` and ``rules``; raises ``ValueError`` naming ``name``."""
    rules = rules or {}
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None and len(inner) < len(args):
            return None
        if len(inner) == 1:
            try:
                return check(name, value, inner[0], rules)
            except ValueError as err:
                raise ValueError(f"{err} or null") from None
        raise TypeError(f"{name}: unsupported option type {kind}")
    if origin is dict:
        value = plain(value)
        if not isinstance(value, Mapping):
            raise ValueError(f"{name}={value!r}: expected a mapping")
        out = {check(f"{name} key", k, args[0]): check(f"{name}.{k}", v, args[1]) for k, v in value.items()}
    elif origin is tuple:
        value = plain(value)
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name}={value!r}: expected a list of {_plural(args[0])}")
        items = tuple(check(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value))
        if rules.get("nonempty") and not items:
            raise ValueError(f"{name}={value!r}: expected a non-empty list")
        if rules.get("distinct") and len(set(items)) != len(items):
            raise ValueError(f"{name}={value!r}: expected distinct values")
        out: Any = items
    elif kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name}={value!r}: expected true or false")
        out = value
    elif kind is int:
        bounds = _bounds(rules)
        if not _is_int(value) or not _in_bounds(value, rules):
            raise ValueError(f"{name}={value!r}: expected an integer{' ' + bounds if bounds else ''}")
        out = int(value)
    elif kind is float:
        bounds = _bounds(rules)
        if not _is_real(value) or not _in_bounds(value, rules):
            raise ValueError(f"{name}={value!r}: expected a finite number{' ' + bounds if bounds else ''}")
        out = float(value)
    elif kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{name}={value!r}: expected a string")
        out = value
    elif kind is Path:
        if not isinstance(value, str | os.PathLike) or not os.fspath(value):
            raise ValueError(f"{name}={value!r}: expected a path")
        out = Path(value)
    else:
        raise TypeError(f"{name}: unsupported option type {kind}")
    choices = rules.get("choices")
    if choices is not None and out not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {tuple(choices)}")
    return out


# ------------------------------------------------------------------------------------------------ command lines


def _cli_flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _typed_flag(f: dataclasses.Field) -> str:
    """The flag :func:`add_arguments` gives the field: ``--<name>``, or ``--no-<name>`` for a bool that is true."""
    flag = _cli_flag(f)
    return "--no-" + flag[2:] if f.default is True else flag


def _renamed(message: str, names: Mapping[str, str]) -> str:
    """``message`` with each full option name of ``names`` (``demo.steps``) replaced by its flag (``--steps``),
    ``demo.steps=0`` read ``--steps 0``; no ``or null``, as a flag cannot be null (leaving it out is)."""
    renamed = 0
    for name, flag in names.items():
        pattern = rf"(?<![\w.]){re.escape(name)}(?![\w\[]|\.\w)(=?)"
        message, n = re.subn(pattern, lambda m, flag=flag: flag + (" " if m.group(1) else ""), message)
        renamed += n
    return message.removesuffix(" or null") if renamed else message


@contextmanager
def flags_named(cls: type, args: Any, skip: Iterable[str] = ()) -> Iterator[None]:
    """Inside: a ``ValueError`` that names an option of the dataclass ``cls`` given by a flag of the argparse
    namespace ``args`` (``demo.steps=0``) names the flag as typed instead (``--steps 0``), the rest of the message
    and the error's type kept. Fields in ``skip`` (values not from a flag: a file, an override) keep their names."""
    try:
        yield
    except ValueError as err:
        section = _SECTIONS.get(cls)
        if section is None or len(err.args) != 1 or not isinstance(err.args[0], str):
            raise
        skipped = set(skip)
        fields = [f for f in dataclasses.fields(cls) if hasattr(args, f.name) and f.name not in skipped]
        err.args = (_renamed(err.args[0], {f"{section}.{f.name}": _typed_flag(f) for f in fields}),)
        raise


def add_arguments(parser: Any, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per field of the dataclass ``cls`` (``work_dir`` -> ``--work-dir``) on an argparse parser, its
    type, default, choices, help and metavar taken from the field, so a command line never restates them. A bool
    field defaulting to true becomes ``--no-<name>``; a field without a default is a required flag. Values given on
    the command line are checked when :func:`from_arguments` builds the dataclass."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        rules = f.metadata.get("rules", {})
        kwargs: dict[str, Any] = {"dest": f.name, "help": f.metadata.get("help")}
        flag = _typed_flag(f)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if kind is bool:
            if f.default is True:
                kwargs["help"] = f"turn off: {kwargs['help']}" if kwargs["help"] else None
            kwargs["action"] = "store_false" if f.default is True else "store_true"
        else:
            if kind not in (int, float, str, Path):
                raise TypeError(f"{cls.__name__}.{f.name}: no command-line form for {kind}")
            kwargs["type"] = str if kind is Path else kind
            if required:
                kwargs["required"] = True
            else:
                kwargs["default"] = f.default
            if rules.get("choices") is not None:
                kwargs["choices"] = rules["choices"]
            if f.metadata.get("metavar"):
                kwargs["metavar"] = f.metadata["metavar"]
        parser.add_argument(flag, **kwargs)


def from_arguments(cls: type, args: Any, **overrides: Any) -> Any:
    """The dataclass ``cls`` from an argparse namespace filled by :func:`add_arguments` (fields it lacks keep their
    defaults), ``overrides`` replacing values. A bad value from a flag is named by the flag (:func:`flags_named`)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    with flags_named(cls, args, skip=overrides):
        return cls(**{**values, **overrides})


def _from_text(raw: str, kind: Any) -> Any:
    """A command-line value as the type ``kind`` asks for; left as text when it is not one (the check names it)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        if raw.lower() in ("null", "none"):
            return None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if typing.get_origin(kind) is tuple:
        return [_from_text(v, typing.get_args(kind)[0]) for v in raw.split(",") if v]
    if kind is bool:
        return {"true": True, "false": False}.get(raw.lower(), raw)
    if kind is Path:
        return Path(raw)
    for convert in (int, float):
        if kind is convert:
            try:
                return convert(raw)
            except ValueError:
                return raw
    return raw


def parse_pairs(cls: type, items: Any, section: str, flag: str | None = None) -> Any:
    """``["key=value", ...]`` into the dataclass ``cls`` (whose options are named ``section``): each value read as its
    field's type (``600``, ``1e-3``, ``true``, ``null``, a comma-separated list), then checked like any loaded option.
    With ``flag``, the command line's (``--warm-start``), messages name the items as typed: ``--warm-start
    max_steps='abc': ...`` for ``warm_start.max_steps='abc': ...``."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    try:
        for item in items:
            key, sep, raw = str(item).partition("=")
            if not sep:
                raise ValueError(f"{section} {item!r}: expected key=value")
            refuse_unknown(cls, {key: None}, section)
            values[key] = _from_text(raw, hints[key])
        return load(cls, values, section)
    except ValueError as err:
        if flag is None or len(err.args) != 1 or not isinstance(err.args[0], str):
            raise
        err.args = (re.sub(rf"(?<![\w.]){re.escape(section)}(?:\.| )", f"{flag} ", err.args[0]),)
        raise
