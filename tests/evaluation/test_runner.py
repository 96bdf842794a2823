"""``verl-modality eval`` on the tiny Qwen2.5-Omni thinker and a small demo test set: records, scoring, modality
policies, resuming and refused settings; captions with and without a judge."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from verl_modality import vocabulary
from verl_modality.data import prompts, schema, validate
from verl_modality.data.modality_view import ModalityView, apply_view
from verl_modality.evaluation.backends import HFBackend
from verl_modality.evaluation.config import EvalConfig, EvalConfigError, resolve_backend
from verl_modality.evaluation.results import FIELDS, parse_record
from verl_modality.evaluation.runner import load_rows, run_eval
from verl_modality.rewards.choice import choice_score, extract_choice

K, LIMIT, MAX_RESPONSE = 2, 3, 8


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from verl_modality.data.synthetic import make_demo_data

    out = tmp_path_factory.mktemp("eval_demo")
    make_demo_data(out, seed=0, n_train=1, n_test=7, progress=False)
    return out / "test.parquet"


@pytest.fixture(scope="module")
def backend(tiny_model_dir, demo):
    return HFBackend(EvalConfig(str(tiny_model_dir), str(demo), "unused", max_response_length=MAX_RESPONSE))


def _cfg(model, data, out, **kw) -> EvalConfig:
    base = dict(k=K, limit=LIMIT, max_response_length=MAX_RESPONSE, progress=False)
    return EvalConfig(str(model), str(data), str(out), **{**base, **kw})


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, demo, backend):
    """One uninterrupted run (policy exact): ``(path, bytes)``."""
    out = tmp_path_factory.mktemp("eval_ref") / "results.jsonl"
    summary = run_eval(_cfg(tiny_model_dir, demo, out, policy="exact"), backend=backend)
    assert (summary.written, summary.skipped, summary.generated_queries) == (K * LIMIT, 0, LIMIT)
    return out, out.read_bytes()


def test_records_hold_every_field_and_agree_with_the_generator(reference, demo, backend):
    out, _ = reference
    records = _lines(out)
    assert len(records) == K * LIMIT
    rows = load_rows(str(demo))[:LIMIT]
    assert [(r["id"], r["sample"]) for r in records] == [(row["id"], s) for row in rows for s in range(K)]
    for rec in records:
        assert set(FIELDS) <= set(rec)
        parse_record(rec)  # the metrics reader accepts it
    for row in rows:
        shown = apply_view(row, ModalityView(policy="exact"))
        gens = backend.generator.generate(shown, n=K)
        recs = [r for r in records if r["id"] == row["id"]]
        for g, rec in zip(gens, recs, strict=True):
            assert rec["response"] == g.text
            assert rec["response_tokens"] == len(g.token_ids) == g.n_tokens
            assert rec["truncated"] == g.truncated
            n = len(row["choices"])
            assert rec["parsed"] == extract_choice(g.text, n, row["choices"])
            assert rec["correct"] == (choice_score(g.text, row["answer"], n, row["choices"])["acc"] == 1.0)
            assert rec["score"] == float(rec["correct"])
            assert (rec["tag"], rec["available"], rec["stratum"]) == (row["modality_tag"], row["modality_tag"], "exact")
            assert (rec["group"], rec["answer"], rec["policy"], rec["task"]) == (
                row["id"],
                row["answer"],
                "exact",
                "qa",
            )
            assert rec["gold_none"] is False and rec["pred_none"] is False


def test_policy_changes_what_is_shown(tmp_path, tiny_model_dir, demo, backend):
    rows = {r["id"]: r for r in load_rows(str(demo))}
    for policy, expected in (
        ("full", lambda r: r["media_streams"]),
        ("A", lambda r: "A" if "A" in r["media_streams"] else ""),
        ("none", lambda r: ""),
    ):
        out = tmp_path / f"{policy}.jsonl"
        run_eval(_cfg(tiny_model_dir, demo, out, policy=policy, k=1), backend=backend)
        recs = _lines(out)
        assert len(recs) == LIMIT
        for rec in recs:
            row = rows[rec["id"]]
            assert rec["available"] == expected(row), (policy, rec["id"])
            assert rec["stratum"] == vocabulary.stratum_of(row["modality_tag"], rec["available"])
            assert rec["policy"] == policy
    full = {r["id"]: r["response"] for r in _lines(tmp_path / "full.jsonl")}
    text_only = {r["id"]: r["response"] for r in _lines(tmp_path / "none.jsonl")}
    assert full != text_only  # a different prompt gives different samples


def test_resume_after_a_lost_line_or_a_cut_line(tmp_path, tiny_model_dir, demo, backend, reference, caplog):
    _, expected = reference
    lines = expected.decode().splitlines(keepends=True)
    out = tmp_path / "results.jsonl"
    cfg = _cfg(tiny_model_dir, demo, out, policy="exact")
    run_eval(cfg, backend=backend)  # writes the settings file
    assert out.read_bytes() == expected

    out.write_text("".join(lines[:-1]), encoding="utf-8")  # the last record never arrived
    summary = run_eval(cfg, backend=backend)
    assert out.read_bytes() == expected
    assert (summary.written, summary.skipped, summary.generated_queries) == (1, K * LIMIT - 1, 1)

    out.write_text("".join(lines[:-2]) + lines[-2][:25], encoding="utf-8")  # cut in the middle of a line
    with caplog.at_level(logging.WARNING, logger="verl_modality.evaluation.resume"):
        summary = run_eval(cfg, backend=backend)
    assert out.read_bytes() == expected
    assert summary.dropped_partial_line and summary.written == 2
    assert any("half-written" in r.message for r in caplog.records)

    summary = run_eval(cfg, backend=backend)  # complete: nothing to do
    assert (summary.written, summary.generated_queries) == (0, 0) and out.read_bytes() == expected
    # a smaller limit resumes the same file; a larger one extends it
    assert run_eval(_cfg(tiny_model_dir, demo, out, policy="exact", limit=1), backend=backend).written == 0
    more = run_eval(_cfg(tiny_model_dir, demo, out, policy="exact", limit=LIMIT + 1), backend=backend)
    assert more.written == K and out.read_bytes().startswith(expected)


def test_changed_settings_are_refused(tmp_path, tiny_model_dir, demo, backend, reference):
    _, expected = reference
    out = tmp_path / "results.jsonl"
    run_eval(_cfg(tiny_model_dir, demo, out, policy="exact"), backend=backend)
    for change, message in (
        ({"temperature": 0.5}, "temperature: was 1.0, now 0.5"),
        ({"policy": "full"}, "policy: was 'exact', now 'full'"),
        ({"k": 3}, "k: was 2, now 3"),
        ({"seed": 1}, "seed: was 0, now 1"),
        ({"rule": "lenient"}, "rule: was 'official', now 'lenient'"),
    ):
        with pytest.raises(EvalConfigError, match=message):
            run_eval(_cfg(tiny_model_dir, demo, out, **{"policy": "exact", **change}), backend=backend)
    assert out.read_bytes() == expected  # untouched
    run_eval(_cfg(tiny_model_dir, demo, out, policy="exact", k=1, overwrite=True), backend=backend)
    assert len(_lines(out)) == LIMIT
    stray = tmp_path / "other.jsonl"
    stray.write_text('{"id": "x", "sample": 0}\n', encoding="utf-8")
    with pytest.raises(EvalConfigError, match="no settings file"):
        run_eval(_cfg(tiny_model_dir, demo, stray), backend=backend)


def test_missing_model_directory_is_named_first(tmp_path, demo, monkeypatch):
    import verl_modality.evaluation.runner as runner

    def never(*args, **kwargs):
        raise AssertionError("the data was read before the model path was checked")

    monkeypatch.setattr(runner, "load_rows", never)
    for model in (str(tmp_path / "no" / "such"), "./ckpt-missing", "ckpts/step_10"):
        with pytest.raises(EvalConfigError, match=f"model directory {model} does not exist"):
            run_eval(_cfg(model, demo, tmp_path / "r.jsonl", benchmark="nope"))  # before the benchmark check too
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(EvalConfigError, match="is not a directory"):
        run_eval(_cfg(weights, demo, tmp_path / "r.jsonl"))
    # a bare name is not taken for a path (it fails later, as a model that cannot be loaded)
    with pytest.raises(EvalConfigError, match="unknown benchmark 'nope'"):
        run_eval(_cfg("tiny", demo, tmp_path / "r.jsonl", benchmark="nope"))
    assert not (tmp_path / "r.jsonl").exists()


def test_bad_settings_fail_before_any_generation(tmp_path, tiny_model_dir, demo):
    with pytest.raises(EvalConfigError, match="unknown modality policy 'XYZ'"):
        run_eval(_cfg(tiny_model_dir, demo, tmp_path / "r.jsonl", policy="XYZ"))
    with pytest.raises(EvalConfigError, match="unknown benchmark 'nope'"):
        run_eval(_cfg(tiny_model_dir, demo, tmp_path / "r.jsonl", benchmark="nope"))
    assert resolve_backend("auto") == "hf"  # no GPU: auto keeps the hf backend (vllm on the CPU must be asked for)
    assert not (tmp_path / "r.jsonl").exists()


def _caption_parquet(demo: Path, tmp_path: Path) -> Path:
    qa = schema.read_rows(demo)[1]
    cap = schema.Sample.create(
        "cap-0",
        prompts.CAPTION_INSTRUCTION,
        [],
        "A red square and a low hum.",
        "VA",
        videos=[str((demo.parent / p).resolve()) for p in qa["media"]["videos"]],
        audios=[str((demo.parent / p).resolve()) for p in qa["media"]["audios"]],
        task="caption",
        extra_info={"reference_captions": {"V": "a red square", "A": "a low hum"}, "source_id": "clip-1"},
    ).to_row()
    return schema.write_rows([cap], tmp_path / "captions.parquet")


class _Judge(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.requests.append(body)
        grades = json.dumps({"missing": 0.8, "errors": 0.6, "fusion": 1.0})
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": grades}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_captions_without_and_with_a_judge(tmp_path, tiny_model_dir, demo, backend, caplog, monkeypatch):
    data = _caption_parquet(demo, tmp_path)
    out = tmp_path / "cap.jsonl"
    with caplog.at_level(logging.WARNING, logger="verl_modality.evaluation.runner"):
        summary = run_eval(_cfg(tiny_model_dir, data, out), backend=backend)
    recs = _lines(out)
    assert [(r["task"], r["score"], r["correct"], r["parsed"]) for r in recs] == [("caption", None, None, None)] * K
    assert recs[0]["answer"] == "A red square and a low hum." and recs[0]["group"] == "clip-1"
    assert summary.unscored_captions == K
    assert sum("score null" in r.message for r in caplog.records) == 1

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    try:
        judge = tmp_path / "judge.json"
        judge.write_text(json.dumps({"base_url": f"http://127.0.0.1:{server.server_port}/v1", "model": "grader"}))
        judged = tmp_path / "judged.jsonl"
        run_eval(_cfg(tiny_model_dir, data, judged, judge_config=str(judge)), backend=backend)
    finally:
        server.shutdown()
    recs = _lines(judged)
    assert [r["score"] for r in recs] == pytest.approx([0.8, 0.8])  # mean of 0.8, 0.6, 1.0
    assert len(_Judge.requests) == K and all(req["model"] == "grader" for req in _Judge.requests)
    for rec in recs:
        parse_record(rec)
    with pytest.raises(EvalConfigError, match="judge: was None"):  # a judge changes the results: refused
        run_eval(_cfg(tiny_model_dir, data, out, judge_config=str(judge)), backend=backend)


def test_cli_writes_results(tmp_path, tiny_model_dir, demo, capsys):
    from verl_modality.cli import main

    out = tmp_path / "cli.jsonl"
    args = ["eval", "--model", str(tiny_model_dir), "--data", str(demo), "--out", str(out), "--k", "1"]
    args += ["--limit", "1", "--max-response-length", "4", "--policy", "exact", "--no-progress"]
    assert main(args) == 0
    assert len(_lines(out)) == 1 and "wrote 1 record(s)" in capsys.readouterr().out
    assert main([*args, "--temperature", "0.3"]) == 1
    assert "temperature: was 1.0, now 0.3" in capsys.readouterr().err
    for bad, message in ((["--k", "0"], "--k 0: expected an integer >= 1"), (["--limit", "0"], "--limit 0: expected")):
        assert main([*args, *bad]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"eval: {message}") and len(err.strip().splitlines()) == 1, err


def test_cli_evaluates_a_qwen3_omni_checkpoint(tmp_path, tiny_qwen3_model_dir, demo, capsys):
    """The same command on the other family: its thinker generates, the records carry the per-tag scores."""
    from verl_modality.cli import main

    out = tmp_path / "qwen3.jsonl"
    args = ["eval", "--model", str(tiny_qwen3_model_dir), "--data", str(demo), "--out", str(out), "--k", "2"]
    assert main([*args, "--limit", "2", "--max-response-length", "4", "--policy", "exact", "--no-progress"]) == 0
    records = _lines(out)
    rows = load_rows(str(demo))[:2]
    assert [(r["id"], r["sample"]) for r in records] == [(row["id"], s) for row in rows for s in range(2)]
    assert all(1 <= r["response_tokens"] <= 4 and set(FIELDS) <= set(r) for r in records)
    assert "wrote 4 record(s)" in capsys.readouterr().out


def test_cli_flags_are_the_config_fields():
    """The eval command line is built from EvalConfig: every field a flag with the field's default."""
    import argparse
    import dataclasses

    from verl_modality.evaluation.runner import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model", "m", "--data", "d", "--out", "o"])
    assert {f.name: getattr(args, f.name) for f in dataclasses.fields(EvalConfig)} == dataclasses.asdict(
        EvalConfig("m", "d", "o")
    )


def test_benchmark_rows_media_root_and_hint(tmp_path, tiny_model_dir, demo, backend):
    from verl_modality.evaluation.scorers import score_record

    row = {**schema.read_rows(demo)[0], "data_source": "mmau"}
    data = schema.write_rows([row], tmp_path / "mmau.parquet")  # media paths stay relative to the demo folder
    with pytest.raises(validate.SchemaError):
        run_eval(_cfg(tiny_model_dir, data, tmp_path / "r.jsonl"), backend=backend)
    root = str(demo.parent)
    plain = run_eval(_cfg(tiny_model_dir, data, tmp_path / "plain.jsonl", media_root=root), backend=backend)
    assert any("--benchmark" in note for note in plain.notes)
    out = tmp_path / "mmau.jsonl"
    run_eval(_cfg(tiny_model_dir, data, out, media_root=root, benchmark="mmau"), backend=backend)
    for rec in _lines(out):
        assert (rec["benchmark"], rec["benchmark_version"]) == ("mmau", "v05.15.25")
        answer_text = row["choices"][vocabulary.LETTERS.index(row["answer"])]
        assert (rec["parsed"], rec["correct"]) == score_record("mmau", rec["response"], answer_text, row["choices"])
        assert rec["rule"] == "string_match:official"
