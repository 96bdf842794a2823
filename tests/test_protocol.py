"""verl_modality.protocol: every key that crosses sides is one constant, used by the modules it names, and never
spelled out elsewhere; docs/sample_route.md names only functions that exist."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from verl_modality import protocol

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "verl_modality"

CONSTANTS = {n: v for n, v in vars(protocol).items() if n.isupper() and not n.startswith("_") and isinstance(v, str)}

#: values only the protocol gives meaning to: no other string literal anywhere in the package may equal them
DISTINCT = {
    "MAPO_AT",
    "MAPO_RELEVANCE",
    "MAPO_RELEVANCE_WEIGHT_SUM",
    "MAPO_DH",
    "MAPO_ATTN_CONTENT",
    "MAPO_ATTN_REWARD",
    "MAPO_ATTN_ADV",
    "RELEVANCE_WEIGHTS",
    "RM_SCORES",
    "EXTRA_FIELDS",
    "REWARD_EXTRA_INFO",
    "IS_PADDING",
    "INFO_TASK",
    "INFO_NONE_INDEX",
    "INFO_ANSWER_TEXT",
    "INFO_REFERENCE_CAPTIONS",
    "INFO_RESPONSE_TOKENS",
    "DEFICIT_RESPONSE",
    "DEFICIT_STREAMS",
    "DEFICIT_SKIP_REASON",
    "MEDIA_SAMPLE_ID",
    "REWARD_JUDGE_FAILED",
}
#: (module path, value): the same word in another namespace
ALLOWED = {
    ("algorithms/config.py", "mapo_at"),  # the config node algorithm.mapo_at
    ("algorithms/relevance.py", "mapo_relevance"),  # LOSS_MODE: the policy-loss name in verl's registry
    ("integrations/registry.py", "mapo_relevance"),  # the registry entry of that loss
    ("doctor.py", "mapo_relevance"),  # the loss, as `doctor` lists it
    ("evaluation/results.py", "response_tokens"),  # fields of the evaluation record format (its own schema)
    ("evaluation/scoring.py", "response_tokens"),
    ("evaluation/scoring.py", "judge_failed"),
    ("data/converters/maple_bench.py", "sample_id"),  # a source benchmark's id field
}
#: route modules (trainer, worker, rollout, reward entry points): no literal equal to any protocol value, except
#: the words listed with them
ROUTE = ("trainer/features", "integrations/verl_workers.py", "rollout", "rewards/reward_manager.py", "rewards/score.py")
ROUTE_ALLOWED = {("rollout/deficit_agent_loop.py", "blank")}  # the ablation (vocabulary.ABLATIONS)


def _literals(path: Path) -> list[tuple[int, str]]:
    """String literals of a module that are not docstrings (f-string parts included)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "protocol.py")


def test_values_are_the_wire_names():
    # checkpoints, TransferQueue fields and verl's keys depend on these exact strings
    assert protocol.MAPO_AT == "mapo_at" and protocol.MAPO_RELEVANCE == "mapo_relevance"
    assert protocol.RELEVANCE_WEIGHTS == "rollout_is_weights" and protocol.UID == "uid"
    assert protocol.INFO_TASK == "sample_task" and protocol.REWARD_JUDGE_FAILED == "judge_failed"
    assert len(set(CONSTANTS.values())) == len(CONSTANTS), "two constants share one value"


def test_no_bare_protocol_strings_in_the_package():
    distinct = {CONSTANTS[name]: name for name in DISTINCT}
    found = []
    for path in _modules():
        rel = path.relative_to(PACKAGE).as_posix()
        for line, value in _literals(path):
            if value in distinct and (rel, value) not in ALLOWED:
                found.append(f"{rel}:{line}: {value!r} (use protocol.{distinct[value]})")
    assert not found, "\n".join(found)


def test_no_bare_protocol_strings_on_the_route():
    values = {v: k for k, v in CONSTANTS.items()}
    found = []
    for path in _modules():
        rel = path.relative_to(PACKAGE).as_posix()
        if not rel.startswith(ROUTE):
            continue
        for line, value in _literals(path):
            if value in values and (rel, value) not in ROUTE_ALLOWED:
                found.append(f"{rel}:{line}: {value!r} (use protocol.{values[value]})")
    assert not found, "\n".join(found)


def test_every_constant_is_used_on_the_sides_it_names():
    assert set(protocol.SIDES) == set(CONSTANTS), "every constant names its writers and readers, and only those"
    missing = []
    for name, (writers, readers) in protocol.SIDES.items():
        assert writers and readers, name
        for module in {*writers, *readers} - {"verl"}:
            source = Path(importlib.util.find_spec(module).origin).read_text()
            if not re.search(rf"\bprotocol\.{name}\b", source):
                missing.append(f"{module} does not use protocol.{name}")
    assert not missing, "\n".join(missing)


def test_verl_workers_keeps_no_copy_of_the_fields():
    from verl_modality.integrations import verl_workers

    for old in ("KNOB", "RELEVANCE_KNOB", "WEIGHT_SUM", "FIELDS"):
        assert not hasattr(verl_workers, old)


DOC = ROOT / "docs" / "sample_route.md"
CITED = re.compile(r"`(verl_modality(?:\.\w+)+):(\w+(?:\.\w+)*)`")


def test_sample_route_cites_only_functions_that_exist():
    text = DOC.read_text()
    cited = CITED.findall(text)
    assert len(cited) >= 15, "the route names each function on the way"
    for module, qualname in cited:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
            assert obj is not None, f"docs/sample_route.md cites {module}:{qualname}, which does not exist"


@pytest.mark.parametrize("name", sorted(CONSTANTS))
def test_sample_route_names_every_field(name):
    assert f"protocol.{name}" in DOC.read_text(), f"docs/sample_route.md does not say where protocol.{name} travels"
