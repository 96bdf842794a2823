"""verl-modality's entry point (``verl.plugins`` group): every registration into verl happens here.

verl imports this module in every process that imports verl (driver, TaskRunner, Ray workers) and swallows any
exception at DEBUG level. So a failure here is logged at ERROR level, printed to stderr and kept in :data:`LOAD_ERRORS`,
and ``verl-modality doctor`` re-checks every registration listed in :data:`REGISTERED`.
"""

from __future__ import annotations

import logging
import sys
import traceback

logger = logging.getLogger("verl_modality")

#: What this process registered, by kind (read by ``verl-modality doctor``).
REGISTERED: dict[str, list[str]] = {"platforms": [], "engines": [], "patches": []}
#: Tracebacks of failed registrations in this process; empty when the plugin loaded cleanly.
LOAD_ERRORS: list[str] = []


def _register() -> None:
    from verl_modality.platform import cpu

    cpu.register_platform()
    REGISTERED["platforms"].append(cpu.PLATFORM_NAME)
    if cpu.is_selected():  # VERL_PLATFORM=cpu: the CPU-only pieces, never on a GPU run
        cpu.activate()
        REGISTERED["engines"].extend(
            f"{m}/{b}@cpu" for m in ("language_model", "value_model") for b in ("fsdp", "fsdp2")
        )

    from verl_modality.models import qwen2_5_omni

    REGISTERED["patches"].extend(qwen2_5_omni.apply_patches())


try:
    _register()
except Exception:
    LOAD_ERRORS.append(traceback.format_exc())
    msg = "verl-modality failed to load into verl; its algorithms and models are NOT available:\n" + LOAD_ERRORS[-1]
    logger.error(msg)
    print(msg, file=sys.stderr, flush=True)
    # Not re-raised: verl would swallow it and Python would drop this module, losing LOAD_ERRORS for the doctor.
