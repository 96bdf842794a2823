"""``actor_rollout_ref.rollout.name=hf``: a transformers-``generate`` rollout backend for verl's agent loop.

verl 0.9.1 rolls out only through vLLM, SGLang or TensorRT-LLM servers. This backend serves the same interface from a
plain transformers model, so the real ``main_ppo`` loop runs on a CPU with small models (the tests and the demo use
it); vLLM stays the backend for GPUs. Three pieces, as verl's rollout interface asks (``verl/workers/rollout/base.py`` in verl 0.9.1; docs/cpu.md):

* :class:`~verl_modality.models.hf_generator.HFGenerator`: the generation core (plain class, tested in-process,
  also used by evaluation). It rebuilds the processor's multimodal
  inputs from the expanded prompt ids and the raw media the agent loop sends, samples with temperature / top-p /
  top-k, and returns log-probs of ``log_softmax(logits / temperature)`` as verl's actor computes them, and why the
  response ended: ``stop_reason`` ``"length"`` when it filled the token budget without EOS, else ``"completed"``
  (what verl's rollout client reports for vLLM's ``finish_reason`` ``"length"`` / ``"stop"``).
* :class:`HFServer`: a Ray actor around it, one per replica, named ``hf_server_<replica>``.
* :class:`HFReplica` (the trainer's handle) and :class:`HFServerAdapter` (inside verl's actor worker, where it ships
  the actor's weights to the server after every update).

Sampling is reproducible run to run: each request is seeded from (``rollout.seed``, the weight version, the prompt
ids, a digest of the media, and how many identical requests this weight version has already served on this replica,
and the replica's rank when there are several). The ``n`` identical requests of a prompt group therefore get distinct
samples, also when verl's load balancer spreads them over replicas (world size > 1), and with one replica the group's
set of responses does not depend on the order in which requests arrive.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from typing import Any

import torch

from verl_modality.models.hf_generator import HFGenerator
from verl_modality.models.lora import base_name

logger = logging.getLogger(__name__)

NAME = "hf"


def server_actor_name(replica_rank: int, suffix: str = "") -> str:
    return f"{NAME}_server_{replica_rank}{suffix}"


class HFServer:
    """Ray actor serving one :class:`HFGenerator`; requests run one at a time in a worker thread."""

    def __init__(self, rollout_config: Any, model_config: Any, replica_rank: int = 0):
        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers.config import HFModelConfig

        self.replica_rank = replica_rank
        mc = (
            model_config
            if isinstance(model_config, HFModelConfig)
            else omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        )
        seed = getattr(rollout_config, "seed", None)
        torch.set_num_threads(max(1, int(os.environ.get("VERL_MODALITY_HF_THREADS", "1"))))
        self.generator = HFGenerator(
            mc.local_path,
            prompt_length=rollout_config.prompt_length,
            response_length=rollout_config.response_length,
            seed=0 if seed is None else int(seed),
            processor=mc.processor if getattr(mc.processor, "verl_modality_omni", False) else None,
            replica=replica_rank,
        )
        self._lock = asyncio.Lock()

    async def generate(
        self,
        request_id: str,
        prompt_ids: list[int],
        sampling_params: dict,
        image_data: list | None = None,
        video_data: list | None = None,
        audio_data: list | None = None,
        mm_processor_kwargs: dict | None = None,
        **kwargs: Any,
    ):
        from verl.workers.rollout.replica import TokenOutput

        async with self._lock:
            result = await asyncio.to_thread(
                self.generator.generate,
                list(prompt_ids),
                sampling_params,
                image_data,
                video_data,
                audio_data,
                mm_processor_kwargs,
            )
            version = self.generator.weight_version
        return TokenOutput(
            token_ids=result["token_ids"],
            log_probs=result["log_probs"],
            stop_reason=result["stop_reason"],
            extra_fields={"global_steps": int(version)},
        )

    async def update_weights(
        self, state_dict: dict[str, torch.Tensor], global_steps: int | None = None, peft_config: dict | None = None
    ) -> int:
        """Full weights, or LoRA adapters (``peft_config`` given) merged into the base weights."""
        async with self._lock:
            version = self.generator.weight_version if global_steps is None else int(global_steps)
            if peft_config is not None:
                return self.generator.load_adapter(state_dict, peft_config, version)
            return self.generator.load_weights(state_dict, version)

    async def set_global_steps(self, global_steps: int) -> None:
        self.generator.set_weight_version(global_steps)

    async def weight_checksum(self) -> float:
        """Sum of every parameter (tests and debugging: did an update arrive?)."""
        return float(sum(p.double().sum() for p in self.generator.model.parameters()))

    # Control methods verl calls on every server; nothing to page in or out on a CPU.
    async def wake_up(self, tags: list[str] | None = None) -> None:
        return None

    async def sleep(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def resume_generation(self) -> None:
        return None

    async def wait_for_requests_to_drain(self) -> None:
        async with self._lock:
            return None

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict:
        return {"aborted_count": 0, "request_ids": []}

    async def abort_request(self, request_id: str) -> dict:
        return {"aborted": False, "request_id": request_id}

    async def start_profile(self, **kwargs: Any) -> None:
        return None

    async def stop_profile(self) -> None:
        return None


def _replica_class():
    from verl.workers.rollout.replica import RolloutReplica

    class HFReplica(RolloutReplica):
        """One :class:`HFServer` per replica; no HTTP server, the address is only a load-balancer key."""

        def rollout_worker_use_gpu(self) -> bool:
            return False

        async def launch_servers(self):
            import ray

            check_supported(self.config, self.model_config)
            name = server_actor_name(self.replica_rank, self.name_suffix)
            actor_cls = ray.remote(HFServer)
            server = actor_cls.options(name=name, num_cpus=0, max_concurrency=self.max_concurrency).remote(
                self.config, self.model_config, self.replica_rank
            )
            await server.wake_up.remote()  # waits for the model to load; fails here if it cannot
            self.servers = [server]
            self._server_handle = server
            self._server_address = f"{NAME}://{name}"

    return HFReplica


def check_supported(config: Any, model_config: Any) -> None:
    """Refuse, before any work starts, the settings the hf rollout does not serve: it takes the actor's weights (and
    LoRA adapters) through verl's in-process ``naive`` checkpoint engine only."""

    def get(node: Any, key: str, default: Any = None) -> Any:
        if node is None:
            return default
        return node.get(key, default) if isinstance(node, dict) else getattr(node, key, default)

    backend = get(get(config, "checkpoint_engine"), "backend", "naive") or "naive"
    if backend != "naive":
        raise ValueError(
            f"actor_rollout_ref.rollout.checkpoint_engine.backend={backend!r}: the hf rollout takes the actor's "
            "full weights through the in-process 'naive' engine only"
        )


