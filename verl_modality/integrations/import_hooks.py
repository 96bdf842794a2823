"""Run a patch function right after a module is imported, without importing it ourselves.

Some verl modules import vLLM at the top, so the plugin cannot import them on a machine without vLLM; the patches
they need are applied when (and only when) something else imports them.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType

_PENDING: dict[str, list[Callable[[ModuleType], None]]] = {}


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _PENDING:
            return None
        # Ask the other finders for the real spec, then wrap its loader.
        for finder in sys.meta_path:
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PostImportLoader(spec.loader)
                return spec
        return None


class _PostImportLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _run_hooks(module)


_FINDER = _PostImportFinder()


def _run_hooks(module: ModuleType) -> None:
    for fn in _PENDING.pop(module.__name__, []):
        fn(module)


def when_imported(module_name: str, fn: Callable[[ModuleType], None]) -> None:
    """Call ``fn(module)`` once ``module_name`` is imported (at once if it already is)."""
    if module_name in sys.modules:
        fn(sys.modules[module_name])
        return
    _PENDING.setdefault(module_name, []).append(fn)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
