"""Resuming a results file: the records already written, a cut last line, and the settings file it must match."""

from __future__ import annotations

import json

import pytest

from verl_modality.evaluation.config import EvalConfig, EvalConfigError
from verl_modality.evaluation.resume import CONFIG_SUFFIX, IDENTITY_KEYS, check_identity, identity, read_done


def _write(path, *lines: str) -> None:
    path.write_text("".join(lines), encoding="utf-8")


def test_read_done_keeps_complete_lines_and_cuts_a_half_written_one(tmp_path):
    out = tmp_path / "r.jsonl"
    _write(out, '{"id": "a", "sample": 0}\n', "\n", '{"id": "a", "sample": 1}\n', '{"id": "b", "sam')
    done, dropped = read_done(out, {"a", "b"})
    assert done == {("a", 0), ("a", 1)} and dropped
    assert out.read_text(encoding="utf-8").endswith('"sample": 1}\n')  # truncated to its last complete line
    assert read_done(out, {"a", "b"}) == (done, False)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"id": "a"}\n', r"r.jsonl:2: not a result record"),
        ('{"id": "z", "sample": 0}\n', r"r.jsonl:2: id 'z' is not a row of the data"),
        ('{"id": "a", "sample": 0}\n', r"r.jsonl:2: id 'a' sample 0 is written twice"),
    ],
)
def test_read_done_names_the_bad_line(tmp_path, line, message):
    out = tmp_path / "r.jsonl"
    _write(out, '{"id": "a", "sample": 0}\n', line)
    with pytest.raises(EvalConfigError, match=message):
        read_done(out, {"a"})


def test_identity_and_its_check(tmp_path):
    cfg = EvalConfig(str(tmp_path / "m"), str(tmp_path / "d.parquet"), str(tmp_path / "r.jsonl"), limit=3)
    ident = identity(cfg, "hf", "exact", None, {"model": "grader"})
    assert tuple(ident) == IDENTITY_KEYS and "limit" not in ident  # limit may change between runs
    assert ident["judge"] != identity(cfg, "hf", "exact", None, {"model": "other"})["judge"]
    out, sidecar = tmp_path / "r.jsonl", tmp_path / ("r.jsonl" + CONFIG_SUFFIX)
    with pytest.raises(EvalConfigError, match="has no settings file r.jsonl.config.json"):
        check_identity(out, sidecar, ident)
    sidecar.write_text(json.dumps(ident), encoding="utf-8")
    check_identity(out, sidecar, ident)
    with pytest.raises(EvalConfigError, match="backend: was 'hf', now 'vllm'"):
        check_identity(out, sidecar, {**ident, "backend": "vllm"})
    sidecar.write_text("{", encoding="utf-8")
    with pytest.raises(EvalConfigError, match="unreadable settings file"):
        check_identity(out, sidecar, ident)