def sync_payload(
    weights: Iterable, peft_config: dict | None, base_sync_done: bool, keep: bool = True
) -> tuple[dict[str, torch.Tensor], dict | None]:
    """What :class:`HFServer` gets from one of verl's weight syncs: ``(state, peft_config)``, the config only when the
    sync carries LoRA adapters (verl's ``base_sync_done``), and full weights under the served model's names (PEFT's
    ``.base_layer`` removed) otherwise. Every rank drains ``weights`` (``full_tensor()`` is a collective); only the
    rank that ``keep``s copies them."""
    adapters = bool(peft_config) and base_sync_done
    state = {}
    for name, tensor in weights:
        if keep:
            state[name if adapters else base_name(name)] = tensor.detach().to("cpu", copy=True)
    return state, (peft_config if adapters else None)


def _adapter_base():
    from verl.workers.rollout.base import BaseRollout

    return BaseRollout


def make_adapter_class():
    BaseRollout = _adapter_base()

    class HFServerAdapter(BaseRollout):
        """Lives in verl's actor worker: ships the actor's weights to this replica's :class:`HFServer`."""

        def __init__(self, config, model_config, device_mesh, *args: Any, replica_rank: int | None = None, **kwargs):
            check_supported(config, model_config)
            super().__init__(config, model_config, device_mesh)
            world = (
                self.config.tensor_model_parallel_size
                * self.config.data_parallel_size
                * self.config.pipeline_model_parallel_size
            )
            rank = int(os.environ.get("RANK", "0"))
            self.replica_rank = rank // world if replica_rank is None else replica_rank
            self.has_server = rank % world == 0
            self._server = None

        def _get_server(self):
            if self._server is None:
                import ray

                self._server = ray.get_actor(server_actor_name(self.replica_rank))
            return self._server

        async def resume(self, tags: list[str]):
            return None

        async def release(self):
            return None

        async def update_weights(
            self,
            weights: Iterable,
            wire_format: str = "named_tensors",
            peft_config: dict | None = None,
            base_sync_done: bool = False,
            **kwargs: Any,
        ):
            """verl's weight sync. Full weights arrive under the served model's names; with unmerged LoRA, verl first
            sends the base weights (PEFT's ``.base_layer`` names), then at every sync only the adapters
            (``peft_config`` and ``base_sync_done``), which the server merges into the base."""
            if wire_format != "named_tensors":
                raise ValueError(f"hf rollout receives named tensors only, got wire_format={wire_format!r}")
            state, adapter_config = sync_payload(weights, peft_config, base_sync_done, keep=self.has_server)
            if self.has_server:
                import ray

                ref = ray.put(state)
                await self._get_server().update_weights.remote(ref, kwargs.get("global_steps"), adapter_config)

    return HFServerAdapter


def __getattr__(name: str):
    # verl resolves the adapter by dotted path (``_ROLLOUT_REGISTRY``); build it on first access so that importing
    # this module does not import verl's rollout stack.
    if name == "HFServerAdapter":
        cls = make_adapter_class()
        globals()[name] = cls
        return cls
    if name == "HFReplica":
        cls = _replica_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
