"""verl-modality's entry point (``verl.plugins`` group): it walks the integration registry, and does nothing else.

verl imports this module in every process that imports verl (driver, TaskRunner, Ray workers) and swallows any
exception at DEBUG level. So a failure here is logged at ERROR level, printed to stderr and kept in :data:`LOAD_ERRORS`,
and ``verl-modality doctor`` re-checks every entry of :data:`verl_modality.integrations.registry.INTEGRATIONS`.
"""

from __future__ import annotations

import logging
import sys
import traceback

logger = logging.getLogger("verl_modality")

#: What this process hooked, by group (read by ``verl-modality doctor`` and the tests).
REGISTERED: dict[str, list[str]] = {}
#: Tracebacks of failed registrations in this process; empty when the plugin loaded cleanly.
LOAD_ERRORS: list[str] = []


def _register() -> None:
    from verl_modality.integrations import registry

    hooked = registry.install()
    for group in registry.GROUPS:
        REGISTERED[group] = [item.line for item in hooked if item.group == group]


try:
    _register()
except Exception:
    LOAD_ERRORS.append(traceback.format_exc())
    msg = "verl-modality failed to load into verl; its algorithms and models are NOT available:\n" + LOAD_ERRORS[-1]
    logger.error(msg)
    print(msg, file=sys.stderr, flush=True)
    # Not re-raised: verl would swallow it and Python would drop this module, losing LOAD_ERRORS for the doctor.
    # An entry that fails later, when its target is imported, is reported the same way by the registry.
