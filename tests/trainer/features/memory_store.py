"""TransferQueue's key-value calls (``kv_batch_get`` / ``kv_batch_put`` / ``kv_clear`` / ``kv_list``) over a dict, for
the trainer features' tests: 1-D tensor fields come back as jagged nested tensors (as TransferQueue returns them), other
values as object arrays; an unknown field raises ``KeyError``. Tags are kept per key, as ``kv_list`` reports them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transfer_queue import KVBatchMeta


def _rows(value: Any, n: int) -> list:
    if isinstance(value, torch.Tensor):
        return list(value.unbind()) if value.is_nested else list(value.unbind(0))
    if hasattr(value, "tolist"):
        return list(value.tolist())
    return list(value)


class MemoryStore:
    def __init__(self):
        self.partitions: dict[str, dict[str, dict[str, Any]]] = {}
        self.tags: dict[str, dict[str, dict]] = {}
        self.calls: list[tuple[str, str]] = []

    def add(self, partition: str, rows: list[dict[str, Any]], tags: list[dict] | None = None) -> KVBatchMeta:
        """Rows (field -> value) under keys ``<group>_<index>`` (groups of consecutive rows sharing ``group``)."""
        keys = [f"{row.pop('group', 'g')}_{i}" for i, row in enumerate(rows)]
        part = self.partitions.setdefault(partition, {})
        for key, row in zip(keys, rows, strict=True):
            part[key] = dict(row)
        if tags is not None:
            self.tag(partition, keys, tags)
        return KVBatchMeta(keys=keys, tags=tags or [{} for _ in keys], partition_id=partition)

    def tag(self, partition: str, keys: list[str], tags: list[dict]) -> None:
        """Set the tags of ``keys`` (a prompt's tag: ``{"is_prompt": True, "status": ..., "global_steps": ...}``)."""
        self.tags.setdefault(partition, {}).update({k: dict(t) for k, t in zip(keys, tags, strict=True)})

    def kv_list(self, partition_id=None) -> dict[str, dict[str, dict]]:
        parts = self.tags if partition_id is None else {partition_id: self.tags.get(partition_id, {})}
        return {p: {k: dict(t) for k, t in items.items()} for p, items in parts.items()}

    def kv_batch_put(self, keys, partition_id, fields=None, tags=None, data_parser=None) -> KVBatchMeta:
        self.calls.append(("put", partition_id))
        if tags is not None:
            self.tag(partition_id, keys, tags)
        part = self.partitions.setdefault(partition_id, {})
        names = list(fields.keys()) if fields is not None else []
        for name in names:
            for key, value in zip(keys, _rows(fields[name], len(keys)), strict=True):
                part.setdefault(key, {})[name] = value
        known = sorted(set().union(*(part[k].keys() for k in keys)))
        return KVBatchMeta(keys=list(keys), tags=tags or [{} for _ in keys], partition_id=partition_id, fields=known)

    def kv_batch_get(self, keys, partition_id, select_fields=None) -> dict[str, Any]:
        self.calls.append(("get", partition_id))
        part = self.partitions[partition_id]
        out = {}
        for name in select_fields:
            values = [part[k][name] for k in keys]  # KeyError: an unknown field
            if all(isinstance(v, torch.Tensor) and v.dim() == 1 for v in values):
                out[name] = torch.nested.as_nested_tensor(values, layout=torch.jagged)
            else:
                arr = np.empty(len(values), dtype=object)
                arr[:] = values
                out[name] = arr
        return out

    def kv_clear(self, keys, partition_id) -> None:
        self.calls.append(("clear", partition_id))
        part = self.partitions.get(partition_id, {})
        for k in keys:
            part.pop(k, None)
            self.tags.get(partition_id, {}).pop(k, None)
