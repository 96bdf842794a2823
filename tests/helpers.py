"""Small helpers shared by tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_python(code: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (own verl import, own platform choice); raises with its stderr on failure."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    for key, value in list(full_env.items()):
        if value is None:
            full_env.pop(key)
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_json(code: str, env: dict[str, str] | None = None, timeout: int = 300):
    """Run ``code`` that prints one JSON document on its last stdout line; return it parsed."""
    out = run_python(code, env=env, timeout=timeout).stdout.strip().splitlines()
    return json.loads(out[-1])
