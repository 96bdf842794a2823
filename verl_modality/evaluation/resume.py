"""Resuming ``verl-modality eval``: the run's settings kept next to its results, and the records already written.

The settings a run must share with the one that wrote the file (:data:`IDENTITY_KEYS`) are kept in
``RESULTS.jsonl.config.json``. Started again with the same output, a run skips the ``(id, sample)`` records already
written, drops a half-written last line with a warning, and refuses different settings unless told to overwrite.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from verl_modality.evaluation.config import EvalConfig, EvalConfigError

logger = logging.getLogger(__name__)

CONFIG_SUFFIX = ".config.json"
#: settings a resumed run must share with the run that wrote the file (``limit`` may grow or shrink)
IDENTITY_KEYS = (
    "model",
    "data",
    "media_root",
    "k",
    "policy",
    "ablation",
    "view_seed",
    "temperature",
    "top_p",
    "top_k",
    "max_prompt_length",
    "max_response_length",
    "seed",
    "benchmark",
    "benchmark_version",
    "rule",
    "backend",
    "judge",
)


def identity(cfg: EvalConfig, backend: str, policy: str, benchmark: Any, judge: dict | None) -> dict[str, Any]:
    """The settings of :data:`IDENTITY_KEYS` as the run uses them (paths resolved, the judge config as a digest)."""
    judge_digest = None
    if judge is not None:
        judge_digest = hashlib.sha256(json.dumps(judge, sort_keys=True, default=str).encode()).hexdigest()[:16]
    values = {
        **asdict(cfg),
        "model": str(Path(cfg.model).resolve()),
        "data": str(Path(cfg.data).resolve()),
        "media_root": str(Path(cfg.media_root).resolve()) if cfg.media_root else None,
        "policy": policy,
        "benchmark": getattr(benchmark, "name", None),
        "benchmark_version": getattr(benchmark, "version", None),
        "backend": backend,
        "judge": judge_digest,
    }
    return {k: values[k] for k in IDENTITY_KEYS}


def check_identity(out: Path, sidecar: Path, identity: dict[str, Any]) -> None:
    """Refuse to resume ``out`` when its settings file ``sidecar`` is missing, unreadable or holds other settings."""
    if not sidecar.exists():
        raise EvalConfigError(
            f"{out} exists but has no settings file {sidecar.name} (not written by verl-modality eval?); "
            "pass --overwrite to replace it, or choose another --out"
        )
    try:
        stored = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise EvalConfigError(f"{sidecar}: unreadable settings file ({err}); pass --overwrite to start over") from None
    diffs = [f"{k}: was {stored.get(k)!r}, now {identity[k]!r}" for k in IDENTITY_KEYS if stored.get(k) != identity[k]]
    if diffs:
        raise EvalConfigError(
            f"{out} was written with different settings; refusing to mix results:\n  "
            + "\n  ".join(diffs)
            + "\npass --overwrite to replace it, or choose another --out"
        )


def read_done(out: Path, known_ids: set[str]) -> tuple[set[tuple[str, int]], bool]:
    """``(id, sample)`` pairs already in ``out``, and whether a half-written last line was cut off (the file is
    truncated to its last complete line). Any other unreadable line is an error naming ``file:line``."""
    from verl_modality.jsonl_log import complete_lines

    lines, dropped_bytes = complete_lines(out)
    dropped = dropped_bytes > 0
    if dropped:
        logger.warning(
            "%s: dropped a half-written last line (%d bytes); its query is generated again", out, dropped_bytes
        )
    done: set[tuple[str, int]] = set()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            key = (str(obj["id"]), int(obj["sample"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise EvalConfigError(
                f"{out}:{lineno}: not a result record ({err}); pass --overwrite to start over"
            ) from None
        if key[0] not in known_ids:
            raise EvalConfigError(f"{out}:{lineno}: id {key[0]!r} is not a row of the data; pass --overwrite")
        if key in done:
            raise EvalConfigError(f"{out}:{lineno}: id {key[0]!r} sample {key[1]} is written twice")
        done.add(key)
    return done, dropped
