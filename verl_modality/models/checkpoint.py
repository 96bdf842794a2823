"""A thinker trained by verl (sharded FSDP checkpoint) written back into a full Omni checkpoint directory.

verl's trainers save the trained module's state dict (``model_world_size_<W>_rank_<r>.pt``, DTensor shards); the
module is the thinker, so its names carry no ``thinker.`` prefix. The full checkpoint the plugin loads (hub layout:
``thinker.*``, ``talker.*``, ``token2wav.*``, tokenizer, processor) is rebuilt by copying the base checkpoint and
replacing every ``thinker.*`` tensor; a base tensor without a trained counterpart (or the reverse) is an error.

A LoRA run's checkpoint holds the PEFT model's state dict (``base_model.model.*``, ``...q_proj.base_layer.weight``
and ``...q_proj.lora_A.default.weight``), or with verl's ``checkpoint.save_lora_only`` the adapter entries alone,
and verl writes ``lora_train_meta.json`` (``r``, ``lora_alpha``) beside the shards: :func:`trained_thinker_state`
merges the adapters (``W + lora_alpha / r * B @ A``, :mod:`verl_modality.models.lora`) into the run's base weights or,
for adapters alone, into the base checkpoint's thinker, so the export writes plain weights under the plain names.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

THINKER_PREFIX = "thinker."
#: what verl writes beside a LoRA run's shards: ``{"r", "lora_alpha", "task_type"}``
LORA_META = "lora_train_meta.json"


@contextmanager
def assembled_dir(out: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``out``; moved into place (replacing ``out``) when the block ends cleanly and
    removed when it raises, so ``out`` is never left half written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def actor_folder(step_dir: str | os.PathLike) -> Path:
    """The folder holding the actor's shards: ``step_dir`` itself, or its ``actor`` subfolder (a ``global_step_N``)."""
    step = Path(step_dir)
    if not step.is_dir():
        raise FileNotFoundError(f"{step}: no such checkpoint folder")
    if not any(step.glob("model_world_size_*_rank_*.pt")) and (step / "actor").is_dir():
        return step / "actor"
    return step


def checkpoint_world_size(step_dir: str | os.PathLike) -> int:
    """The world size a verl FSDP checkpoint folder was saved at (from its ``model_world_size_<W>_rank_<r>.pt``)."""
    step = Path(step_dir)
    sizes = {int(p.name.split("_")[3]) for p in step.glob("model_world_size_*_rank_*.pt")}
    if not sizes:
        raise FileNotFoundError(f"{step}: no model_world_size_*_rank_*.pt (not a verl FSDP checkpoint folder)")
    if len(sizes) != 1:
        raise ValueError(f"{step}: shards of several world sizes {sorted(sizes)}; keep one run's checkpoint per folder")
    return sizes.pop()


