"""``actor_rollout_ref.rollout.name=hf``: a transformers-``generate`` rollout backend for verl's agent loop.

verl 0.9.1 rolls out only through vLLM, SGLang or TensorRT-LLM servers. This backend serves the same interface from a
plain transformers model, so the real ``main_ppo`` loop runs on a CPU with small models (the tests and the demo use
it); vLLM stays the backend for GPUs. Three pieces, as verl's rollout interface asks (``notes/cpu_full_loop.md`` §2):

* :class:`HFGenerator`: the generation core (plain class, tested in-process). It rebuilds the processor's multimodal
  inputs from the expanded prompt ids and the raw media the agent loop sends, samples with temperature / top-p /
  top-k, and returns log-probs of ``log_softmax(logits / temperature)`` as verl's actor computes them.
* :class:`HFServer`: a Ray actor around it, one per replica, named ``hf_server_<replica>``.
* :class:`HFReplica` (the trainer's handle) and :class:`HFServerAdapter` (inside verl's actor worker, where it ships
  the actor's weights to the server after every update).

Sampling is reproducible run to run: each request is seeded from (``rollout.seed``, the weight version, the prompt
ids, a digest of the media, and how many identical requests this weight version has already served). The ``n``
identical requests of a prompt group therefore get distinct samples, and the group's set of responses does not
depend on the order in which requests arrive.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

NAME = "hf"


def server_actor_name(replica_rank: int, suffix: str = "") -> str:
    return f"{NAME}_server_{replica_rank}{suffix}"


def _media_digest(*groups: Any) -> bytes:
    """A digest of the media payload (arrays, tensors, tuples of them, PIL images), for request seeding."""
    h = hashlib.sha1()

    def feed(x: Any) -> None:
        if x is None:
            h.update(b"none")
        elif isinstance(x, torch.Tensor):
            h.update(x.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(x, np.ndarray):
            h.update(np.ascontiguousarray(x).tobytes())
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for item in x:
                feed(item)
            h.update(b"]")
        elif isinstance(x, dict):
            for key in sorted(x):
                h.update(str(key).encode())
                feed(x[key])
        elif hasattr(x, "tobytes"):  # PIL images
            h.update(x.tobytes())
        else:
            h.update(repr(x).encode())

    for group in groups:
        feed(group)
    return h.digest()


class HFGenerator:
    """Generation with a transformers model, in verl's token-in / token-out form.

    Args:
        model_path: local checkpoint directory (a full Qwen2.5-Omni checkpoint loads its thinker).
        prompt_length, response_length: verl's ``rollout.prompt_length`` / ``response_length`` (the token budget).
        seed: base seed of the request seeding.
    """

    def __init__(self, model_path: str, prompt_length: int, response_length: int, seed: int = 0, processor=None):
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        from verl_modality.models.qwen2_5_omni import is_omni_config, load_omni_processor, never_sample_token_ids

        self.model_path = str(model_path)
        self.prompt_length = int(prompt_length)
        self.response_length = int(response_length)
        self.seed = int(seed)
        config = AutoConfig.from_pretrained(self.model_path)
        self.is_omni = is_omni_config(config)
        if self.is_omni:
            from verl_modality.models.tiny import load_thinker

            self.model = load_thinker(self.model_path)
            self.processor = processor or load_omni_processor(self.model_path, config=config)
            self.tokenizer = self.processor.tokenizer
            self.placeholder_ids = [
                self.processor.audio_token_id,
                self.processor.image_token_id,
                self.processor.video_token_id,
            ]
            self.suppress_ids = never_sample_token_ids(self.processor)
        else:
            from transformers import AutoModelForCausalLM

            self.model = AutoModelForCausalLM.from_pretrained(
                self.model_path, dtype=torch.float32, attn_implementation="sdpa"
            )
            self.processor = processor
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            self.placeholder_ids = []
            self.suppress_ids = []
        self.model.eval()
        try:
            gen = GenerationConfig.from_pretrained(self.model_path)
            eos = gen.eos_token_id
        except OSError:
            eos = None
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_token_ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else self.eos_token_ids[0])
        self.weight_version = 0
        self._served: dict[bytes, int] = {}

    # ------------------------------------------------------------------------------------------------- weights
    def set_weight_version(self, version: int) -> None:
        version = int(version)
        if version != self.weight_version:
            self._served.clear()
        self.weight_version = version

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> int:
        """Load the actor's full state dict (its keys are the served model's); every key must match exactly."""
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        # Tied or non-persistent buffers may be absent from the actor's export; parameters may not.
        params = {name for name, _ in self.model.named_parameters()}
        missing = [k for k in missing if k in params]
        if missing or unexpected:
            raise ValueError(
                f"hf rollout: actor weights do not match the served model ({self.model.__class__.__name__}): "
                f"missing {missing[:8]} ({len(missing)}), unexpected {unexpected[:8]} ({len(unexpected)})"
            )
        self.set_weight_version(version)
        return len(state_dict)

    # ---------------------------------------------------------------------------------------------- multimodal
    def model_inputs(
        self,
        prompt_ids: list[int],
        images: list | None = None,
        videos: list | None = None,
        audios: list | None = None,
        mm_processor_kwargs: dict | None = None,
    ) -> dict[str, torch.Tensor]:
        """``input_ids`` (1, P), ``attention_mask`` and the processor's media features for an expanded prompt."""
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
        inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if not (images or videos or audios):
            return inputs
        if self.processor is None:
            raise ValueError("hf rollout: a multimodal request reached a model without a processor")
        from verl.utils.tokenizer import build_multimodal_processor_inputs

        from verl_modality.models.qwen2_5_omni import collapse_placeholders

        collapsed = collapse_placeholders(prompt_ids, self.placeholder_ids)
        text = self.tokenizer.decode(collapsed, skip_special_tokens=False)
        out = build_multimodal_processor_inputs(
            self.processor,
            text=[text],
            images=list(images) if images else None,
            videos=list(videos) if videos else None,
            audio=list(audios) if audios else None,
            mm_processor_kwargs=mm_processor_kwargs or None,
        )
        rebuilt = out.pop("input_ids")[0].tolist()
        out.pop("attention_mask", None)
        if rebuilt != list(prompt_ids):
            raise ValueError(
                f"hf rollout: re-processing the prompt with its media gave {len(rebuilt)} tokens, the agent loop sent "
                f"{len(prompt_ids)}; placeholder expansion differs (check media decoding and mm_processor_kwargs)"
            )
        features = dict(out.convert_to_tensors("pt")) if hasattr(out, "convert_to_tensors") else dict(out)
        for key, value in features.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                features[key] = value.to(self.model.dtype)
        inputs.update(features)
        return inputs

    # ---------------------------------------------------------------------------------------------- generation
    def request_seed(self, prompt_ids: list[int], media: bytes) -> int:
        key = hashlib.sha1(np.asarray(prompt_ids, dtype=np.int64).tobytes() + media).digest()
        occurrence = self._served.get(key, 0)
        self._served[key] = occurrence + 1
        mixed = hashlib.sha1(f"{self.seed}/{self.weight_version}/{occurrence}/".encode() + key).digest()
        return int.from_bytes(mixed[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF

    def max_new_tokens(self, prompt_len: int, sampling_params: dict) -> int:
        budget = min(self.response_length, self.prompt_length + self.response_length - prompt_len)
        if sampling_params.get("max_tokens") is not None:
            budget = min(budget, int(sampling_params["max_tokens"]))
        if budget < 1:
            raise ValueError(
                f"hf rollout: prompt of {prompt_len} tokens leaves no room for a response "
                f"(prompt_length {self.prompt_length}, response_length {self.response_length})"
            )
        return budget

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict | None = None,
        image_data: list | None = None,
        video_data: list | None = None,
        audio_data: list | None = None,
        mm_processor_kwargs: dict | None = None,
    ) -> dict[str, Any]:
        """One response: ``{"token_ids", "log_probs", "stop_reason"}`` (eos included when generated)."""
        params = dict(sampling_params or {})
        temperature = float(params.get("temperature", 1.0))
        top_p = float(params.get("top_p", 1.0))
        top_k = int(params.get("top_k", -1) or -1)
        greedy = temperature <= 0.0
        inputs = self.model_inputs(prompt_ids, image_data, video_data, audio_data, mm_processor_kwargs)
        seed = self.request_seed(prompt_ids, _media_digest(image_data, video_data, audio_data))
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens(len(prompt_ids), params),
            "do_sample": not greedy,
            "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.pad_token_id,
            "output_logits": True,
            "return_dict_in_generate": True,
            "repetition_penalty": float(params.get("repetition_penalty", 1.0) or 1.0),
        }
        if not greedy:
            gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k if top_k > 0 else None)
        else:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        if self.suppress_ids:
            gen_kwargs["suppress_tokens"] = self.suppress_ids
        if self.is_omni:
            gen_kwargs["use_audio_in_video"] = False
        torch.manual_seed(seed)
        out = self.model.generate(**inputs, **gen_kwargs)
        prompt_len = inputs["input_ids"].shape[1]
        tokens = out.sequences[0, prompt_len:].tolist()
        if tokens and any(t in self.eos_token_ids for t in tokens):
            tokens = tokens[: next(i for i, t in enumerate(tokens) if t in self.eos_token_ids) + 1]
        scale = temperature if not greedy else 1.0
        log_probs = [
            float(torch.log_softmax(step_logits[0].float() / scale, dim=-1)[tok])
            for step_logits, tok in zip(out.logits, tokens, strict=False)
        ]
        return {"token_ids": tokens, "log_probs": log_probs, "stop_reason": "completed"}


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

    async def update_weights(self, state_dict: dict[str, torch.Tensor], global_steps: int | None = None) -> int:
        async with self._lock:
            version = self.generator.weight_version if global_steps is None else int(global_steps)
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
    """Refuse, before any work starts, the settings the hf rollout does not serve: it loads full weights from the
    actor through verl's in-process ``naive`` checkpoint engine, and has no LoRA adapters."""

    def get(node: Any, key: str, default: Any = None) -> Any:
        if node is None:
            return default
        return node.get(key, default) if isinstance(node, dict) else getattr(node, key, default)

    lora = get(model_config, "lora", {}) or {}
    if int(get(model_config, "lora_rank", 0) or 0) > 0 or int(get(lora, "rank", 0) or 0) > 0:
        raise ValueError(
            "actor_rollout_ref.rollout.name=hf does not serve LoRA adapters: set actor_rollout_ref.model.lora_rank=0 "
            "(and model.lora.rank=0), or use the vllm rollout"
        )
    if get(model_config, "lora_adapter_path"):
        raise ValueError("actor_rollout_ref.rollout.name=hf does not load actor_rollout_ref.model.lora_adapter_path")
    backend = get(get(config, "checkpoint_engine"), "backend", "naive") or "naive"
    if backend != "naive":
        raise ValueError(
            f"actor_rollout_ref.rollout.checkpoint_engine.backend={backend!r}: the hf rollout takes the actor's "
            "full weights through the in-process 'naive' engine only"
        )


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

        async def update_weights(self, weights: Iterable, wire_format: str = "named_tensors", **kwargs: Any):
            if wire_format != "named_tensors" or kwargs.get("peft_config"):  # excluded by check_supported at start-up
                raise ValueError(f"hf rollout receives full named tensors only, got {wire_format!r} / LoRA")
            state = {}
            for name, tensor in weights:  # every rank drains it: full_tensor() is a collective
                if self.has_server:
                    state[name] = tensor.detach().to("cpu", copy=True)
            if self.has_server:
                import ray

                ref = ray.put(state)
                await self._get_server().update_weights.remote(ref, kwargs.get("global_steps"))

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


def register() -> list[str]:
    """Register ``rollout.name=hf`` with verl (when verl's rollout registries are imported)."""
    from verl_modality.models.import_hooks import when_imported

    def _replicas(module) -> None:
        module.RolloutReplicaRegistry.register(NAME, lambda: __getattr__("HFReplica"))

    def _adapters(module) -> None:
        module._ROLLOUT_REGISTRY[(NAME, "async")] = f"{__name__}.HFServerAdapter"

    when_imported("verl.workers.rollout.replica", _replicas)
    when_imported("verl.workers.rollout.base", _adapters)
    return [f"{NAME} (replica + async adapter)"]
