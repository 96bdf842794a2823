"""The transformers generation core of the ``hf`` rollout and of evaluation: :class:`HFGenerator`.

It rebuilds the processor's multimodal inputs from the expanded prompt ids and the raw media, samples with
temperature / top-p / top-k, and returns log-probs of ``log_softmax(logits / temperature)`` as verl's actor computes
them. Each request is seeded from (the base seed, the weight version, the prompt ids, a digest of the media, and how
many identical requests this weight version has served), so the samples of a prompt group are distinct and do not
depend on the order requests arrive in. :mod:`verl_modality.rollout.hf_rollout` serves it to verl.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
import torch

from verl_modality.models.family import family_of

logger = logging.getLogger(__name__)

#: verl's ``TokenOutput.stop_reason`` for each vLLM ``finish_reason``: verl's vLLM server reports both as
#: "completed", and its rollout client turns a response that used the whole ``max_tokens`` into "length"
#: (``verl/workers/rollout/llm_server.py``); our budget can be below ``max_tokens`` (the prompt + response cap), so the
#: generator says "length" itself.
STOP_REASONS = {"stop": "completed", "length": "length"}


def finish_reason_of(tokens: list[int], eos_token_ids: list[int], budget: int) -> str:
    """vLLM's ``finish_reason`` of a response: ``"length"`` when it filled the ``budget`` of new tokens without
    ending in EOS, else ``"stop"`` (EOS, or another stopping rule of the model's generation config)."""
    ended = bool(tokens) and tokens[-1] in eos_token_ids
    return "length" if not ended and len(tokens) >= budget else "stop"


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
        model_path: local checkpoint directory (a full Omni checkpoint loads its thinker).
        prompt_length, response_length: verl's ``rollout.prompt_length`` / ``response_length`` (the token budget).
        seed: base seed of the request seeding.
        replica: which of several generators serving one run this is (verl's rollout replica rank); mixed into the
            request seeds, so that the ``n`` requests of one prompt group spread over replicas stay distinct.
    """

    def __init__(
        self,
        model_path: str,
        prompt_length: int,
        response_length: int,
        seed: int = 0,
        processor=None,
        replica: int = 0,
    ):
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        from verl_modality.models.omni import is_omni_config, load_omni_processor, never_sample_token_ids

        self.model_path = str(model_path)
        self.prompt_length = int(prompt_length)
        self.response_length = int(response_length)
        self.seed = int(seed)
        self.replica = int(replica)
        config = AutoConfig.from_pretrained(self.model_path)
        self.is_omni = is_omni_config(config)
        if self.is_omni:
            from verl_modality.models.omni import load_thinker

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
        #: base weights of the modules LoRA adapters were merged into (:meth:`load_adapter`)
        self._lora_base: dict[str, torch.Tensor] = {}
        self._served: dict[bytes, int] = {}

    # ------------------------------------------------------------------------------------------------- weights
    def set_weight_version(self, version: int) -> None:
        version = int(version)
        if version != self.weight_version:
            self._served.clear()
        self.weight_version = version

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> int:
        """Load the actor's full state dict (its keys are the served model's, MoE experts possibly split one by one as
        verl's FSDP engine sends them); every key must match exactly."""
        received = len(state_dict)
        family = family_of(self.model.config)
        if family is not None:
            state_dict = family.module_weights(state_dict)
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        # Tied or non-persistent buffers may be absent from the actor's export; parameters may not.
        params = {name for name, _ in self.model.named_parameters()}
        missing = [k for k in missing if k in params]
        if missing or unexpected:
            raise ValueError(
                f"hf rollout: actor weights do not match the served model ({self.model.__class__.__name__}): "
                f"missing {missing[:8]} ({len(missing)}), unexpected {unexpected[:8]} ({len(unexpected)})"
            )
        self._lora_base = {}  # new base weights: adapters now apply to these
        self.set_weight_version(version)
        return received

    def load_adapter(self, tensors: dict[str, torch.Tensor], peft_config: dict, version: int) -> int:
        """Serve LoRA adapters (PEFT names, as verl sends them after the base weights): every adapted module's weight
        becomes ``W + s * B @ A`` (:func:`~verl_modality.models.lora.merged_weights`), ``W`` the base weight it had
        before the first adapter arrived. Returns the number of adapted modules."""
        from verl_modality.models.lora import adapter_pairs, merged_weights

        params = dict(self.model.named_parameters())
        modules = adapter_pairs(tensors)
        missing = [f"{m}.weight" for m in modules if f"{m}.weight" not in params]
        if missing:
            raise ValueError(f"hf rollout: LoRA adapters for modules the served model does not have: {missing[:8]}")
        for module in modules:
            key = f"{module}.weight"
            if key not in self._lora_base:
                self._lora_base[key] = params[key].detach().clone()
        merged = merged_weights(self._lora_base, tensors, peft_config)
        with torch.no_grad():
            for key, weight in merged.items():
                params[key].copy_(weight)
        self.set_weight_version(version)
        return len(merged)

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

        from verl_modality.models.omni import collapse_placeholders

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
        # each replica counts its own occurrences: without its rank, two replicas serving requests of one group would
        # give them the same seeds (replica 0 keeps the one-replica seeds)
        base = f"{self.seed}/" if self.replica == 0 else f"{self.seed}/replica{self.replica}/"
        mixed = hashlib.sha1(f"{base}{self.weight_version}/{occurrence}/".encode() + key).digest()
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
        """One response: ``{"token_ids", "log_probs", "finish_reason", "stop_reason"}`` (eos included when generated).

        ``finish_reason`` is vLLM's: ``"stop"`` (ended with EOS) or ``"length"`` (the token budget ran out first).
        ``stop_reason`` is what verl's rollout client reports for it (``workers/rollout/llm_server.py``):
        ``"completed"`` or ``"length"``.
        """
        params = dict(sampling_params or {})
        temperature = float(params.get("temperature", 1.0))
        top_p = float(params.get("top_p", 1.0))
        top_k = int(params.get("top_k", -1) or -1)
        greedy = temperature <= 0.0
        inputs = self.model_inputs(prompt_ids, image_data, video_data, audio_data, mm_processor_kwargs)
        seed = self.request_seed(prompt_ids, _media_digest(image_data, video_data, audio_data))
        budget = self.max_new_tokens(len(prompt_ids), params)
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": budget,
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
        finish_reason = finish_reason_of(tokens, self.eos_token_ids, budget)
        return {
            "token_ids": tokens,
            "log_probs": log_probs,
            "finish_reason": finish_reason,
            "stop_reason": STOP_REASONS[finish_reason],
        }