def load_sharded_state(step_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The full state dict of a verl FSDP checkpoint folder (``global_step_N`` or its ``actor``), any world size,
    gathered on the CPU without a process group: each rank's DTensor shard is its local piece of the full tensor
    (``Shard(d)``: concatenated along ``d`` in rank order; ``Replicate``: rank 0's copy).

    Raises with the folder named when the shards are missing, or their world size and count disagree.
    """
    step = Path(step_dir)
    world = checkpoint_world_size(step)
    files = [step / f"model_world_size_{world}_rank_{r}.pt" for r in range(world)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{step}: world size {world} but {', '.join(missing)} missing")
    # torch warns that the shards' device mesh was unpickled before any process group existed: none is needed here
    mesh_log = logging.getLogger("torch.distributed.device_mesh")
    level = mesh_log.level
    mesh_log.setLevel(logging.ERROR)
    try:
        states = [torch.load(f, map_location="cpu", weights_only=False) for f in files]
    finally:
        mesh_log.setLevel(level)
    return {key: _gathered(key, [state[key] for state in states]).detach().clone() for key in states[0]}


@dataclass(frozen=True)
class MergedLora:
    """The adapters :func:`trained_thinker_state` merged: how many modules, at which rank and alpha, and whether the
    checkpoint held them alone (merged into the base checkpoint's thinker)."""

    modules: int
    r: int
    lora_alpha: float
    adapter_only: bool


def lora_train_meta(step_dir: str | os.PathLike) -> dict:
    """``lora_train_meta.json`` of a LoRA run's actor folder; its absence is an error naming the file."""
    path = Path(step_dir) / LORA_META
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing; a LoRA checkpoint needs verl's r and lora_alpha to merge its adapters"
        )
    meta = json.loads(path.read_text())
    if not isinstance(meta, dict) or "r" not in meta:
        raise ValueError(f"{path}: expected an object with r and lora_alpha, got {meta!r}")
    return meta


def trained_thinker_state(
    step_dir: str | os.PathLike, base_dir: str | os.PathLike
) -> tuple[dict[str, torch.Tensor], MergedLora | None]:
    """The thinker state dict (plain names) of a verl actor checkpoint folder, and what LoRA it merged (None: none).

    A PEFT model's state (every name under ``base_model.model.``) has its adapters merged with the scale of
    ``lora_train_meta.json``; one of adapter entries only (verl's ``save_lora_only``, the entries its filter keeps)
    is merged into ``base_dir``'s thinker weights, the weights the run started from.
    """
    from verl_modality.models.lora import (
        adapter_pairs,
        is_adapter_name,
        is_peft_state,
        merge_peft_state,
        merged_weights,
    )

    state = load_sharded_state(step_dir)
    if not is_peft_state(state):
        return state, None
    meta = lora_train_meta(step_dir)
    adapter_only = all("lora_" in name or ".adapter_" in name for name in state)
    if adapter_only:
        from verl_modality.models.omni import load_thinker

        # the stored dtype: the weights no adapter touches are written back unchanged
        base = dict(load_thinker(base_dir, torch_dtype="auto").state_dict())
        merged = {**base, **merged_weights(base, state, meta)}
    else:
        merged = merge_peft_state(state, meta)
    modules = len(adapter_pairs({name: t for name, t in state.items() if is_adapter_name(name)}))
    return merged, MergedLora(modules, int(meta["r"]), float(meta.get("lora_alpha", meta["r"])), adapter_only)


def _gathered(key: str, pieces: list) -> torch.Tensor:
    first = pieces[0]
    if not hasattr(first, "placements"):  # a plain tensor: every rank holds all of it
        return first
    if len(pieces) == 1:
        return first.full_tensor()
    placement = first.placements[0]
    if placement.is_replicate():
        return first.to_local()
    if not placement.is_shard() or len(first.placements) != 1:
        raise ValueError(f"{key}: placements {first.placements} (expected one Shard or Replicate, as FSDP saves)")
    return torch.cat([p.to_local() for p in pieces], dim=placement.dim)


def _weight_files(base: Path) -> list[Path]:
    index = base / "model.safetensors.index.json"
    if index.is_file():
        return sorted({base / f for f in json.loads(index.read_text())["weight_map"].values()})
    single = base / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"{base}: no model.safetensors or model.safetensors.index.json")
    return [single]


def export_thinker(
    base_dir: str | os.PathLike, thinker_state: dict[str, torch.Tensor], out_dir: str | os.PathLike
) -> Path:
    """Write ``out_dir``: ``base_dir`` with its ``thinker.*`` weights replaced by ``thinker_state`` (thinker names).

    ``thinker_state`` holds plain weights (a LoRA run's merged by :func:`trained_thinker_state`). The base
    checkpoint's family names the trained tensors as its hub layout has them
    (:meth:`~verl_modality.models.family.OmniFamily.checkpoint_weights`: ``thinker.`` prefix, MoE experts one by
    one). Shapes and dtypes must match the base; the directory is assembled beside ``out_dir`` and moved into place.
    """
    from safetensors.torch import load_file, save_file

    from verl_modality.models.family import require_family
    from verl_modality.models.omni import load_config

    base, out = Path(base_dir), Path(out_dir)
    family = require_family(load_config(base), base)
    remaining = dict(family.checkpoint_weights(thinker_state.items()))
    with assembled_dir(out) as tmp:
        weight_files = _weight_files(base)
        for item in base.iterdir():
            if item not in weight_files and item.is_file():
                shutil.copy2(item, tmp / item.name)
        for path in weight_files:
            tensors = load_file(str(path))
            for name in list(tensors):
                if not name.startswith(THINKER_PREFIX):
                    continue
                if name not in remaining:
                    key = name[len(THINKER_PREFIX) :]
                    raise KeyError(f"{base}: weight {name} has no trained counterpart {key!r}")
                new = remaining.pop(name)
                if new.shape != tensors[name].shape:
                    raise ValueError(f"{name}: trained shape {tuple(new.shape)} != base {tuple(tensors[name].shape)}")
                tensors[name] = new.to(tensors[name].dtype).contiguous()
            save_file(tensors, str(tmp / path.name), metadata={"format": "pt"})
        if remaining:
            names = sorted(name.removeprefix(THINKER_PREFIX) for name in remaining)
            raise KeyError(f"trained weights not in {base}: {names[:5]}")
    return out
