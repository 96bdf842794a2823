"""Small helpers shared by tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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


def actor_weights(step_dir: Path) -> dict[str, torch.Tensor]:
    """The actor's weights in a verl checkpoint folder ``global_step_N`` (one rank), as full tensors."""
    import torch

    (path,) = (step_dir / "actor").glob("model_world_size_1_rank_0.pt")
    state = torch.load(path, map_location="cpu", weights_only=False)
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in state.items()}


def initial_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """The thinker's weights of a full Omni checkpoint, under the actor's (unprefixed) names."""
    from safetensors.torch import load_file

    out = {}
    for f in model_dir.glob("*.safetensors"):
        for k, v in load_file(f).items():
            if k.startswith("thinker."):
                out[k[len("thinker.") :]] = v
    return out


def assert_streams_shown(m: dict, tags: set[str], exact: bool) -> None:
    """The rollout's prompt ids held audio / video tokens exactly for the tags that require them (``exact``), or for
    every tag (``full``, every demo record has all streams)."""
    for tag in tags:
        assert m[f"streams/{tag}/prompt_tokens"] > 0
        assert (m[f"streams/{tag}/audio_tokens"] > 0) == ("A" in tag or not exact), (tag, m)
        assert (m[f"streams/{tag}/video_tokens"] > 0) == ("V" in tag or not exact), (tag, m)
